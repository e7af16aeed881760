"""Each loss and stat on an example small enough to work out by hand."""

import math

import torch

from vlmoe.moe.layer import MoEAux
from vlmoe.moe.losses import entropy_losses, load_balance_loss, z_loss
from vlmoe.moe.stats import (
    dead_experts,
    drop_rate,
    load_imbalance,
    modality_expert_load,
    router_entropy,
    tokens_per_expert,
)


def make_aux(probs, ids, kept=None, modality=None, allowed=None, logits=None, router="topk"):
    probs = torch.tensor(probs, dtype=torch.float32)
    ids = torch.tensor(ids)
    kept = torch.ones_like(ids, dtype=torch.bool) if kept is None else torch.tensor(kept)
    E = probs.shape[1]
    counts = torch.bincount(torch.where(kept, ids, E).reshape(-1), minlength=E + 1)[:E]
    return MoEAux(
        logits_TE=probs.log() if logits is None else torch.tensor(logits),
        probs_TE=probs,
        expert_ids_TK=ids,
        weights_TK=probs.gather(1, ids.clamp(min=0)),
        kept_TK=kept,
        counts_E=counts,
        modality_T=None if modality is None else torch.tensor(modality),
        allowed_ME=None if allowed is None else torch.tensor(allowed),
        num_experts=E,
        top_k=ids.shape[1],
        router=router,
    )


def test_load_balance_hand_example_top1():
    # 4 tokens, 2 experts. Routed: 3 to expert 0, 1 to expert 1 -> f = [0.75, 0.25].
    # Mean probs P = [(0.9+0.8+0.6+0.3)/4, (0.1+0.2+0.4+0.7)/4] = [0.65, 0.35].
    # loss = 2 * (0.75*0.65 + 0.25*0.35) = 2 * 0.575 = 1.15
    aux = make_aux([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]], [[0], [0], [0], [1]])
    torch.testing.assert_close(load_balance_loss(aux), torch.tensor(1.15))


def test_load_balance_top2_is_one_when_balanced():
    # Top-2 of 4, two tokens covering every expert once each: f = 1/4 each, P = 1/4 each.
    aux = make_aux([[0.25] * 4, [0.25] * 4], [[0, 1], [2, 3]])
    torch.testing.assert_close(load_balance_loss(aux), torch.tensor(1.0))
    # Collapse: both tokens on experts 0 and 1 with all the mass there: f = [.5,.5,0,0],
    # P = [.5,.5,0,0] -> 4 * (0.25 + 0.25) = 2.0 (the k>1 maximum is E/k).
    aux = make_aux([[0.5, 0.5, 0, 0]] * 2, [[0, 1], [0, 1]])
    torch.testing.assert_close(load_balance_loss(aux), torch.tensor(2.0))


def test_load_balance_per_modality_group_ignores_padding():
    # Image group {0,1}, text group {2,3}. Image tokens: both to expert 0 with p=[1,0,..]:
    # f=[1,0], P=[1,0] -> 2*1 = 2. Text token: expert 2 with p=[0,0,.5,.5]: f=[1,0], P=[.5,.5]
    # -> 2*0.5 = 1. Mean over the two groups = 1.5. The padding token changes nothing.
    allowed = [[True, True, False, False], [False, False, True, True]]
    aux = make_aux(
        [[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0.5, 0.5], [0.25] * 4],
        [[0], [0], [2], [3]],
        modality=[0, 0, 1, -1],
        allowed=allowed,
    )
    torch.testing.assert_close(load_balance_loss(aux), torch.tensor(1.5))


def test_z_loss_hand_example():
    logits = [[0.0, 0.0], [math.log(3.0), 0.0]]
    # logsumexp: log 2 and log 4.
    aux = make_aux([[0.5, 0.5], [0.75, 0.25]], [[0], [0]], logits=logits)
    expected = (math.log(2) ** 2 + math.log(4) ** 2) / 2
    torch.testing.assert_close(z_loss(aux), torch.tensor(expected))


