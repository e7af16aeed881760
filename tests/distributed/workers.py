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
            logits, loss = step_loss(model, local, lambda a, m=mesh: gather_aux(a, m))
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


def _layer_pair(moe: dict, mesh: Mesh) -> tuple[MoELayer, MoELayer]:
    """The same layer twice: plain, and expert-parallel over `mesh`."""
    torch.manual_seed(1)
    plain = MoELayer(MoEConfig(dim=DIM, **moe))
    torch.manual_seed(1)
    ep = parallelize(MoELayer(MoEConfig(dim=DIM, **moe)), mesh)
    return plain, ep


def _ep_layer_matches_plain(moe: dict, mesh: Mesh, x_TD: torch.Tensor) -> None:
    plain, ep = _layer_pair(moe, mesh)
    x1 = x_TD.clone().requires_grad_()
    x2 = x_TD.clone().requires_grad_()
    y1, _ = plain(x1)
    y2, _ = ep(x2)
    torch.testing.assert_close(y2, y1, atol=1e-6, rtol=1e-5)
    g = torch.randn_like(y1)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, atol=1e-6, rtol=1e-5)


def dispatch_worker(rank, world, out_dir) -> None:
    """Identity round trips, zero-token ranks and experts, unequal batches: no hang, exact."""
    mesh = init_mesh(ParallelConfig(ep=world, timeout_s=30), [8])
    from vlmoe.distributed import AllToAllDispatcher

    g = torch.Generator().manual_seed(rank)
    for K, T in [(1, 7), (2, 7), (2, 0), (2, 3 + 5 * rank)]:
        d = AllToAllDispatcher(8, None, "score", None, world, mesh.ep_group)
        ids = torch.rand(T, 8, generator=g).argsort(dim=1)[:, :K]  # K distinct experts each
        x = torch.randn(T, DIM, generator=g, requires_grad=True)
        x_MD, plan = d.dispatch(x, ids, torch.full((T, K), 1.0 / K))
        assert int(plan.expert_counts.sum()) == x_MD.shape[0]
        y = d.combine(x_MD, plan)  # identity experts
        assert torch.equal(y, x), (K, T)
        grad = torch.randn(T, DIM, generator=g)
        y.backward(grad)
        assert torch.equal(x.grad, grad), (K, T)

    # Unequal local batches and a rank with no tokens, through a real layer.
    moe = dict(hidden_dim=16, num_experts=8, top_k=2)
    for T in [5 + 4 * rank, 6 * (1 - rank)]:
        x = torch.randn(T, DIM, generator=g)
        _ep_layer_matches_plain(moe, mesh, x)

    # Every token to expert 0: the other rank's experts (and rank 1's sends) are empty.
    plain, ep = _layer_pair(dict(moe, top_k=1), mesh)
    for layer in (plain, ep):
        with torch.no_grad():
            layer.router.gate.weight.zero_()
            layer.router.gate.weight[0] = 10.0
    x = torch.randn(6, DIM, generator=g).abs()
    y1, a1 = plain(x)
    y2, a2 = ep(x)
    assert bool((a2.expert_ids_TK == 0).all())
    torch.testing.assert_close(y2, y1, atol=1e-6, rtol=1e-5)
    y2.sum().backward()
    dist.barrier()


def eval_generate_worker(rank, world, out_dir) -> None:
    """EP is off for evaluation and generation: a full copy, ranks doing different work."""
    from vlmoe.distributed.runtime import Runtime
    from vlmoe.models import create_model

    torch.manual_seed(0)
    reference = create_model("decoder-debug-moe").eval()
    torch.manual_seed(0)
    model = create_model("decoder-debug-moe")
    rt = Runtime.start(ParallelConfig(ep=world, timeout_s=30), model)
    rt.wrap(model)
    assert rt.mesh.ep == world and model.state_dict().keys() == reference.state_dict().keys()
    local = rt.eval_model().eval()  # collective once; no collective when used
    g = torch.Generator().manual_seed(rank)
    B = 1 + 2 * rank  # different batch sizes and lengths on each rank
    size = reference.config.vision.image_size
    images = torch.randn(B, 3, size, size, generator=g)
    prompt = torch.randint(4, 60, (B, 3 + rank), generator=g)
    kw = dict(images=images, max_new_tokens=4 + 3 * rank, stop_tokens=[5, 6])
    torch.testing.assert_close(local.generate(prompt, **kw), reference.generate(prompt, **kw))
    dist.barrier()


CLIP = 0.5
RUNTIME_MOE = dict(hidden_dim=16, num_experts=8, top_k=2, num_shared_experts=1)


def reference_run(moe: dict, start: int, stop: int, ckpt_in=None, ckpt_out=None) -> dict:
    """Steps [start, stop) on one process with gradient clipping, from a checkpoint or from
    the initial weights; optionally save a checkpoint at the end."""
    from vlmoe.train.checkpoint import load_checkpoint, save_checkpoint

    model = build(moe)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    if ckpt_in is not None:
        load_checkpoint(ckpt_in, model, opt, restore_rng_state=False)
    out = {}
    for step in range(start, stop):
        _, loss = step_loss(model, batch(step))
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        out[f"loss/{step}"] = loss.detach().reshape(1)
        out[f"grad_norm/{step}"] = norm.reshape(1)
        opt.step()
        opt.zero_grad()
    if ckpt_out is not None:
        save_checkpoint(ckpt_out, stop, model, opt, {})
    out.update({f"param/{n}": p.detach().clone() for n, p in model.named_parameters()})
    return out


def runtime_worker(rank, world, out_dir, dp: str, ep, start: int, stop: int, ckpt_in=None):
    """The `Runtime` call sequence of a training loop, with checkpoint resume across sizes."""
    from vlmoe.distributed.runtime import Runtime
    from vlmoe.train.checkpoint import load_checkpoint, save_checkpoint

    model = build(RUNTIME_MOE)
    rt = Runtime.start(ParallelConfig(ep=ep, dp=dp, timeout_s=60), model)
    wrapped = rt.wrap(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    if ckpt_in is not None:
        plain = rt.plain_model()
        load_checkpoint(ckpt_in, plain, rt.optimizer_for_loading(opt), restore_rng_state=False)
        rt.load_full_state_dict(plain.state_dict())
    out = {}
    for step in range(start, stop):
        full = batch(step)
        idx = rt.local_indices(list(range(full["x"].shape[0])))
        local = {k: v[idx] for k, v in full.items()}
        _, loss = step_loss(wrapped, local, rt.global_aux)
        loss.backward()
        rt.finish_backward()
        norm = rt.clip_grad_norm(CLIP)
        assert rt.all_finite(True)
        mean = rt.mean_metrics({"loss": float(loss)})["loss"]
        out[f"loss/{step}"] = torch.tensor([mean])
        out[f"grad_norm/{step}"] = torch.tensor([norm])
        opt.step()
        opt.zero_grad()
    full_model = rt.full_model()
    saved = rt.optimizer_for_saving(opt)
    if rt.is_rank0:
        save_checkpoint(f"{out_dir}/run", stop, full_model, saved, {})
    rt.barrier()
    out.update({f"param/{n}": p.detach() for n, p in full_model.named_parameters()})
    save_file({k: v.contiguous() for k, v in out.items()}, f"{out_dir}/rt.rank{rank}.safetensors")
