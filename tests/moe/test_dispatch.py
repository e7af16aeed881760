"""Dispatch/combine: the sort, the capacity policy, and the hand-written gradients."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmoe.moe.dispatch import Dispatcher, capacity


@settings(max_examples=30, deadline=None)
@given(T=st.integers(1, 50), E=st.integers(1, 9), k=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_identity_experts_return_router_weighted_input(T, E, k, seed):
    g = torch.Generator().manual_seed(seed)
    k = min(k, E)
    ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)])
    w = torch.rand(T, k, generator=g)
    x = torch.randn(T, 5, generator=g)
    d = Dispatcher(E)
    x_ND, plan = d.dispatch(x, ids, w)
    assert plan.counts_E.sum() == T * k
    # Sorted by expert, each slice holds exactly the tokens routed there.
    start = 0
    for e, n in enumerate(plan.counts_E.tolist()):
        tokens = (plan.order_N[start : start + n] // k).tolist()
        assert sorted(tokens) == sorted((ids == e).nonzero()[:, 0].tolist())
        start += n
    torch.testing.assert_close(d.combine(x_ND, plan), w.sum(1, keepdim=True) * x)


def test_gradients_match_autograd_gathers():
    torch.manual_seed(0)
    T, E, k = 13, 4, 2
    ids = torch.stack([torch.randperm(E)[:k] for _ in range(T)])
    w = torch.rand(T, k, dtype=torch.double, requires_grad=True)
    x = torch.randn(T, 3, dtype=torch.double, requires_grad=True)
    scale = torch.randn(T * k, 1, dtype=torch.double)
    d = Dispatcher(E)

    def fast(x, w):
        x_ND, plan = d.dispatch(x, ids, w)
        plan = plan.__class__(plan.counts_E, plan.order_N, plan.inverse_N, plan.kept_TK, w)
        return d.combine(x_ND * scale, plan)

    def slow(x, w):
        order = d.plan(ids, w).order_N
        x_ND = x[order // k] * scale
        y_TKD = torch.zeros(T * k, 3, dtype=x.dtype).index_copy(0, order, x_ND).view(T, k, 3)
        return (w[..., None] * y_TKD).sum(1)

    torch.testing.assert_close(fast(x, w), slow(x, w))
    assert torch.autograd.gradcheck(fast, (x, w))


def test_capacity_position_policy_keeps_first_tokens_and_first_choices():
    # 6 tokens, 2 experts, top-1, capacity factor 1 -> C = 3.
    ids = torch.tensor([[0], [0], [0], [0], [1], [0]])
    w = torch.tensor([[0.1], [0.9], [0.5], [0.8], [0.7], [0.95]])
    plan = Dispatcher(2, capacity_factor=1.0, drop_policy="position").plan(ids, w)
    assert capacity(6, 1, 2, 1.0) == 3
    assert plan.kept_TK[:, 0].tolist() == [True, True, True, False, True, False]
    assert plan.counts_E.tolist() == [3, 1]


def test_capacity_score_policy_keeps_most_confident_tokens():
    ids = torch.tensor([[0], [0], [0], [0], [1], [0]])
    w = torch.tensor([[0.1], [0.9], [0.5], [0.8], [0.7], [0.95]])
    plan = Dispatcher(2, capacity_factor=1.0, drop_policy="score").plan(ids, w)
    assert plan.kept_TK[:, 0].tolist() == [False, True, False, True, True, True]


def test_capacity_score_policy_ranks_by_the_given_priority():
    # Top-1 renormalized weights are all 1: only the pre-renormalization priority tells tokens
    # apart (V-MoE's batch priority); ranking by the weights would keep the first three.
    ids = torch.tensor([[0], [0], [0], [0], [1], [0]])
    w = torch.ones(6, 1)
    priority = torch.tensor([0.3, 0.9, 0.5, 0.8, 0.7, 0.95])
    d = Dispatcher(2, capacity_factor=1.0, drop_policy="score")
    assert d.plan(ids, w).kept_TK[:, 0].tolist() == [True, True, True, False, True, False]
    kept = d.plan(ids, w, priority).kept_TK[:, 0].tolist()
    assert kept == [False, True, False, True, True, True]


def test_capacity_serves_first_choices_before_second_choices():
    # 4 tokens, top-2 over 2 experts, C = ceil(0.5 * 4 * 2 / 2) = 2 per expert.
    ids = torch.tensor([[0, 1], [0, 1], [1, 0], [1, 0]])
    w = torch.tensor([[0.6, 0.4]] * 4)
    plan = Dispatcher(2, capacity_factor=0.5, drop_policy="position").plan(ids, w)
    assert plan.kept_TK.tolist() == [[True, False], [True, False], [True, False], [True, False]]


def test_dropped_pairs_sit_after_kept_ones():
    torch.manual_seed(1)
    ids = torch.randint(0, 3, (20, 2))
    ids[:, 1] = (ids[:, 0] + 1) % 3
    w = torch.rand(20, 2)
    plan = Dispatcher(3, capacity_factor=0.5).plan(ids, w)
    kept_sorted = plan.kept_TK.reshape(-1)[plan.order_N]
    n_kept = int(plan.counts_E.sum())
    assert kept_sorted[:n_kept].all() and not kept_sorted[n_kept:].any()
