"""Routing statistics per layer and modality: a hand-built MoEAux, then a real MoE layer."""

import math

import pytest
import torch

from vlmoe.config import MoEConfig
from vlmoe.eval.routing import RoutingStats, layer_sums, starved_experts_warning
from vlmoe.moe import stats
from vlmoe.moe.layer import MoEAux, MoELayer


def hand_aux() -> MoEAux:
    """4 tokens (image, image, text, padding), E = 4, K = 2; expert 3 never used."""
    probs = torch.tensor(
        [[1 / 3, 1 / 3, 1 / 3, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0], [0.25] * 4]
    )
    ids = torch.tensor([[0, 1], [0, 2], [2, 1], [1, 0]])
    kept = torch.tensor([[True, True], [True, False], [True, True], [True, True]])
    return MoEAux(
        logits_TE=probs.clamp_min(1e-9).log(),
        probs_TE=probs,
        expert_ids_TK=ids,
        weights_TK=torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1], [0.5, 0.5]]),
        kept_TK=kept,
        counts_E=torch.tensor([3, 3, 1, 0]),
        modality_T=torch.tensor([0, 0, 1, -1]),
        allowed_ME=None,
        num_experts=4,
        top_k=2,
        router="topk",
    )


def test_layer_sums_hand_worked():
    s = layer_sums(hand_aux())
    # image: token 0 -> e0, e1; token 1 -> e0 (its e2 pair dropped). text: token 2 -> e2, e1.
    assert s["load_ME"].tolist() == [[2, 1, 0, 0], [0, 1, 1, 0]]
    assert s["routed_ME"].tolist() == [[2, 1, 1, 0], [0, 1, 1, 0]]
    assert s["dropped_M"].tolist() == [1, 0]
    assert s["pairs_M"].tolist() == [4, 2]
    assert s["tokens_M"].tolist() == [2, 1]
    torch.testing.assert_close(s["entropy_sum_M"], torch.tensor([math.log(3), math.log(2)]))
    # effective top-k: token 0 uses two equal weights (2), token 1 one kept pair (1), token 2
    # weights 0.9 / 0.1: 1 / (0.81 + 0.01)
    torch.testing.assert_close(s["eff_k_sum_M"], torch.tensor([3.0, 1 / 0.82]))


def test_effective_top_k_per_token():
    aux = hand_aux()
    eff = stats.effective_top_k(aux)
    torch.testing.assert_close(eff, torch.tensor([2.0, 1.0, 1 / 0.82, 2.0]))
    none_kept = MoEAux(**{**aux.__dict__, "kept_TK": torch.zeros(4, 2, dtype=torch.bool)})
    assert stats.effective_top_k(none_kept).tolist() == [0.0] * 4


def test_routing_stats_accumulates_and_derives_rates():
    rs = RoutingStats(["blocks.1.ffn"])
    rs.update([hand_aux()])
    rs.update([hand_aux()])
    results = dict(rs.results())
    assert results["blocks.1.ffn/image/tokens_per_expert"] == [4, 2, 0, 0]
    assert results["blocks.1.ffn/text/tokens_per_expert"] == [0, 2, 2, 0]
    assert results["blocks.1.ffn/image/drop_rate"] == pytest.approx(0.25)
    assert results["blocks.1.ffn/text/drop_rate"] == 0.0
    assert results["blocks.1.ffn/drop_rate"] == pytest.approx(1 / 6)
    assert results["blocks.1.ffn/image/router_entropy"] == pytest.approx(math.log(3) / 2)
    assert results["blocks.1.ffn/text/router_entropy"] == pytest.approx(math.log(2))
    assert results["blocks.1.ffn/router_entropy"] == pytest.approx((math.log(3) + math.log(2)) / 3)
    assert results["blocks.1.ffn/image/effective_top_k"] == pytest.approx(1.5)
    assert results["blocks.1.ffn/text/effective_top_k"] == pytest.approx(1 / 0.82)
    assert results["blocks.1.ffn/effective_top_k"] == pytest.approx((3 + 1 / 0.82) / 3)
    assert results["blocks.1.ffn/dead_experts"] == 1
    assert results["blocks.1.ffn/dead_expert_ids"] == [3]
    # load [4, 4, 2, 0]: max / mean = 4 / 2.5
    assert results["blocks.1.ffn/load_imbalance"] == pytest.approx(1.6)
    assert results["num_moe_layers"] == 1
    assert results["dead_experts"] == 1
    assert rs.load_LME() == [[[4, 2, 0, 0], [0, 2, 2, 0]]]


def test_starved_experts_per_layer_and_modality():
    rs = RoutingStats(["blocks.1.ffn"])
    rs.update([hand_aux()])
    results = dict(rs.results())
    # routed pairs: image [2, 1, 1, 0], text [0, 1, 1, 0]; expert 0 gets no text token but
    # the image tokens give it its share, so only expert 3 is starved in the layer.
    assert results["blocks.1.ffn/image/starved_expert_ids"] == [3]
    assert results["blocks.1.ffn/text/starved_expert_ids"] == [0, 3]
    assert results["blocks.1.ffn/starved_expert_ids"] == [3]
    assert results["blocks.1.ffn/starved_experts"] == 1 and results["starved_experts"] == 1
    message = starved_experts_warning(rs.summaries())
    assert message is not None and "under 1% of their uniform share" in message
    assert "blocks.1.ffn/image: [3]" in message and "blocks.1.ffn/text: [0, 3]" in message


