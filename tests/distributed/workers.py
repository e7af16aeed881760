"""A two-MoE-layer model, its batches, the single-process reference run, and the workers that
run the same steps expert- and data-parallel (started by `launch.run_workers`)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from vlmoe.config import MoEConfig
from vlmoe.distributed import (
    ParallelConfig,
    full_state_dict,
    gather_aux,
    init_mesh,
    parallelize,
    reduce_gradients,
)
from vlmoe.distributed.mesh import Mesh, build_mesh, resolve_ep
from vlmoe.distributed.parallelize import expert_parameter_names
from vlmoe.moe.layer import MoELayer
from vlmoe.train.config import MoELossConfig
from vlmoe.train.moe_losses import moe_aux_losses

SEQ, IN_DIM, DIM = 6, 8, 16
LOSSES = MoELossConfig(load_balance=0.1, z_loss=0.01, local_entropy=0.05, global_entropy=0.05)


class Net(nn.Module):
    def __init__(self, moe: dict) -> None:
        super().__init__()
        cfg = MoEConfig(dim=DIM, **moe)
        self.embed = nn.Linear(IN_DIM, DIM)
        self.moe1, self.moe2 = MoELayer(cfg), MoELayer(cfg)
        self.head = nn.Linear(DIM, 3)

    def forward(self, x, modality):
        h = self.embed(x)
        y, a1 = self.moe1(h, modality)
        h = h + y
        y, a2 = self.moe2(h, modality)
        h = h + y
        return self.head(h.mean(1)), [a1, a2]


def build(moe: dict) -> Net:
    torch.manual_seed(0)
    return Net(moe)


def batch(step: int, size: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(size, SEQ, IN_DIM, generator=g)
    modality = torch.tensor([0, 0, 0, 1, 1, 1]).repeat(size, 1)
    modality[1::2, -1] = -1  # padding in every other sequence
    y = torch.randint(0, 3, (size,), generator=g)
    return {"x": x, "modality": modality, "y": y}


def step_loss(model, b, auxes_fn=lambda a: a):
    logits, auxes = model(b["x"], b["modality"])
    task = nn.functional.cross_entropy(logits, b["y"])
    aux_total, _ = moe_aux_losses(auxes_fn(auxes), LOSSES, use_entropy=True)
    return logits, task + aux_total


def reference(moe: dict, steps: int) -> dict[str, torch.Tensor]:
    """One process, full batch: step-1 logits/loss/gradients, losses and params after `steps`."""
    model = build(moe)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    out = {}
    for step in range(steps):
        logits, loss = step_loss(model, batch(step))
        loss.backward()
        out[f"loss/{step}"] = loss.detach().reshape(1)
        if step == 0:
            out["logits"] = logits.detach()
            out.update({f"grad/{n}": p.grad.clone() for n, p in model.named_parameters()})
        opt.step()
        opt.zero_grad()
    out.update({f"param/{n}": p.detach().clone() for n, p in model.named_parameters()})
    return out


def full_grads(model: nn.Module, mesh: Mesh) -> dict[str, torch.Tensor]:
    experts = expert_parameter_names(model)
    out = {}
    for n, p in model.named_parameters():
        g = p.grad
        if n in experts and mesh.ep > 1:
            parts = [torch.empty_like(g) for _ in range(mesh.ep)]
            dist.all_gather(parts, g.contiguous(), group=mesh.ep_group)
            g = torch.cat(parts)
        out[f"grad/{n}"] = g.clone()
    return out


def equivalence_worker(rank, world, out_dir, cases: dict, steps: int) -> None:
    """For each case {name: (moe kwargs, ep)}: `steps` AdamW steps on this rank's slice of the
    global batch; writes step-1 logits and gradients, losses, and final params per case."""
    dist_mesh = None
    for name, (moe, ep) in cases.items():
        model = build(moe)
        if dist_mesh is None:
            dist_mesh = init_mesh(ParallelConfig(ep=ep, timeout_s=60), [moe["num_experts"]] * 2)
            mesh = dist_mesh
        else:
            mesh = build_mesh(resolve_ep(ep, world, [moe["num_experts"]]), dist_mesh.device)
        parallelize(model, mesh)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        out = {}
        for step in range(steps):
            full = batch(step)
            per = full["x"].shape[0] // world
            local = {k: v[rank * per : (rank + 1) * per] for k, v in full.items()}
            logits, loss = step_loss(model, local, lambda a: gather_aux(a, mesh))
            loss.backward()
            reduce_gradients(model, mesh)
            mean = loss.detach().reshape(1).clone()
            dist.all_reduce(mean)
            out[f"loss/{step}"] = mean / world
            if step == 0:
                out["logits"] = logits.detach()
                out.update(full_grads(model, mesh))
            opt.step()
            opt.zero_grad()
        out.update({f"param/{n}": p for n, p in full_state_dict(model, mesh).items()})
        out = {k: v.contiguous() for k, v in out.items()}
        save_file(out, f"{out_dir}/{name}.rank{rank}.safetensors")


def load_ranks(out_dir: str | Path, name: str, world: int) -> list[dict[str, torch.Tensor]]:
    return [load_file(f"{out_dir}/{name}.rank{r}.safetensors") for r in range(world)]
