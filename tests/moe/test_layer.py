"""MoELayer against its slow twins: outputs and gradients, every router and option."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.moe.reference import reference_kept, reference_moe, reference_soft_moe
from vlmoe.config import MoEConfig
from vlmoe.moe import MoELayer
from vlmoe.moe.dispatch import capacity
from vlmoe.nn.mlp import MLP


def _grads(module, x):
    return [x.grad] + [p.grad for p in module.parameters() if p.grad is not None]


def _check_against(layer, x, modality=None, reference=reference_moe, atol=1e-5):
    x1 = x.clone().requires_grad_(True)
    y, _ = layer(x1, modality)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    g_fast = [g.clone() for g in _grads(layer, x1)]
    layer.zero_grad()
    x2 = x.clone().requires_grad_(True)
    y_ref = reference(layer, x2, modality) if modality is not None else reference(layer, x2)
    (y_ref * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    g_ref = _grads(layer, x2)
    torch.testing.assert_close(y, y_ref, atol=atol, rtol=1e-5)
    assert len(g_fast) == len(g_ref)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-5)
    layer.zero_grad()


@settings(max_examples=25, deadline=None)
@given(
    T=st.integers(1, 40),
    E=st.integers(1, 8),
    k=st.integers(1, 8),
    activation=st.sampled_from(["swiglu", "gelu"]),
    score_func=st.sampled_from(["softmax", "sigmoid"]),
    renormalize=st.booleans(),
    shared=st.integers(0, 2),
    seed=st.integers(0, 2**16),
)
def test_topk_layer_matches_reference(T, E, k, activation, score_func, renormalize, shared, seed):
    k = min(k, E)
    torch.manual_seed(seed)
    cfg = MoEConfig(
        dim=12,
        hidden_dim=10,
        num_experts=E,
        top_k=k,
        activation=activation,
        score_func=score_func,
        renormalize=renormalize,
        num_shared_experts=shared,
        shared_expert_gate=shared > 0 and seed % 2 == 0,
    )
    layer = MoELayer(cfg)
    _check_against(layer, torch.randn(T, 12))


@settings(max_examples=20, deadline=None)
@given(
    T=st.integers(1, 40),
    E=st.integers(2, 8),
    k=st.integers(1, 3),
    factor=st.sampled_from([0.25, 0.5, 1.0, 1.25]),
    policy=st.sampled_from(["position", "score"]),
    seed=st.integers(0, 2**16),
)
def test_capacity_layer_matches_reference(T, E, k, factor, policy, seed):
    torch.manual_seed(seed)
    cfg = MoEConfig(
        dim=8,
        hidden_dim=6,
        num_experts=E,
        top_k=min(k, E),
        capacity_factor=factor,
        drop_policy=policy,
    )
    layer = MoELayer(cfg)
    x = torch.randn(T, 8)
    _check_against(layer, x)
    # Which pairs survive, against the pair-by-pair twin ranked by the pre-renormalization prob.
    routing = layer.router(x)
    priority_T = routing.probs_TE.gather(1, routing.expert_ids_TK).max(dim=1).values.detach()
    C = capacity(T, cfg.top_k, E, factor)
    want = reference_kept(routing.expert_ids_TK, priority_T, C, policy)
    assert torch.equal(layer(x)[1].kept_TK, want)


@pytest.mark.parametrize("score_func", ["softmax", "sigmoid"])
def test_batch_priority_keeps_the_most_confident_tokens_with_top1(score_func):
    # Top-1 with renormalization: every combine weight is 1, so ranking by it degrades to
    # position order. V-MoE ranks by the router's probability before renormalizing.
    torch.manual_seed(0)
    T, E = 16, 2
    cfg = MoEConfig(
        dim=4, hidden_dim=4, num_experts=E, top_k=1, score_func=score_func, capacity_factor=0.5
    )
    layer = MoELayer(cfg)
    with torch.no_grad():
        layer.router.gate.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]))
    # All tokens prefer expert 0; confidence grows with x[:, 0], in shuffled order.
    strength = torch.randperm(T).float() / T + 0.1
    x = torch.zeros(T, 4)
    x[:, 0] = strength
    _, aux = layer(x)
    assert (aux.expert_ids_TK[:, 0] == 0).all() and torch.allclose(aux.weights_TK, torch.ones(T, 1))
    C = capacity(T, 1, E, 0.5)  # 4 of the 16 tokens fit
    kept = aux.kept_TK[:, 0]
    assert int(kept.sum()) == C
    assert set(kept.nonzero().flatten().tolist()) == set(strength.topk(C).indices.tolist())


@settings(max_examples=15, deadline=None)
@given(
    B=st.integers(1, 3),
    L=st.integers(1, 12),
    cross=st.integers(0, 2),
    k=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
def test_modality_groups_match_reference_and_never_cross(B, L, cross, k, seed):
    torch.manual_seed(seed)
    E = 4 + cross
    cfg = MoEConfig(
        dim=8,
        hidden_dim=6,
        num_experts=E,
        top_k=k,
        expert_groups="modality",
        num_cross_modal_experts=cross,
    )
    layer = MoELayer(cfg)
    modality = torch.randint(-1, 2, (B, L))
    x = torch.randn(B, L, 8)
    _check_against(layer, x, modality)
    _, aux = layer(x, modality)
    ids = aux.expert_ids_TK
    image = modality.reshape(-1) == 0
    text = modality.reshape(-1) == 1
    assert not ((ids[image] >= 2) & (ids[image] < 4)).any(), "image token reached a text expert"
    assert not (ids[text] < 2).any(), "text token reached an image expert"


def test_modality_groups_need_modality():
    layer = MoELayer(
        MoEConfig(dim=8, hidden_dim=6, num_experts=4, top_k=1, expert_groups="modality")
    )
    with pytest.raises(ValueError, match="modality"):
        layer(torch.randn(3, 8))


def test_one_expert_top1_equals_dense_mlp():
    torch.manual_seed(0)
    for activation in ("swiglu", "gelu"):
        mlp = MLP(16, 24, activation)
        layer = MoELayer(
            MoEConfig(dim=16, hidden_dim=24, num_experts=1, top_k=1, activation=activation)
        )
        with torch.no_grad():
            layer.experts.w_in[0].copy_(mlp.fc_in.weight.t())
            layer.experts.w_out[0].copy_(mlp.fc_out.weight.t())
        x = torch.randn(2, 7, 16)
        y, aux = layer(x)
        torch.testing.assert_close(y, mlp(x), atol=1e-6, rtol=1e-6)
        assert aux.counts_E.tolist() == [14]


def test_expert_choice_matches_reference_and_fills_every_expert():
    torch.manual_seed(0)
    cfg = MoEConfig(
        dim=8, hidden_dim=6, num_experts=4, router="expert_choice", expert_choice_capacity=1.5
    )
    layer = MoELayer(cfg)
    x = torch.randn(10, 8)
    _check_against(layer, x)
    _, aux = layer(x)
    C = 4  # ceil(1.5 * 10 / 4)
    assert aux.counts_E.tolist() == [C] * 4
    assert ((aux.expert_ids_TK >= 0).sum(0) == C).all()


def test_soft_moe_matches_reference_and_weights_are_normalized():
    torch.manual_seed(0)
    layer = MoELayer(
        MoEConfig(dim=8, hidden_dim=6, num_experts=3, router="soft", slots_per_expert=2)
    )
    x = torch.randn(2, 5, 8)
    _check_against(layer, x, reference=reference_soft_moe)
    routing = layer.router(x)
    torch.testing.assert_close(routing.soft_dispatch_BLS.sum(1), torch.ones(2, 6))
    torch.testing.assert_close(routing.soft_combine_BLS.sum(2), torch.ones(2, 5))


def test_soft_moe_needs_sequences():
    layer = MoELayer(MoEConfig(dim=8, hidden_dim=6, num_experts=3, router="soft"))
    with pytest.raises(ValueError, match="batch, tokens, dim"):
        layer(torch.randn(5, 8))


def test_aux_shapes_do_not_depend_on_options():
    x = torch.randn(2, 3, 8)
    for cfg in (
        MoEConfig(dim=8, hidden_dim=4, num_experts=4, top_k=2),
        MoEConfig(dim=8, hidden_dim=4, num_experts=4, top_k=2, capacity_factor=1.0),
    ):
        _, aux = MoELayer(cfg)(x)
        assert aux.logits_TE.shape == (6, 4) and aux.logits_TE.dtype == torch.float32
        assert aux.expert_ids_TK.shape == aux.weights_TK.shape == aux.kept_TK.shape == (6, 2)
        assert aux.counts_E.shape == (4,)


def test_bf16_input_keeps_router_in_fp32_and_matches_fp32():
    torch.manual_seed(0)
    layer = MoELayer(MoEConfig(dim=16, hidden_dim=32, num_experts=4, top_k=2))
    x = torch.randn(64, 16)
    y32, aux32 = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16, aux16 = layer(x)
    assert aux16.logits_TE.dtype == torch.float32 and aux16.weights_TK.dtype == torch.float32
    torch.testing.assert_close(aux16.logits_TE, aux32.logits_TE)
    torch.testing.assert_close(y16.float(), y32, atol=3e-2, rtol=3e-2)


def test_balance_bias_changes_selection_not_weights_and_updates():
    torch.manual_seed(0)
    cfg = MoEConfig(
        dim=8,
        hidden_dim=4,
        num_experts=4,
        top_k=1,
        balance_bias=True,
        balance_bias_rate=0.5,
        renormalize=False,
    )
    layer = MoELayer(cfg)
    x = torch.randn(32, 8)
    _, before = layer(x)
    layer.router.expert_bias.copy_(torch.tensor([0.0, 0.0, 0.0, 10.0]))
    _, after = layer(x)
    assert (after.expert_ids_TK == 3).all()
    # The weight is expert 3's probability, untouched by the bias.
    torch.testing.assert_close(after.weights_TK[:, 0], after.probs_TE[:, 3])
    layer.router.expert_bias.zero_()
    layer.update_balance_bias(before)
    counts = before.routed_E.float()
    expected = 0.5 * torch.sign(counts.mean() - counts)
    torch.testing.assert_close(layer.router.expert_bias, expected)
    assert "router.expert_bias" in layer.state_dict()


def test_router_noise_only_in_training():
    torch.manual_seed(0)
    for noise in ("jitter", "gaussian"):
        layer = MoELayer(
            MoEConfig(dim=8, hidden_dim=4, num_experts=4, router_noise=noise, router_noise_eps=0.5)
        )
        x = torch.randn(16, 8)
        layer.eval()
        a, b = layer.router(x).logits_TE, layer.router(x).logits_TE
        torch.testing.assert_close(a, b)
        layer.train()
        assert not torch.equal(layer.router(x).logits_TE, layer.router(x).logits_TE)


def test_balance_bias_update_sums_repeated_passes():
    from torch import nn

    from vlmoe.moe import update_balance_bias

    cfg = MoEConfig(
        dim=8, hidden_dim=4, num_experts=4, top_k=1, balance_bias=True, balance_bias_rate=1.0
    )
    model = nn.ModuleList([MoELayer(cfg), MoELayer(cfg)])
    x_img, x_txt = torch.randn(16, 8), torch.randn(5, 8)
    auxes = [model[0](x_img)[1], model[1](x_img)[1], model[0](x_txt)[1], model[1](x_txt)[1]]
    update_balance_bias(model, auxes)
    for i in range(2):
        load = (auxes[i].routed_E + auxes[i + 2].routed_E).float()
        torch.testing.assert_close(model[i].router.expert_bias, torch.sign(load.mean() - load))
    with pytest.raises(ValueError, match="got 3 MoEAux for 2 MoE layers"):
        update_balance_bias(model, auxes[:3])


@settings(max_examples=30, deadline=None)
@given(
    T=st.integers(1, 4),
    k=st.integers(1, 3),
    score_func=st.sampled_from(["softmax", "sigmoid"]),
    shared=st.integers(0, 1),
    capacity_factor=st.sampled_from([None, 0.25, 1.0]),
    groups=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_decoding_fast_path_matches_general_path(
    T, k, score_func, shared, capacity_factor, groups, dtype, seed
):
    """A few tokens without grad skip dispatch/combine (`MoELayer._pairwise`): same output and
    aux as the general path, which runs when grad is on, and as the reference."""
    torch.manual_seed(seed)
    cfg = MoEConfig(
        dim=16,
        hidden_dim=8,
        num_experts=8,
        top_k=k,
        score_func=score_func,
        num_shared_experts=shared,
        capacity_factor=capacity_factor,
        expert_groups="modality" if groups else "none",
        num_modalities=2,
    )
    layer = MoELayer(cfg).to(dtype)
    x = torch.randn(T, 16, dtype=dtype)
    modality = torch.randint(0, 2, (T,)) if groups else None
    fast_expected = T * k <= 8 and (capacity_factor is None or T == 1)
    calls = []
    general = layer.dispatcher.dispatch
    layer.dispatcher.dispatch = lambda *a, **kw: calls.append(1) or general(*a, **kw)
    with torch.no_grad():
        y_fast, aux_fast = layer(x, modality)
    assert (not calls) == fast_expected  # the fast path ran exactly where it applies
    y_general, aux_general = layer(x, modality)  # grad on: the general path
    assert len(calls) == (1 if fast_expected else 2)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(y_fast, y_general.detach(), **tol)
    for name in ("expert_ids_TK", "weights_TK", "kept_TK", "counts_E"):
        torch.testing.assert_close(getattr(aux_fast, name), getattr(aux_general, name))
    if capacity_factor is None and dtype == torch.float32:
        y_ref = reference_moe(layer, x, modality) if groups else reference_moe(layer, x)
        torch.testing.assert_close(y_fast, y_ref.detach(), atol=1e-5, rtol=1e-5)


def test_decoding_fast_path_only_for_auto_backend():
    layer = MoELayer(MoEConfig(dim=16, hidden_dim=8, num_experts=8, top_k=2, backend="loop"))
    x = torch.randn(1, 16)
    with torch.no_grad():
        routing = layer.router(x)
        assert layer._few_pairs(x, routing) is None
        layer.cfg = MoEConfig(dim=16, hidden_dim=8, num_experts=8, top_k=2)  # auto
        assert layer._few_pairs(x, routing) == routing.expert_ids_TK.tolist()


@pytest.mark.parametrize("backend", ["auto", "grouped_mm", "bmm", "loop"])
def test_bf16_autocast_with_a_bf16_input_trains(backend):
    """Under bf16 autocast an MoE whose input comes straight from a linear layer (bf16) runs
    forward and backward, computes its experts in bf16, and its fp32 weights get gradients
    close to the fp32 ones."""
    torch.manual_seed(0)
    embed = torch.nn.Linear(16, 16)
    layer = MoELayer(MoEConfig(dim=16, hidden_dim=32, num_experts=4, top_k=2, backend=backend))
    x = torch.randn(24, 16)
    grads = {}
    for precision in ("fp32", "bf16"):
        layer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            h = embed(x)
            y, _ = layer(h)
        assert y.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
        y.float().square().mean().backward()
        grads[precision] = [p.grad.clone() for p in layer.experts.parameters()]
        assert all(g.dtype == torch.float32 for g in grads[precision])
    for a, b in zip(grads["fp32"], grads["bf16"]):
        torch.testing.assert_close(b, a, atol=0.05 * a.abs().max().item(), rtol=0.05)