def test_starved_warning_with_modality_groups_and_a_nearly_dead_expert():
    cfg = MoEConfig(dim=4, hidden_dim=4, num_experts=4, top_k=1, expert_groups="modality")
    layer = MoELayer(cfg)
    # Image tokens may reach experts 0, 1; text tokens 2, 3. Hand-set the router so image
    # tokens all pick expert 0 but one, and text tokens split evenly.
    T = 400
    modality = torch.tensor([0] * 200 + [1] * 200)
    x = torch.zeros(T, 4)
    x[:199, 0] = 1.0  # image -> expert 0
    x[199, 1] = 1.0  # one image token -> expert 1: 1 of 200, under 2% of the uniform 100
    x[200:300, 2] = 1.0
    x[300:, 3] = 1.0
    with torch.no_grad():
        layer.router.gate.weight.copy_(torch.eye(4) * 5)
    _, aux = layer(x, modality)
    rs = RoutingStats(["moe"], starved_fraction=0.02)
    rs.update([aux])
    (s,) = rs.summaries()
    assert s.load_ME == [[199, 1, 0, 0], [0, 0, 100, 100]] and s.dead_experts == []
    assert s.starved_M == [[1], []] and s.starved_experts == [1]
    assert "moe/image: [1]" in starved_experts_warning([s], fraction=0.02)
    rs_loose = RoutingStats(["moe"], starved_fraction=0.005)
    rs_loose.update([aux])
    assert starved_experts_warning(rs_loose.summaries()) is None


def test_routing_stats_without_modality_and_layer_count_check():
    aux = hand_aux()
    rs = RoutingStats()
    rs.update([MoEAux(**{**aux.__dict__, "modality_T": None})] * 2)
    results = dict(rs.results())
    # all four tokens are one pool, reported as "image" (modality 0); no text entries
    assert results["moe0/image/tokens_per_expert"] == [3, 3, 1, 0]
    assert "moe0/text/tokens_per_expert" not in results
    assert results["num_moe_layers"] == 2
    with pytest.raises(ValueError, match="got 1 MoEAux"):
        rs.update([aux])


def test_routing_stats_on_a_real_layer_match_its_counts():
    torch.manual_seed(0)
    layer = MoELayer(MoEConfig(dim=8, hidden_dim=16, num_experts=4, top_k=2, capacity_factor=0.5))
    x = torch.randn(3, 10, 8)
    modality = torch.tensor([[0] * 6 + [1] * 4] * 3)
    _, aux = layer(x, modality)
    rs = RoutingStats()
    rs.update([aux])
    (summary,) = rs.summaries()
    assert sum(map(sum, summary.load_ME)) == int(aux.counts_E.sum())
    assert summary.tokens_M == [18, 12]
    assert 0 < summary.drop_rate < 1
    assert 0 < summary.entropy <= math.log(4)
    assert 0 < summary.effective_k < 2  # top-2; capacity 0.5 drops pairs, some tokens all


def test_effective_top_k_of_a_real_top2_layer():
    """A fresh router is near uniform: both renormalized top-2 weights near 1/2, so nearly 2;
    a router made sure of one expert per token uses one."""
    torch.manual_seed(0)
    layer = MoELayer(MoEConfig(dim=8, hidden_dim=16, num_experts=4, top_k=2))
    x = torch.randn(64, 8)
    with torch.no_grad():
        layer.router.gate.weight.zero_()
        _, aux = layer(x)
        assert stats.effective_top_k(aux).min() == pytest.approx(2.0)
        layer.router.gate.weight.copy_(torch.eye(4, 8) * 100)
        _, aux = layer(x)
    assert stats.effective_top_k(aux).mean() < 1.05


@pytest.mark.parametrize(
    "router",
    [dict(router="expert_choice"), dict(router="soft"), dict(top_k=1, capacity_factor=1.0)],
)
def test_routing_stats_for_every_router(router):
    torch.manual_seed(0)
    layer = MoELayer(MoEConfig(dim=8, hidden_dim=16, num_experts=4, **router))
    modality = torch.tensor([[0] * 6 + [1] * 4] * 2)
    _, aux = layer(torch.randn(2, 10, 8), modality)
    rs = RoutingStats(["l"])
    rs.update([aux])
    results = dict(rs.results())
    kept = int((aux.kept_TK & (aux.expert_ids_TK >= 0)).sum())
    image, text = results["l/image/tokens_per_expert"], results["l/text/tokens_per_expert"]
    assert sum(image) + sum(text) == kept
    assert 0 <= results["l/drop_rate"] < 1
    assert 0 <= results["l/router_entropy"] <= math.log(4) + 1e-5
    assert 0 <= results["l/effective_top_k"] <= 4 + 1e-5
