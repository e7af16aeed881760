"""Starved experts: below a fraction of the uniform load, per modality, with and without groups."""

import pytest
import torch

from vlmoe.config import MoEConfig
from vlmoe.moe import stats
from vlmoe.moe.router import modality_expert_mask


def starved_twin(load_ME, allowed_ME, fraction):
    """Expert by expert: below `fraction` * (modality's pairs / experts it reaches)."""
    M, E = load_ME.shape
    out = torch.zeros(M, E, dtype=torch.bool)
    for m in range(M):
        reach = [e for e in range(E) if allowed_ME is None or bool(allowed_ME[m, e])]
        total = sum(int(load_ME[m, e]) for e in range(E))
        if total == 0 or not reach:
            continue
        for e in reach:
            out[m, e] = int(load_ME[m, e]) < fraction * total / len(reach)
    return out


def test_three_of_ten_thousand_is_starved_not_healthy():
    load = torch.tensor([[3, 3332, 3332, 3333]])  # 10,000 pairs over 4 experts: uniform 2,500
    assert stats.dead_experts(load[0]).tolist() == [False] * 4  # the old check saw nothing
    assert stats.starved_experts(load).tolist() == [[True, False, False, False]]
    assert stats.starved_experts(load, fraction=0.001).tolist() == [[False] * 4]  # 3 > 2.5


def test_modality_groups_use_the_group_size_and_skip_unreachable_experts():
    cfg = MoEConfig(num_experts=6, top_k=1, expert_groups="modality", num_cross_modal_experts=2)
    allowed = modality_expert_mask(cfg)  # image: 0, 1 + 4, 5; text: 2, 3 + 4, 5
    load = torch.tensor([[500, 500, 0, 0, 499, 1], [0, 0, 1000, 1000, 0, 0]])
    # image's uniform share is 1500 / 4 = 375 (not 1500 / 6): 1 < 3.75 is starved; experts 2
    # and 3 get no image tokens but image cannot reach them, so they are not starved by image.
    got = stats.starved_experts(load, allowed)
    assert got.tolist() == [
        [False, False, False, False, False, True],
        [False, False, False, False, True, True],
    ]
    torch.testing.assert_close(stats.uniform_load(load, allowed), torch.tensor([375.0, 500.0]))
    assert torch.equal(got, starved_twin(load, allowed, stats.STARVED_FRACTION))


@pytest.mark.parametrize("seed", range(5))
def test_starved_experts_match_the_twin(seed):
    g = torch.Generator().manual_seed(seed)
    cfg = MoEConfig(num_experts=8, top_k=1, expert_groups="modality", num_cross_modal_experts=2)
    allowed = modality_expert_mask(cfg)
    load = torch.randint(0, 50, (2, 8), generator=g) * allowed
    load[0, 1] = 0
    for fraction, mask in [(0.2, None), (0.5, allowed), (0.01, allowed)]:
        want = starved_twin(load, mask, fraction)
        assert torch.equal(stats.starved_experts(load, mask, fraction), want)


def test_absent_modality_starves_nothing_and_bad_fraction_refused():
    load = torch.tensor([[10, 0, 5], [0, 0, 0]])
    assert stats.starved_experts(load).tolist() == [[False, True, False], [False] * 3]
    with pytest.raises(ValueError, match="fraction"):
        stats.starved_experts(load, fraction=2.0)
