"""Start `world` gloo processes on 127.0.0.1 with a free port, with a hard timeout.

Each worker is `fn(rank, world, out_dir, *args)` in an importable module; it joins through
`vlmoe.distributed.init_mesh`, as under torchrun, and writes its results to out_dir. A worker
that raises fails the test with its traceback; one that hangs is killed at the timeout.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from pathlib import Path

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, fn, out_dir, args, err_q):
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        fn(rank, world, out_dir, *args)
    except BaseException:
        err_q.put((rank, traceback.format_exc()))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_workers(fn, world: int, out_dir: str | Path, *args, timeout: float = 60.0) -> None:
    """Run fn on `world` processes; raise with the first failing rank's traceback, or on timeout."""
    ctx = mp.get_context("spawn")
    err_q = ctx.SimpleQueue()
    port = free_port()
    procs = [
        ctx.Process(target=_entry, args=(r, world, port, fn, str(out_dir), args, err_q))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    try:
        while any(p.is_alive() for p in procs):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{world} workers still running after {timeout:g}s (a hang)")
            if not err_q.empty():
                break
            time.sleep(0.05)
        if not err_q.empty():
            rank, tb = err_q.get()
            raise RuntimeError(f"rank {rank} failed:\n{tb}")
        codes = [p.exitcode for p in procs]
        if any(codes):
            raise RuntimeError(f"worker exit codes {codes}")
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(5)
