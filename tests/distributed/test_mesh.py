"""Mesh setup: the EP degree, its errors, one process without torchrun, and a rendezvous that
nobody else joins failing within its timeout with one clear error."""

import time

import pytest

from tests.distributed.launch import free_port
from vlmoe.config import ConfigError
from vlmoe.distributed import DistributedError, ParallelConfig, init_mesh, resolve_ep


def test_ep_defaults_to_the_world_when_it_divides_every_layer():
    assert resolve_ep(None, 4, [8, 8]) == 4
    assert resolve_ep(None, 4, [8, 6]) == 1  # pure data parallel
    assert resolve_ep(2, 4, [8]) == 2


def test_ep_errors_name_the_values():
    with pytest.raises(DistributedError, match=r"parallel.ep=3 does not divide the world size 4"):
        resolve_ep(3, 4, [12])
    with pytest.raises(DistributedError, match=r"parallel.ep=4 does not divide num_experts=6"):
        resolve_ep(4, 4, [8, 6])
    with pytest.raises(ConfigError, match="parallel.ep must be >= 1"):
        ParallelConfig(ep=0)


def test_one_process_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    mesh = init_mesh(ParallelConfig(), [8])
    assert (mesh.world_size, mesh.ep, mesh.is_rank0, mesh.distributed) == (1, 1, True, False)
    with pytest.raises(DistributedError, match="parallel.ep=2 needs that many processes"):
        init_mesh(ParallelConfig(ep=2), [8])


def test_half_set_environment_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(DistributedError, match="MASTER_ADDR is not"):
        init_mesh(ParallelConfig(), [8])


def test_unreachable_rendezvous_times_out(monkeypatch):
    for k, v in dict(WORLD_SIZE="2", RANK="1", MASTER_ADDR="127.0.0.1").items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MASTER_PORT", str(free_port()))  # nobody listens there
    t = time.monotonic()
    with pytest.raises(DistributedError, match=r"rank 1 could not join the rendezvous .* 2s"):
        init_mesh(ParallelConfig(timeout_s=2), [8])
    assert time.monotonic() - t < 30
