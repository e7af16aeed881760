"""`launch`: torchrun's elastic agent started in-process; a killed rank stops the run with one
clear error."""

import os
import sys
import time
from pathlib import Path

import pytest

from vlmoe.distributed import DistributedError
from vlmoe.distributed.launch import launch, torchrun_args

SCRIPT = str(Path(__file__).parent / "scripts" / "ranks.py")


def test_torchrun_args_single_and_multi_node():
    assert torchrun_args(["-m", "vlmoe", "train"], 2) == [
        "--nproc-per-node", "2", "--max-restarts", "0", "--standalone", "-m", "vlmoe", "train"
    ]  # fmt: skip
    multi = torchrun_args(["x.py"], 4, nnodes=2, rdzv_endpoint="h:29400")
    assert multi[-9:] == ["--rdzv-backend", "c10d", "--rdzv-endpoint", "h:29400", "--rdzv-id",
                          "vlmoe", "--rdzv-conf", "join_timeout=300", "x.py"]  # fmt: skip
    with pytest.raises(DistributedError, match="--nnodes=2 needs --rdzv-endpoint"):
        torchrun_args(["x.py"], 2, nnodes=2)
    with pytest.raises(DistributedError, match="--nproc must be >= 1, got 0"):
        torchrun_args(["x.py"], 0)


@pytest.fixture
def child_env(monkeypatch):
    src = str(Path(__file__).parents[2] / "src")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert sys.executable


@pytest.mark.distributed
def test_two_workers_run(tmp_path, child_env):
    launch([SCRIPT, str(tmp_path)], nproc=2)
    assert sorted(p.read_text() for p in tmp_path.iterdir()) == ["2 1.0", "2 1.0"]


def test_kill_9_of_one_rank_stops_the_run(tmp_path, child_env):
    t = time.monotonic()
    with pytest.raises(DistributedError, match=r"rank 1 was killed by SIGKILL; the other ranks"):
        launch([SCRIPT, str(tmp_path), "--die", "1"], nproc=2)
    assert time.monotonic() - t < 120
    assert not list(tmp_path.iterdir())  # nobody got past the barrier
