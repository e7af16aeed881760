"""Process groups from one `torchrun` launch: the expert-parallel (EP) x data-parallel mesh.

World size W = ep * edp. Ranks are laid out EP-major (as in DeepSpeed-MoE and torchtitan):

- EP group: `ep` consecutive ranks, [g*ep, (g+1)*ep); together they hold all E experts, each
  rank E/ep of them (rank j of the group holds experts [j*E/ep, (j+1)*E/ep)), and tokens move
  between them by all-to-all.
- expert-data-parallel (EDP) group: the `edp` ranks holding the same experts (same position j
  in every EP group); expert gradients are summed over it.
- dense and router parameters are replicated on all W ranks (data parallel over the world).

Every rank processes its own slice of the global batch, so the world is the data-parallel
group for the loss. gloo on CPU, nccl on CUDA. A rank that cannot reach the rendezvous, or a
collective that does not complete, fails after `timeout_s` with one clear error.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist

from vlmoe.config import Config, check

log = logging.getLogger(__name__)


class DistributedError(RuntimeError):
    """The distributed setup is wrong or a peer is gone; the message says which and how to fix."""


@dataclass
class ParallelConfig(Config):
    """How a run spreads over the processes `torchrun` started.

    ep: experts-parallel degree; None = the world size when it divides every MoE layer's
        num_experts, else 1 (pure data parallel).
    dp: how dense and router parameters are kept in sync: `ddp` replicates them and all-reduces
        gradients (DistributedDataParallel semantics), `fsdp` shards them (FSDP2 `fully_shard`).
    backend: `auto` = nccl on CUDA, gloo on CPU.
    timeout_s: how long a rendezvous or a collective may wait for a peer before failing.
    """

    ep: int | None = None
    dp: Literal["ddp", "fsdp"] = "ddp"
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    timeout_s: float = 300.0

    def __post_init__(self) -> None:
        check(self.ep is None or self.ep >= 1, f"parallel.ep must be >= 1 or null, got {self.ep}")
        check(self.timeout_s > 0, f"parallel.timeout_s must be > 0, got {self.timeout_s}")


@dataclass(frozen=True)
class Mesh:
    """This rank's place in the EP x EDP mesh and the groups to talk over (None = one process)."""

    rank: int
    world_size: int
    ep: int
    device: torch.device
    world_group: object | None = None
    ep_group: object | None = None
    edp_group: object | None = None

    @property
    def edp(self) -> int:
        return self.world_size // self.ep

    @property
    def ep_rank(self) -> int:
        return self.rank % self.ep

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True under torchrun, even with one process (the same code path then runs)."""
        return self.world_group is not None

    def local_experts(self, num_experts: int) -> range:
        """Global ids of the experts this rank holds."""
        per = num_experts // self.ep
        return range(self.ep_rank * per, (self.ep_rank + 1) * per)


def single_process_mesh(device: str | torch.device = "cpu") -> Mesh:
    return Mesh(rank=0, world_size=1, ep=1, device=torch.device(device))


def resolve_ep(ep: int | None, world_size: int, num_experts: list[int]) -> int:
    """The EP degree to use, or a DistributedError naming what does not divide what."""
    if world_size < 1:
        raise DistributedError(f"world size must be >= 1, got {world_size}")
    if ep is None:
        fits = all(e % world_size == 0 for e in num_experts)
        return world_size if fits else 1
    if world_size % ep:
        divisors = [d for d in range(1, world_size + 1) if world_size % d == 0]
        raise DistributedError(
            f"parallel.ep={ep} does not divide the world size {world_size}; "
            f"pick an EP degree among {divisors}"
        )
    for e in num_experts:
        if e % ep:
            raise DistributedError(
                f"parallel.ep={ep} does not divide num_experts={e} of an MoE layer; every rank "
                "of an EP group must hold the same number of experts"
            )
    return ep


def _backend(cfg: ParallelConfig) -> tuple[str, torch.device]:
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = cfg.backend == "nccl" or (cfg.backend == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise DistributedError("parallel.backend=nccl needs CUDA, and none is available")
        torch.cuda.set_device(local_rank)
        return "nccl", torch.device("cuda", local_rank)
    return "gloo", torch.device("cpu")


def init_mesh(cfg: ParallelConfig, num_experts: list[int]) -> Mesh:
    """Join the process group `torchrun` describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the
    environment) and build the EP and EDP groups (a world of one included, so that the
    distributed code path runs the same on one GPU). Without those variables: one process.

    `num_experts`: the expert count of every MoE layer of the model (to resolve and check ep).
    """
    if "WORLD_SIZE" not in os.environ:
        if cfg.ep not in (None, 1):
            raise DistributedError(f"parallel.ep={cfg.ep} needs that many processes; run 1")
        return single_process_mesh("cuda" if cfg.backend == "nccl" else "cpu")
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise DistributedError(
                f"WORLD_SIZE is set but {var} is not: start the run with torchrun "
                "(or `vlmoe train --nproc N`), which sets both"
            )
    world = int(os.environ["WORLD_SIZE"])
    ep = resolve_ep(cfg.ep, world, num_experts)  # checked before joining: every rank fails alike
    backend, device = _backend(cfg)
    timeout = datetime.timedelta(seconds=cfg.timeout_s)
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, timeout=timeout)
        except Exception as e:  # noqa: BLE001 - rendezvous errors come in many types
            raise DistributedError(
                f"rank {os.environ['RANK']} could not join the rendezvous at "
                f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within "
                f"{cfg.timeout_s:g}s: {e}"
            ) from None
    return build_mesh(ep, device)


def build_mesh(ep: int, device: torch.device) -> Mesh:
    """The EP and EDP groups over an initialized default process group.

    `new_group` is collective: every rank creates every group, in the same order."""
    rank, world = dist.get_rank(), dist.get_world_size()
    if world % ep:
        raise DistributedError(f"parallel.ep={ep} does not divide the world size {world}")
    ep_group = edp_group = None
    for g in range(world // ep):
        ranks = list(range(g * ep, (g + 1) * ep))
        group = dist.new_group(ranks)
        if rank in ranks:
            ep_group = group
    for j in range(ep):
        ranks = list(range(j, world, ep))
        group = dist.new_group(ranks)
        if rank in ranks:
            edp_group = group
    log.info("rank %d/%d: ep=%d edp=%d on %s", rank, world, ep, world // ep, device)
    return Mesh(rank, world, ep, device, dist.group.WORLD, ep_group, edp_group)
