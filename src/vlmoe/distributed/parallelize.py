"""Apply data and expert parallelism to a built single-process model, and undo it for saving.

Legend: E experts, L = E / ep experts per rank, W world size, T tokens.

Model code stays single-device (DESIGN.md): `parallelize` takes a built model and
- broadcasts rank 0's parameters and buffers, so every rank starts from the same weights;
- under expert parallelism, replaces each MoE layer's `Experts` by one holding only this rank's
  L experts (a slice of the full weights, same parameter names) and its `Dispatcher` by the
  all-to-all one (`vlmoe.distributed.dispatch`); token-choice routers, and expert choice
  with capacity groups (soft MoE mixes every token of a sequence into every slot: EP is off).

After each backward, `reduce_gradients` makes every rank hold the gradient of the global loss
(the mean of the ranks' local losses): dense and router gradients are averaged over the world,
expert gradients are *summed* over their expert-data-parallel (EDP) group and divided by the
world size W, not by the EDP size. Each rank's expert already received, through the backward
all-to-all, the gradient of every rank of its EP group; the EDP sum adds the other EP groups;
dividing by the EDP size (the classic bug) leaves expert gradients ep times too large while the
loss curve still looks normal (tests/distributed hold it to one process).

`gather_aux` makes the router losses global: each layer's routing tensors are gathered over the
world (differentiably), so the balance, z and entropy losses of `vlmoe.moe.losses` run unchanged
on the full batch and equal the single-process loss; the gradient that flows back is summed
over the ranks that computed it, which `reduce_gradients`' 1 / W then undoes.

`full_state_dict` gathers the expert shards, so a run on N processes saves the same
`model.safetensors` as one process; `load_full_state_dict` slices a full one for any mesh.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from vlmoe.distributed.comm import all_gather_rows
from vlmoe.distributed.dispatch import AllToAllDispatcher
from vlmoe.distributed.mesh import DistributedError, Mesh
from vlmoe.moe.experts import Experts
from vlmoe.moe.layer import MoEAux, MoELayer, moe_layers

log = logging.getLogger(__name__)

_BUCKET_NUMEL = 1 << 24  # elements per all-reduce bucket (64 MiB fp32)


def moe_num_experts(model: nn.Module) -> list[int]:
    """The expert count of every MoE layer (to resolve and check the EP degree)."""
    return [layer.cfg.num_experts for layer in moe_layers(model)]


def expert_parameter_names(model: nn.Module) -> set[str]:
    """Names of the routed experts' parameters (sharded under EP)."""
    names = set()
    for layer_name, module in model.named_modules():
        if isinstance(module, MoELayer):
            for p_name, _ in module.experts.named_parameters():
                names.add(f"{layer_name}.experts.{p_name}".lstrip("."))
    return names


def broadcast_model(model: nn.Module, mesh: Mesh) -> None:
    """Copy rank 0's parameters and buffers to every rank (before any sharding)."""
    if not mesh.distributed:
        return
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=0, group=mesh.world_group)


def parallelize(model: nn.Module, mesh: Mesh) -> nn.Module:
    """Make `model` (built identically or not on every rank) ready for this mesh, in place."""
    model.to(mesh.device)
    broadcast_model(model, mesh)
    if mesh.ep == 1:
        return model
    for layer in moe_layers(model):
        cfg = layer.cfg
        if cfg.router == "soft" or (
            cfg.router == "expert_choice" and cfg.capacity_group_size is None
        ):
            raise DistributedError(
                f"expert parallelism with moe.router={cfg.router} would route each rank's "
                "tokens apart from the others': use moe.router=topk, expert choice with "
                "moe.capacity_group_size set, or parallel.ep=1"
            )
        if cfg.num_experts % mesh.ep:
            raise DistributedError(
                f"parallel.ep={mesh.ep} does not divide moe.num_experts={cfg.num_experts}"
            )
        ids = mesh.local_experts(cfg.num_experts)
        full = layer.experts
        local = Experts(len(ids), cfg.dim, cfg.hidden_dim, cfg.activation, cfg.backend)
        with torch.no_grad():
            local.w_in.copy_(full.w_in[ids.start : ids.stop])
            local.w_out.copy_(full.w_out[ids.start : ids.stop])
        layer.experts = local.to(mesh.device)
        layer.dispatcher = AllToAllDispatcher(
            cfg.num_experts,
            cfg.capacity_factor,
            cfg.drop_policy,
            cfg.capacity_group_size,
            mesh.ep,
            mesh.ep_group,
        )
    return model


def _buckets(tensors: list[Tensor]) -> Iterator[list[Tensor]]:
    bucket, size = [], 0
    for t in tensors:
        if bucket and size + t.numel() > _BUCKET_NUMEL:
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += t.numel()
    if bucket:
        yield bucket


def _sum_into(grads: list[Tensor], group, scale: float) -> None:
    for bucket in _buckets(grads):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat, group=group)
        flat.mul_(scale)
        offset = 0
        for g in bucket:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


