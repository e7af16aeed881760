"""`vlmoe train --nproc 2` end to end (torchrun's elastic agent, gloo, EP over 2 ranks): the loss
curve equals `--nproc 1` on the same global batch; kill -9 of one rank stops the run with one
clear error and the last checkpoint intact; `--resume` continues it, equal to one process.
Marked `distributed`: each run starts processes and takes tens of seconds on 2 cores."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlmoe.cli.main import main
from vlmoe.train.checkpoint import latest_checkpoint, read_trainer_state

pytestmark = pytest.mark.distributed

SRC = str(Path(__file__).parents[2] / "src")
STEPS = 20
ARGS = [
    "train", "--preset", "fusion-debug-moe", "--steps", str(STEPS), "--batch-size", "8",
    "--set", "data.num_train=64", "--set", "data.num_eval=8", "--set", "train.log_every=1",
    "--set", "train.checkpoint_every=5", "--set", "train.keep_last=10", "-q",
]  # fmt: skip


def _losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r.get("split", r.get("kind")) == "train"}


@pytest.fixture(scope="module")
def one_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    assert main([*ARGS, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def one_process(one_run) -> dict[int, float]:
    return _losses(one_run)


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


def _assert_same(got: dict[int, float], want: dict[int, float], steps) -> None:
    for step in steps:
        assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-5), step


def test_two_processes_equal_one(tmp_path, env, one_run, one_process):
    out = tmp_path / "run"
    assert main([*ARGS, "--out", str(out), "--nproc", "2"]) == 0
    assert len(one_process) == STEPS
    _assert_same(_losses(out), one_process, range(1, STEPS + 1))
    # The saved model: the same tensors, experts gathered, as one process saves.
    got = load_file(str(out / "model" / "model.safetensors"))
    want = load_file(str(one_run / "model" / "model.safetensors"))
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-5, rtol=1e-5, msg=name)
    assert (out / "eval.json").is_file()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_kill_9_stops_the_run_and_resume_continues(tmp_path, env, one_process):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "vlmoe", *ARGS, "--out", str(out), "--nproc", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not (out / "checkpoints" / "step_0000005").is_dir():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended early"
        time.sleep(0.2)
    workers = _children(proc.pid)
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert "error: training on 2 processes stopped: rank" in err and "SIGKILL" in err
    last = latest_checkpoint(out)
    step = read_trainer_state(last)["step"]
    assert step < STEPS and load_file(str(last / "model.safetensors"))  # whole and readable
    assert main([*ARGS, "--out", str(out), "--nproc", "2", "--resume"]) == 0
    _assert_same(_losses(out), one_process, range(step + 1, STEPS + 1))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_loopback_equal_one_process(tmp_path, env, one_run, one_process):
    """Two agents (`--nnodes 2`, one process each) meet at a c10d rendezvous on 127.0.0.1, as
    two machines would; the run directory is shared, as on a cluster's shared file system."""
    out = tmp_path / "run"
    endpoint = f"127.0.0.1:{_free_port()}"
    node = [sys.executable, "-m", "vlmoe", *ARGS, "--out", str(out), "--nproc", "1"]
    node += ["--nnodes", "2", "--rdzv-endpoint", endpoint]
    agents = [
        subprocess.Popen(node, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [a.communicate(timeout=600) for a in agents]
    for agent, (stdout, stderr) in zip(agents, results, strict=True):
        assert agent.returncode == 0, stderr
        assert "trained on 2 processes" in stdout
    _assert_same(_losses(out), one_process, range(1, STEPS + 1))
    got = load_file(str(out / "model" / "model.safetensors"))
    for name, tensor in load_file(str(one_run / "model" / "model.safetensors")).items():
        torch.testing.assert_close(got[name], tensor, atol=1e-5, rtol=1e-5, msg=name)


def test_a_node_alone_stops_at_the_rendezvous_timeout(tmp_path, env, capsys):
    endpoint = f"127.0.0.1:{_free_port()}"
    argv = [*ARGS, "--out", str(tmp_path / "run"), "--nproc", "1", "--nnodes", "2"]
    argv += ["--rdzv-endpoint", endpoint, "--set", "parallel.timeout_s=3"]
    start = time.monotonic()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "did not all join the rendezvous at " + endpoint + " within 3s" in err, err
    assert "Traceback" not in err and time.monotonic() - start < 120
