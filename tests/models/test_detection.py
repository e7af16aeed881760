"""Detection heads: shapes, assignment, matching against brute force, losses that learn."""

import pytest
import torch

from vlmoe.models.detection import DetectionModel, SetHead, Targets, decode, targets_from_batch
from vlmoe.models.detection_loss import (
    assign_patches,
    detection_loss,
    hungarian_match,
    hungarian_match_reference,
    match_cost,
    sigmoid_focal_loss,
)
from vlmoe.models.registry import create_model, preset_config

PRESETS = ["det-debug", "det-debug-moe", "det-debug-set", "det-debug-set-moe"]


def _targets():
    return [
        Targets(torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.5, 0.5, 0.9, 0.8]]), torch.tensor([3, 5])),
        Targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)),
    ]


@pytest.mark.parametrize("name", PRESETS)
def test_forward_backward_and_decode(name):
    torch.manual_seed(0)
    model = create_model(name)
    cfg = model.config
    S = cfg.backbone.image_size
    out = model(torch.randn(2, 3, S, S), _targets())
    N = cfg.num_queries if cfg.head == "set" else model.grid_size[0] * model.grid_size[1]
    assert out.class_logits.shape == (2, N, cfg.num_classes)
    assert out.boxes.shape == (2, N, 4)
    assert (out.boxes[..., 2:] >= out.boxes[..., :2]).all()
    assert len(out.moe_aux) == (1 if name.endswith("moe") else 0)
    if cfg.head == "set":
        assert out.dn_class_logits.shape[2] == cfg.dn_groups * 2  # G groups x M=2 boxes
    loss, parts = detection_loss(out, _targets(), cfg)
    loss.backward()
    assert torch.isfinite(loss) and "loss/giou" in parts
    assert all(p.grad is not None for n, p in model.named_parameters() if "label_embed" not in n)
    dets = model.detect(torch.randn(2, 3, S, S))
    assert len(dets) == 2 and dets[0].boxes.shape[1] == 4


def test_moe_twin_matches_dense_active_parameters():
    dense = create_model("det-small").num_parameters()
    moe = create_model("det-small-moe").num_parameters()
    assert abs(moe[1] - dense[1]) / dense[1] < 0.01 and moe[0] > dense[0]


def test_assign_patches_hand_worked():
    # 4x4 grid: patch centres at 0.125, 0.375, 0.625, 0.875.
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.3, 0.3, 0.45, 0.45], [0.9, 0.9, 0.95, 0.95]])
    a = assign_patches(boxes, (4, 4), center_radius=1.5).view(4, 4)
    # Box 0 holds centres (0,0), (0,1), (1,0), (1,1); box 1 (smaller) takes (1,1) whose centre
    # 0.375 is inside it; box 2 holds no centre but gets the patch of its centre, (3, 3).
    expected = torch.full((4, 4), -1)
    expected[0, 0] = expected[0, 1] = expected[1, 0] = 0
    expected[1, 1] = 1
    expected[3, 3] = 2
    assert torch.equal(a, expected)
    assert (assign_patches(torch.zeros(0, 4), (4, 4), 1.5) == -1).all()


@pytest.mark.parametrize("seed", range(4))
def test_hungarian_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(5, 3, generator=g)
    q, m = hungarian_match(cost)
    qr, mr = hungarian_match_reference(cost)
    assert cost[q, m].sum().item() == pytest.approx(cost[qr, mr].sum().item())
    assert len(set(q.tolist())) == 3


def test_match_cost_prefers_the_right_query():
    cfg = preset_config("det-debug-set")
    gt = torch.tensor([[0.1, 0.1, 0.3, 0.3]])
    boxes = torch.tensor([[0.6, 0.6, 0.9, 0.9], [0.1, 0.1, 0.3, 0.3]])
    logits = torch.full((2, cfg.num_classes), -4.0)
    cost = match_cost(logits, boxes, torch.tensor([2]), gt, cfg)
    assert hungarian_match(cost)[0].tolist() == [1]


def test_focal_loss_hand_worked():
    # p = 0.5 at a positive: ce = log 2, (1 - p_t)^2 = 1/4, alpha 0.25 -> log(2) / 16.
    loss = sigmoid_focal_loss(torch.zeros(1), torch.ones(1), alpha=0.25, gamma=2.0)
    assert loss.item() == pytest.approx(0.6931472 / 16)


def test_denoising_attention_mask():
    m = SetHead.attention_mask(num_dn=4, num_groups=2, num_queries=3, device="cpu")
    assert m[4:, :4].all() and not m[4:, 4:].any()  # matching queries never see dn queries
    assert m[0:2, 2:4].all() and m[2:4, 0:2].all()  # groups are apart
    assert not m[0:2, 0:2].any() and not m[:4, 4:].any()  # dn queries see own group + matching


def test_targets_from_batch_drops_padding_and_unknown():
    batch = {
        "boxes": torch.tensor([[[0, 0, 0.5, 0.5], [0.1, 0.1, 0.2, 0.2]]]),
        "box_labels": torch.tensor([[4, -100]]),
        "box_mask": torch.tensor([[True, True]]),
    }
    (t,) = targets_from_batch(batch)
    assert t.labels.tolist() == [4] and t.boxes.shape == (1, 4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["det-debug", "det-debug-set"])
def test_overfits_one_batch(name):
    """Both heads fit two fixed images (the losses and decoding agree with each other)."""
    torch.manual_seed(0)
    model = create_model(name, dn_groups=2)
    S = model.config.backbone.image_size
    images = torch.randn(2, 3, S, S)
    targets = [
        Targets(torch.tensor([[0.0, 0.0, 0.5, 0.5]]), torch.tensor([1])),
        Targets(torch.tensor([[0.5, 0.25, 1.0, 0.75]]), torch.tensor([7])),
    ]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss, _ = detection_loss(model(images, targets), targets, model.config)
        opt.zero_grad()
        loss.backward()
        opt.step()
    dets = model.detect(images)
    for d, t in zip(dets, targets):
        assert d.labels[0].item() == t.labels[0].item()
        torch.testing.assert_close(d.boxes[0] / S, t.boxes[0], atol=0.08, rtol=0)


def test_decode_set_head_takes_top_scores_without_nms():
    cfg = preset_config("det-debug-set", max_detections=2)
    model = DetectionModel(cfg)
    out = model(torch.zeros(1, 3, 16, 16))
    out.class_logits = torch.full_like(out.class_logits, -9.0)
    out.class_logits[0, 0, 3] = 5.0
    out.class_logits[0, 1, 3] = 4.0
    out.boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5]]).expand_as(out.boxes).clone()
    (d,) = decode(out, cfg, 16, 16)
    assert d.labels.tolist() == [3, 3]  # duplicates stay: a set head is not NMS'd
    assert d.boxes[0].tolist() == [0.0, 0.0, 8.0, 8.0]


def test_config_errors_name_the_field():
    from vlmoe.config import ConfigError

    with pytest.raises(ConfigError, match="head_dim=12 must be a multiple of 8"):
        preset_config("det-debug-set", head_dim=12, decoder_heads=2)
    with pytest.raises(ConfigError, match="backbone.num_classes must be 0"):
        preset_config("det-debug", **{"backbone.num_classes": 3})
    with pytest.raises(ConfigError, match="nms_iou"):
        preset_config("det-debug", nms_iou=0.0)