@torch.no_grad()
def used_parameters(model: nn.Module, mesh: Mesh, names: set[str] | None = None):
    """(name, parameter) of the trainable parameters (among `names`, if given) that have a
    gradient on some rank; where a rank has none, it gets zeros to add. A parameter no rank
    used keeps `grad=None`, so the optimizer skips it as on one process (AdamW would otherwise
    decay it). One small all-reduce, in the same order on every rank."""
    params = [
        (n, p)
        for n, p in model.named_parameters()
        if p.requires_grad and (names is None or n in names)
    ]
    if not params:
        return []
    has = torch.tensor([float(p.grad is not None) for _, p in params], device=mesh.device)
    dist.all_reduce(has, group=mesh.world_group)
    used = []
    for (name, p), h in zip(params, has.tolist()):
        if h > 0:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            used.append((name, p))
    return used


@torch.no_grad()
def reduce_gradients(model: nn.Module, mesh: Mesh) -> None:
    """Turn every rank's local gradients into the gradient of the mean of the ranks' losses.

    The collectives match across ranks whatever each rank's data touched (see
    `used_parameters`)."""
    if not mesh.distributed:
        return
    expert_names = expert_parameter_names(model)
    dense, experts = [], []
    for name, p in used_parameters(model, mesh):
        (experts if name in expert_names else dense).append(p.grad)
    scale = 1.0 / mesh.world_size
    _sum_into(dense, mesh.world_group, scale)
    if experts:
        # Expert e's gradient: its own EP group arrived by all-to-all; the other EP groups'
        # contributions sit on the EDP peers. Sum them, and average over the world, not EDP.
        group = mesh.edp_group if mesh.ep > 1 else mesh.world_group
        _sum_into(experts, group, scale)


def gather_aux(auxes: Sequence[MoEAux], mesh: Mesh) -> list[MoEAux]:
    """Each layer's `MoEAux` over the global batch (rows in rank order), for losses and stats.

    Router scores and logits are gathered with autograd; a loss that every rank computes on
    them back-propagates each rank's share, summed over ranks (see `reduce_gradients`)."""
    if not mesh.distributed or not auxes:
        return list(auxes)
    device = auxes[0].logits_TE.device
    mine = torch.tensor([a.logits_TE.shape[0] for a in auxes], device=device)
    parts = [torch.empty_like(mine) for _ in range(mesh.world_size)]
    dist.all_gather(parts, mine, group=mesh.world_group)
    sizes_AW = torch.stack(parts, dim=1).tolist()
    out = []
    for a, sizes in zip(auxes, sizes_AW):
        gather = lambda t, s=sizes: all_gather_rows(t, s, mesh.world_group)  # noqa: E731
        counts_E = a.counts_E.detach().clone()
        dist.all_reduce(counts_E, group=mesh.world_group)
        out.append(
            dataclasses.replace(
                a,
                logits_TE=gather(a.logits_TE),
                probs_TE=gather(a.probs_TE),
                expert_ids_TK=gather(a.expert_ids_TK),
                weights_TK=gather(a.weights_TK.detach()),
                kept_TK=gather(a.kept_TK),
                counts_E=counts_E,
                modality_T=None if a.modality_T is None else gather(a.modality_T),
            )
        )
    return out


def _expert_layers(model: nn.Module) -> dict[str, MoELayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, MoELayer)}


@torch.no_grad()
def full_state_dict(model: nn.Module, mesh: Mesh) -> dict[str, Tensor]:
    """The single-process state dict: expert shards gathered over the EP group (collective:
    every rank calls it; every rank gets the full dict)."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    if mesh.ep == 1:
        return state
    for name, layer in _expert_layers(model).items():
        prefix = f"{name}.experts." if name else "experts."
        for p_name, p in layer.experts.named_parameters():
            parts = [torch.empty_like(p) for _ in range(mesh.ep)]
            dist.all_gather(parts, p.detach().contiguous(), group=mesh.ep_group)
            state[prefix + p_name] = torch.cat(parts)
    return state


@torch.no_grad()
def load_full_state_dict(model: nn.Module, state: dict[str, Tensor], mesh: Mesh) -> None:
    """Load a single-process state dict into a (possibly expert-sharded) model."""
    local = dict(state)
    if mesh.ep > 1:
        for name, layer in _expert_layers(model).items():
            prefix = f"{name}.experts." if name else "experts."
            ids = mesh.local_experts(layer.cfg.num_experts)
            for p_name, _ in layer.experts.named_parameters():
                key = prefix + p_name
                if key in local:
                    local[key] = local[key][ids.start : ids.stop]
    model.load_state_dict(local)


def shard_like(model: nn.Module, name: str, full: Tensor, mesh: Mesh) -> Tensor:
    """This rank's slice of a full tensor shaped like parameter `name` (optimizer states)."""
    if mesh.ep == 1 or name not in expert_parameter_names(model):
        return full
    layer_name = name.rsplit(".experts.", 1)[0] if ".experts." in name else ""
    layer = _expert_layers(model)[layer_name]
    ids = mesh.local_experts(layer.cfg.num_experts)
    return full[ids.start : ids.stop]
