"""Capacity per group of tokens (`capacity_group_size`): each group drops as if it were alone."""

import pytest
import torch

from vlmoe.config import ConfigError, MoEConfig
from vlmoe.moe.dispatch import Dispatcher


def _routing(T, E, K, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)])
    ids[: T // 2, 0] = 0  # crowd expert 0 so that capacity bites
    return ids, torch.rand(T, K, generator=g)


@pytest.mark.parametrize("policy", ["score", "position"])
@pytest.mark.parametrize("K", [1, 2])
def test_grouped_plan_equals_one_plan_per_group(policy, K):
    T, E, G = 24, 4, 6
    ids, w = _routing(T, E, K, seed=K)
    grouped = Dispatcher(E, 1.0, policy, group_size=G).plan(ids, w)
    alone = [Dispatcher(E, 1.0, policy).plan(ids[s : s + G], w[s : s + G]) for s in range(0, T, G)]
    assert torch.equal(grouped.kept_TK, torch.cat([p.kept_TK for p in alone]))
    assert torch.equal(grouped.counts_E, sum(p.counts_E for p in alone))
    assert not bool(grouped.kept_TK.all())
    # Kept pairs first, sorted by expert; the buffer holds each pair once.
    kept_ids = ids.reshape(-1)[grouped.order_N[: int(grouped.counts_E.sum())]]
    assert torch.equal(kept_ids, kept_ids.sort().values)
    assert torch.equal(grouped.order_N.sort().values, torch.arange(T * K))


def test_one_group_is_the_default():
    ids, w = _routing(20, 4, 2, seed=3)
    a = Dispatcher(4, 1.25, "score").plan(ids, w)
    b = Dispatcher(4, 1.25, "score", group_size=20).plan(ids, w)
    assert torch.equal(a.order_N, b.order_N) and torch.equal(a.kept_TK, b.kept_TK)


def test_tokens_must_split_into_groups():
    ids, w = _routing(10, 4, 2, seed=0)
    with pytest.raises(ValueError, match="capacity groups of moe.capacity_group_size=4"):
        Dispatcher(4, 1.0, group_size=4).plan(ids, w)
    with pytest.raises(ConfigError, match="capacity_group_size"):
        MoEConfig(capacity_factor=1.0, capacity_group_size=0)


def test_expert_choice_groups_choose_as_if_alone():
    from vlmoe.moe.router import ExpertChoiceRouter

    torch.manual_seed(0)
    cfg = MoEConfig(dim=8, num_experts=4, router="expert_choice", capacity_group_size=6)
    grouped = ExpertChoiceRouter(cfg)
    alone = ExpertChoiceRouter(MoEConfig(dim=8, num_experts=4, router="expert_choice"))
    alone.load_state_dict(grouped.state_dict())
    x = torch.randn(18, 8)
    ids = grouped(x).expert_ids_TK
    assert torch.equal(ids, torch.cat([alone(x[s : s + 6]).expert_ids_TK for s in (0, 6, 12)]))
    # Each expert takes ceil(2.0 * 6 / 4) = 3 tokens of every group.
    assert ((ids >= 0).view(3, 6, 4).sum(1) == 3).all()
