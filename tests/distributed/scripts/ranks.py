"""A torchrun worker: joins the run, all-reduces its rank, writes the sum; rank `--die` kills
itself with SIGKILL after the first collective (the others then block in the second one)."""

import argparse
import os
import signal
from pathlib import Path

import torch
import torch.distributed as dist

from vlmoe.distributed import ParallelConfig, init_mesh

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--die", type=int, default=-1)
args = ap.parse_args()
mesh = init_mesh(ParallelConfig(ep=1, timeout_s=60), [])
t = torch.tensor([float(mesh.rank)])
dist.all_reduce(t)
if mesh.rank == args.die:
    os.kill(os.getpid(), signal.SIGKILL)
dist.barrier()
Path(args.out, f"rank{mesh.rank}").write_text(f"{mesh.world_size} {float(t)}")
dist.destroy_process_group()
