"""The MoE layer on a CUDA device: every backend and router against the CPU reference loop, in
outputs and gradients, and the bf16 grouped-GEMM path free of host syncs (Hopper and newer).

Marked `gpu` (deselected by default) and skipped without a CUDA device; run with
`pytest -m gpu tests/moe/test_gpu.py` (or `benchmarks/gpu/moe_layer_gpu.sh`).
"""

import copy

import pytest
import torch

from vlmoe.config import MoEConfig
from vlmoe.moe import MoELayer
from vlmoe.moe.experts import experts_grouped_mm, experts_loop, grouped_mm_applies
from vlmoe.moe.router import TopKRouter, route_reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

TOL = {torch.float32: dict(rtol=2e-4, atol=2e-5), torch.bfloat16: dict(rtol=3e-2, atol=3e-2)}


def _hopper() -> bool:
    return torch.cuda.get_device_capability() >= (9, 0)


def _grads(layer: MoELayer, x: torch.Tensor, modality=None):
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    y, aux = layer(x, modality)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(2)).to(y.device)
    (y.float() * g.float()).sum().backward()
    grads = {n: p.grad.float().cpu() for n, p in layer.named_parameters() if p.grad is not None}
    return y.float().cpu(), x.grad.float().cpu(), grads, aux


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", ["auto", "grouped_mm", "bmm", "loop"])
@pytest.mark.parametrize("T", [1, 16, 300])
@pytest.mark.parametrize("capacity_factor", [None, 1.0])
def test_layer_on_cuda_matches_cpu_loop(dtype, backend, T, capacity_factor):
    cfg = MoEConfig(
        dim=64,
        hidden_dim=128,
        num_experts=8,
        top_k=2,
        backend=backend,
        capacity_factor=capacity_factor,
    )
    torch.manual_seed(0)
    cpu_layer = MoELayer(cfg)
    cpu_layer.experts.backend = "loop"
    gpu_layer = copy.deepcopy(cpu_layer)
    gpu_layer.experts.backend = backend
    gpu_layer = gpu_layer.cuda().to(dtype)
    cpu_layer = cpu_layer.to(dtype)
    x = torch.randn(T, 64).to(dtype)
    torch.manual_seed(1)
    y_c, gx_c, g_c, aux_c = _grads(cpu_layer, x)
    torch.manual_seed(1)
    y_g, gx_g, g_g, aux_g = _grads(gpu_layer, x.cuda())
    if dtype == torch.float32:  # bf16 rounding may flip near-tied routing choices
        assert torch.equal(aux_c.expert_ids_TK, aux_g.expert_ids_TK.cpu())
        assert torch.equal(aux_c.counts_E, aux_g.counts_E.cpu())
    torch.testing.assert_close(y_g, y_c, **TOL[dtype])
    torch.testing.assert_close(gx_g, gx_c, **TOL[dtype])
    for name in g_c:
        torch.testing.assert_close(g_g[name], g_c[name], **TOL[dtype], msg=name)


def test_modality_groups_on_cuda_match_cpu():
    cfg = MoEConfig(
        dim=32,
        hidden_dim=64,
        num_experts=8,
        top_k=2,
        expert_groups="modality",
        num_cross_modal_experts=2,
        num_shared_experts=1,
    )
    torch.manual_seed(0)
    layer = MoELayer(cfg)
    gpu = copy.deepcopy(layer).cuda()
    x, modality = torch.randn(2, 40, 32), torch.randint(-1, 2, (2, 40))
    torch.manual_seed(1)
    y_c, gx_c, g_c, _ = _grads(layer, x, modality)
    torch.manual_seed(1)
    y_g, gx_g, g_g, _ = _grads(gpu, x.cuda(), modality.cuda())
    torch.testing.assert_close(y_g, y_c, **TOL[torch.float32])
    torch.testing.assert_close(gx_g, gx_c, **TOL[torch.float32])
    for name in g_c:
        torch.testing.assert_close(g_g[name], g_c[name], **TOL[torch.float32], msg=name)


def test_fused_router_on_cuda_matches_reference():
    cfg = MoEConfig(dim=32, hidden_dim=16, num_experts=8, top_k=2)
    router = TopKRouter(cfg).cuda()
    x = torch.randn(500, 32, device="cuda", requires_grad=True)
    out = router(x)
    (out.weights_TK.sum() + (out.probs_TE**2).sum()).backward()
    fast = x.grad.clone(), router.gate.weight.grad.clone()
    x.grad = router.gate.weight.grad = None
    logits = torch.nn.functional.linear(x, router.gate.weight)
    probs, ids, w = route_reference(logits, None, None, 2)
    assert torch.equal(ids, out.expert_ids_TK)
    (w.sum() + (probs**2).sum()).backward()
    torch.testing.assert_close(fast[0], x.grad)
    torch.testing.assert_close(fast[1], router.gate.weight.grad)


@pytest.mark.skipif(not torch.cuda.is_available() or not _hopper(), reason="needs sm90+")
def test_bf16_grouped_mm_runs_torch_grouped_mm_without_host_sync():
    E, D, H = 8, 256, 512
    counts = torch.tensor([0, 100, 37, 0, 250, 13, 64, 36], device="cuda")
    N = int(counts.sum()) + 20  # 20 dropped rows at the end
    x = torch.randn(N, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w_in = (torch.randn(E, D, 2 * H, device="cuda") * D**-0.5).bfloat16().requires_grad_()
    w_out = (torch.randn(E, H, D, device="cuda") * H**-0.5).bfloat16().requires_grad_()
    assert grouped_mm_applies(x, w_in, w_out)
    g = torch.randn(N, D, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = experts_grouped_mm(x, counts, w_in, w_out, "swiglu")
        y.backward(g)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    fast = (y, x.grad, w_in.grad, w_out.grad)
    x.grad = w_in.grad = w_out.grad = None
    experts_loop(x, counts, w_in, w_out, "swiglu").backward(g)
    slow = (experts_loop(x.detach(), counts, w_in.detach(), w_out.detach(), "swiglu"),)
    slow += (x.grad, w_in.grad, w_out.grad)
    assert torch.all(fast[0][-20:] == 0)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a.float(), b.float(), **TOL[torch.bfloat16])
