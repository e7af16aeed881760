"""`Runtime`: the few calls a training loop makes to run the same model on many processes.

A loop written for one process calls, in order: `wrap(model)` once (EP sharding, then FSDP2
for the dense and router parameters with `dp=fsdp`); `local_indices` to take this rank's slice
of each global batch; `global_aux` on the model's `MoEAux` list before the router losses;
`finish_backward` after the last micro-batch's backward (dense gradients averaged over the
world for `dp=ddp`, expert gradients summed over their EDP group and scaled by 1 / world
size; FSDP2 has reduce-scattered the dense ones itself);
`clip_grad_norm` and `all_finite` (same answer on every rank); `mean_metrics` for the log;
`is_rank0` for the log, the progress bar and checkpoint writing; `full_model`/
`optimizer_view` to save and resume in the single-process layout; `eval_model` for evaluation
and generation (EP off, no collectives). With one process every call is a no-op, so the loop
has no second code path.

Resume on another world size: weights and optimizer moments are saved gathered (the
single-process layout), so they load on any mesh; the same global batch then gives the same
examples per step, and the losses agree to float rounding (reduction order changes), not
bit for bit. The RNG state saved is rank 0's; every rank restores it.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from vlmoe.distributed.mesh import (
    DistributedError,
    Mesh,
    ParallelConfig,
    init_mesh,
    single_process_mesh,
)
from vlmoe.distributed.parallelize import (
    _sum_into,
    expert_parameter_names,
    full_state_dict,
    gather_aux,
    load_full_state_dict,
    moe_num_experts,
    parallelize,
    reduce_gradients,
    shard_like,
    used_parameters,
)
from vlmoe.moe.layer import MoEAux
from vlmoe.nn.block import Block

log = logging.getLogger(__name__)


def _local(t: Tensor) -> Tensor:
    """The local shard of an FSDP2 DTensor, or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def _full(t: Tensor) -> Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class Runtime:
    """This process's part in a run over `mesh`; see the module docstring for the call order."""

    def __init__(self, mesh: Mesh, cfg: ParallelConfig | None = None) -> None:
        self.mesh, self.cfg = mesh, cfg or ParallelConfig()
        self.module: nn.Module | None = None  # the model, unwrapped (DDP adds a wrapper)
        self._template: nn.Module | None = None  # a plain copy to build full models from
        self._experts: set[str] = set()

    @classmethod
    def start(cls, cfg: ParallelConfig, model: nn.Module) -> Runtime:
        """Join the run `torchrun` set up (or stay one process) for this model's experts."""
        return cls(init_mesh(cfg, moe_num_experts(model)), cfg)

    @classmethod
    def single(cls, device: str | torch.device = "cpu") -> Runtime:
        """One process, no process group: every call is a no-op or the plain operation."""
        return cls(single_process_mesh(device))

    @property
    def distributed(self) -> bool:
        return self.mesh.distributed

    def close(self) -> None:
        """Leave the process group (at the end of a run)."""
        if self.mesh.distributed and dist.is_initialized():
            dist.destroy_process_group()

    @property
    def is_rank0(self) -> bool:
        return self.mesh.is_rank0

    @property
    def world_size(self) -> int:
        return self.mesh.world_size

    # ------------------------------------------------------------------ setup

    def wrap(self, model: nn.Module) -> nn.Module:
        """EP-shard the experts; replicate (`ddp`) or FSDP2-shard (`fsdp`) the rest. Returns the
        module to call (the model itself)."""
        self.module, self._experts = model, expert_parameter_names(model)
        if not self.mesh.distributed:
            return model
        # A plain copy (host memory: one model) that full models are loaded into.
        self._template = copy.deepcopy(model).cpu()
        parallelize(model, self.mesh)
        self._experts = expert_parameter_names(model)
        experts = [p for n, p in model.named_parameters() if n in self._experts]
        if self.cfg.dp == "ddp":
            # DDP's arithmetic (replicas, gradients averaged over the world, in buckets) done in
            # `finish_backward`, not by `DistributedDataParallel`'s autograd hooks: its buckets
            # wait for every parameter, and tasks leave some heads unused (a VQA run never
            # touches the class head) in models whose outputs are dataclasses, where DDP cannot
            # look for unused parameters; its hooks would then skip those buckets silently.
            return model
        from torch.distributed.fsdp import fully_shard

        ignored = set(experts)
        for m in model.modules():
            if isinstance(m, Block):
                fully_shard(m, ignored_params=ignored & set(m.parameters()))
        fully_shard(model, ignored_params=ignored)
        return model

    def local_indices(self, indices: list[int]) -> list[int]:
        """This rank's contiguous share of one global batch of dataset indices."""
        n, w = len(indices), self.world_size
        if n % w:
            raise DistributedError(
                f"train.batch_size={n} does not split over {w} processes; use a multiple of {w}"
            )
        per = n // w
        return indices[self.mesh.rank * per : (self.mesh.rank + 1) * per]

    # ------------------------------------------------------------------ each step

    def global_aux(self, auxes) -> list[MoEAux]:
        """The model's `MoEAux` list over the global batch (see `gather_aux`)."""
        return gather_aux(list(auxes), self.mesh)

    @torch.no_grad()
    def finish_backward(self) -> None:
        """Average dense gradients over the world (`ddp`; FSDP2 has reduce-scattered them) and
        sum expert gradients over their EDP group, / world size (see `reduce_gradients`)."""
        if not self.mesh.distributed:
            return
        if self.cfg.dp == "ddp":
            reduce_gradients(self.module, self.mesh)
            return
        grads = [p.grad for _, p in used_parameters(self.module, self.mesh, self._experts)]
        if grads:
            group = self.mesh.edp_group if self.mesh.ep > 1 else self.mesh.world_group
            _sum_into(grads, group, 1.0 / self.world_size)

    @torch.no_grad()
    def grad_norm(self) -> Tensor:
        """The global L2 norm of every gradient, expert shards and FSDP shards included."""
        dense = torch.zeros((), dtype=torch.float64, device=self.mesh.device)
        sharded = torch.zeros_like(dense)  # FSDP shards (world) and expert shards (EP group)
        experts = torch.zeros_like(dense)
        for name, p in self.module.named_parameters():
            if p.grad is None:
                continue
            sq = _local(p.grad).double().square().sum()
            if name in self._experts:
                experts += sq
            elif hasattr(p.grad, "to_local"):
                sharded += sq
            else:
                dense += sq
        if self.mesh.distributed:
            dist.all_reduce(sharded, group=self.mesh.world_group)
            if self.mesh.ep > 1:
                dist.all_reduce(experts, group=self.mesh.ep_group)
        return (dense + sharded + experts).sqrt()

    @torch.no_grad()
    def clip_grad_norm(self, max_norm: float) -> float:
        """Clip every gradient by the global norm (`clip_grad_norm_` itself on one process)."""
        if not self.mesh.distributed:
            params = [p for p in self.module.parameters() if p.grad is not None]
            return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        norm = self.grad_norm()
        scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for p in self.module.parameters():
            if p.grad is not None:
                _local(p.grad).mul_(scale.to(_local(p.grad).dtype))
        return float(norm)

    def all_finite(self, ok: bool) -> bool:
        """True only if `ok` holds on every rank, so that all ranks stop together."""
        return not self.any_rank(not ok)

    def any_rank(self, flag: bool) -> bool:
        """True if `flag` holds on any rank (the same answer on every rank)."""
        if not self.mesh.distributed:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.mesh.device)
        dist.all_reduce(value, group=self.mesh.world_group)
        return float(value) > 0.0

    def mean_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Each value averaged over ranks (the keys must match on every rank)."""
        if not self.mesh.distributed or not metrics:
            return metrics
        keys = sorted(metrics)
        values = torch.tensor(
            [metrics[k] for k in keys], dtype=torch.float64, device=self.mesh.device
        )
        dist.all_reduce(values, group=self.mesh.world_group)
        return {k: v / self.world_size for k, v in zip(keys, values.tolist())}

    # ------------------------------------------------------------------ saving, evaluation

    def full_state_dict(self) -> dict[str, Tensor]:
        """The single-process state dict (collective: every rank calls it)."""
        state = full_state_dict(self.module, self.mesh)
        return {k: _full(v) for k, v in state.items()}

    def full_model(self) -> nn.Module:
        """A single-process copy with every expert (collective to build; EP off when used):
        what evaluation, generation and the saved `model.safetensors` use."""
        if not self.mesh.distributed:
            return self.module
        state = self.full_state_dict()
        model = copy.deepcopy(self._template)
        model.load_state_dict({k: v.cpu() for k, v in state.items()})
        return model.to(self.mesh.device)

    eval_model = full_model

    def load_full_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load a single-process state dict (any world size saved it) into the wrapped model."""
        if not self.mesh.distributed:
            self.module.load_state_dict(state)
            return
        if self.cfg.dp == "fsdp" and self.mesh.distributed:
            from torch.distributed.tensor import distribute_tensor

            with torch.no_grad():
                for name, t in self.module.state_dict().items():
                    full = shard_like(self.module, name, state[name], self.mesh)
                    if hasattr(t, "to_local"):
                        full = distribute_tensor(full.to(t.device), t.device_mesh, t.placements)
                        t.to_local().copy_(full.to_local())
                    else:
                        t.copy_(full)
            return
        load_full_state_dict(self.module, state, self.mesh)

    def plain_model(self) -> nn.Module:
        """A single-process model of the same architecture (weights not synced) to load a
        checkpoint into before `load_full_state_dict`; the model itself on one process."""
        return self.module if not self.mesh.distributed else copy.deepcopy(self._template)

    def optimizer_for_saving(self, optimizer: torch.optim.Optimizer) -> _FullOptimizerState:
        """The optimizer state as one process would hold it (collective: every rank calls it,
        rank 0 writes it); has the `state_dict()` a checkpoint writer calls."""
        return _FullOptimizerState(self._full_optimizer_state(optimizer))

    def optimizer_for_loading(self, optimizer: torch.optim.Optimizer) -> _ShardingLoader:
        """Has the `load_state_dict(full)` a checkpoint reader calls: slices the expert and
        FSDP shards of a single-process optimizer state into `optimizer`."""
        return _ShardingLoader(self, optimizer)

    def _param_names(self, optimizer: torch.optim.Optimizer) -> list[str]:
        index = {id(p): n for n, p in self.module.named_parameters()}
        return [index[id(p)] for g in optimizer.param_groups for p in g["params"]]

    def _full_optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        sd, names = optimizer.state_dict(), self._param_names(optimizer)
        for i in list(sd["state"]):
            # state_dict() shares each parameter's state dict with the optimizer: copy it.
            state = sd["state"][i] = dict(sd["state"][i])
            for key, value in list(state.items()):
                if isinstance(value, Tensor) and value.ndim > 0:
                    value = _full(value)
                    if names[i] in self._experts and self.mesh.ep > 1:
                        parts = [torch.empty_like(value) for _ in range(self.mesh.ep)]
                        dist.all_gather(parts, value.contiguous(), group=self.mesh.ep_group)
                        value = torch.cat(parts)
                    state[key] = value
        return sd

    def barrier(self) -> None:
        if self.mesh.distributed:
            dist.barrier(group=self.mesh.world_group)


class _FullOptimizerState:
    def __init__(self, state: dict[str, Any]) -> None:
        self._state = state

    def state_dict(self) -> dict[str, Any]:
        return self._state


class _ShardingLoader:
    def __init__(self, runtime: Runtime, optimizer: torch.optim.Optimizer) -> None:
        self.runtime, self.optimizer = runtime, optimizer

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        rt = self.runtime
        names = rt._param_names(self.optimizer)
        params = dict(rt.module.named_parameters())
        for i, state in sd["state"].items():
            name = names[int(i)]
            for key, value in list(state.items()):
                if isinstance(value, Tensor) and value.ndim > 0:
                    value = shard_like(rt.module, name, value, rt.mesh).to(params[name].device)
                    p = params[name]
                    if hasattr(p, "device_mesh"):  # FSDP2: this rank's shard, as a DTensor
                        from torch.distributed.tensor import distribute_tensor

                        value = distribute_tensor(value, p.device_mesh, p.placements)
                    state[key] = value
        self.optimizer.load_state_dict(sd)