def test_entropy_losses_hand_example_per_modality():
    # Image tokens: one-hot on different experts -> local 0; mean [.5,.5,0,0] -> global -log 2.
    # Text token: uniform over 4 -> local log 4; global -log 4.
    aux = make_aux([[1, 0, 0, 0], [0, 1, 0, 0], [0.25] * 4], [[0], [1], [2]], modality=[0, 0, 1])
    out = entropy_losses(aux)
    torch.testing.assert_close(out["local/image"], torch.tensor(0.0))
    torch.testing.assert_close(out["global/image"], torch.tensor(-math.log(2)))
    torch.testing.assert_close(out["local/text"], torch.tensor(math.log(4)))
    torch.testing.assert_close(out["global/text"], torch.tensor(-math.log(4)))
    thresholded = entropy_losses(aux, global_threshold=1.0)
    torch.testing.assert_close(thresholded["global/image"], torch.tensor(1.0 - math.log(2)))
    torch.testing.assert_close(thresholded["global/text"], torch.tensor(0.0))


def test_stats_hand_example():
    # 3 tokens, top-2 of 3 experts; token 2's second choice dropped; token 3 is text.
    aux = make_aux(
        [[0.5, 0.5, 0.0], [0.5, 0.25, 0.25], [1 / 3] * 3],
        [[0, 1], [0, 2], [2, 1]],
        kept=[[True, True], [True, False], [True, True]],
        modality=[0, 0, 1],
    )
    assert tokens_per_expert(aux).tolist() == [2, 2, 1]
    assert modality_expert_load(aux).tolist() == [[2, 1, 0], [0, 1, 1]]
    torch.testing.assert_close(drop_rate(aux), torch.tensor(1 / 6))
    h = (math.log(2) + (0.5 * math.log(2) + 0.5 * math.log(4)) + math.log(3)) / 3
    torch.testing.assert_close(router_entropy(aux), torch.tensor(h))
    assert dead_experts(torch.tensor([5, 0, 2]), threshold=1).tolist() == [False, True, False]
    torch.testing.assert_close(load_imbalance(torch.tensor([3, 1, 2])), torch.tensor(1.5))


def test_losses_are_differentiable_through_probs():
    from vlmoe.config import MoEConfig
    from vlmoe.moe import MoELayer

    layer = MoELayer(MoEConfig(dim=8, hidden_dim=4, num_experts=4, top_k=2))
    _, aux = layer(torch.randn(10, 8))
    total = load_balance_loss(aux) + z_loss(aux) + sum(entropy_losses(aux).values())
    total.backward()
    assert layer.router.gate.weight.grad.abs().sum() > 0


def test_local_entropy_of_a_top2_router_stops_at_two_experts():
    """For top-k the local term is max(0, H - log k): a token split evenly over its 2 experts
    (the most a top-2 token can use) costs nothing, like a one-hot one; more spread costs
    H - log 2. Top-1 keeps LIMoE's plain entropy; expert choice is not clamped."""
    probs = [[0.5, 0.5, 0, 0], [1, 0, 0, 0], [0.25] * 4]
    top2 = entropy_losses(make_aux(probs, [[0, 1], [0, 1], [2, 3]]))
    torch.testing.assert_close(top2["local/all"], torch.tensor(math.log(2) / 3))
    top1 = entropy_losses(make_aux(probs, [[0], [0], [2]]))
    torch.testing.assert_close(top1["local/all"], torch.tensor((math.log(2) + math.log(4)) / 3))
    chosen = entropy_losses(make_aux(probs, [[0, 1], [0, 1], [2, 3]], router="expert_choice"))
    torch.testing.assert_close(chosen["local/all"], top1["local/all"])


def test_load_balance_one_pool_fast_path_equals_the_pooled_sums():
    torch.manual_seed(0)
    probs = torch.randn(50, 8).softmax(-1)
    ids = probs.topk(2, -1).indices
    ids[3, 1] = -1  # an unused slot counts for nothing
    kept = (ids >= 0).tolist()
    aux = make_aux(probs.tolist(), ids.tolist(), kept=kept)
    one_modality = MoEAux(**{**aux.__dict__, "modality_T": torch.zeros(50, dtype=torch.long)})
    torch.testing.assert_close(load_balance_loss(aux), load_balance_loss(one_modality))
