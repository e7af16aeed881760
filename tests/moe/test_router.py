"""The fused softmax top-K router against its op-by-op twin, and the small-E softmax."""

import pytest
import torch

from vlmoe.config import MoEConfig
from vlmoe.moe.router import TopKRouter, route_reference, softmax_experts


@pytest.mark.parametrize("T", [1, 5, 64, 300])
@pytest.mark.parametrize("E", [4, 8, 16, 24])
def test_softmax_experts_equals_softmax(T, E):
    torch.manual_seed(T * E)
    x = (torch.randn(T, E) * 3).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    g = torch.randn(T, E)
    y = softmax_experts(x)
    y.backward(g)
    y_ref = x_ref.softmax(-1)
    y_ref.backward(g)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(x.grad, x_ref.grad)
    assert y.is_contiguous()


def _routes(router: TopKRouter, x, modality, fused: bool):
    """Router outputs and the gradients of a loss that uses logits, probs and weights."""
    torch.manual_seed(1)
    g_w, g_p, g_l = (torch.randn(x.shape[0], n) for n in (router.cfg.top_k, 8, 8))
    x = x.detach().clone().requires_grad_()
    router.zero_grad(set_to_none=True)
    cfg = router.cfg
    if fused:
        out = router(x, modality)
        assert router.fused
        logits, probs, ids, w = out.logits_TE, out.probs_TE, out.expert_ids_TK, out.weights_TK
    else:
        logits = torch.nn.functional.linear(x, router.gate.weight)
        allowed = router.allowed_TE(modality)
        bias = router.expert_bias if cfg.balance_bias else None
        probs, ids, w = route_reference(logits, allowed, bias, cfg.top_k)
    loss = (w * g_w).sum() + (probs * g_p[:, : cfg.num_experts]).sum()
    loss = loss + (logits.logsumexp(-1) ** 2).mean() + (logits * g_l[:, : cfg.num_experts]).sum()
    loss.backward()
    return logits, probs, ids, w, x.grad, router.gate.weight.grad


@pytest.mark.parametrize(
    ("E", "k", "groups", "bias", "T"),
    [
        (8, 2, False, False, 200),
        (8, 1, False, False, 7),
        (4, 3, False, True, 100),
        (8, 2, True, False, 150),
        (8, 3, True, True, 90),
        (6, 2, False, False, 33),
    ],
)
def test_fused_router_matches_reference(E, k, groups, bias, T):
    kw = dict(expert_groups="modality", num_cross_modal_experts=2) if groups else {}
    cfg = MoEConfig(dim=16, hidden_dim=8, num_experts=E, top_k=k, balance_bias=bias, **kw)
    torch.manual_seed(E * 10 + k)
    router = TopKRouter(cfg)
    if bias:
        router.expert_bias.copy_(torch.randn(E) * 0.1)
    x = torch.randn(T, 16) * 2
    modality = torch.randint(-1, 2, (T,)) if groups else None
    fast = _routes(router, x, modality, fused=True)
    slow = _routes(router, x, modality, fused=False)
    assert torch.equal(fast[2], slow[2])  # the same experts
    for a, b in zip(fast[:2] + fast[3:], slow[:2] + slow[3:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_fused_router_under_no_grad_and_bf16_input():
    cfg = MoEConfig(dim=16, hidden_dim=8, num_experts=8, top_k=2)
    router = TopKRouter(cfg).eval()
    x = torch.randn(40, 16)
    with torch.no_grad():
        a = router(x)
        b = router(x.bfloat16())
    assert a.weights_TK.dtype == torch.float32 and b.weights_TK.dtype == torch.float32
    torch.testing.assert_close(a.weights_TK.sum(-1), torch.ones(40))


def test_noisy_gating_uses_the_reference_path_in_training_only():
    cfg = MoEConfig(dim=16, hidden_dim=8, num_experts=8, top_k=2, router_noise="gaussian")
    router = TopKRouter(cfg)
    assert not router.train().fused
    assert router.eval().fused
    sig = TopKRouter(MoEConfig(dim=16, hidden_dim=8, num_experts=8, score_func="sigmoid"))
    assert not sig.fused
