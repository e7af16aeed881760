"""Box ops against hand-worked values, and the fast NMS against its pure-Python twin."""

import pytest
import torch

from vlmoe.nn.boxes import (
    batched_nms,
    box_area,
    box_iou,
    check_boxes,
    clip_boxes,
    cxcywh_to_xyxy,
    elementwise_giou,
    elementwise_iou,
    generalized_box_iou,
    nms,
    nms_reference,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_conversions_round_trip_and_values():
    b = t([0, 0, 4, 2], [1, 2, 3, 8])
    assert xyxy_to_cxcywh(b).tolist() == [[2, 1, 4, 2], [2, 5, 2, 6]]
    assert xyxy_to_xywh(b).tolist() == [[0, 0, 4, 2], [1, 2, 2, 6]]
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(b)), b)
    torch.testing.assert_close(xywh_to_xyxy(xyxy_to_xywh(b)), b)
    assert box_area(b).tolist() == [8, 12]
    assert box_area(t([3, 3, 1, 5])).tolist() == [0]  # inverted box has no area


def test_iou_hand_worked():
    # a = [0,0,2,2] (area 4), b = [1,1,3,3] (area 4): overlap 1x1, union 7.
    a, b = t([0, 0, 2, 2]), t([1, 1, 3, 3], [2, 2, 4, 4], [0, 0, 2, 2], [0, 0, 1, 1])
    iou = box_iou(a, b)
    torch.testing.assert_close(iou, t([1 / 7, 0.0, 1.0, 0.25]))
    torch.testing.assert_close(elementwise_iou(a.expand(4, 4), b), iou[0])
    assert box_iou(t([0, 0, 0, 0]), t([0, 0, 0, 0])).item() == 0.0  # empty union


def test_giou_hand_worked():
    # a=[0,0,2,2], b=[1,1,3,3]: IoU 1/7, hull [0,0,3,3] = 9, union 7 -> 1/7 - 2/9.
    # a, c=[3,0,4,1]: disjoint, hull [0,0,4,2] = 8, union 5 -> 0 - 3/8.
    a = t([0, 0, 2, 2])
    b = t([1, 1, 3, 3], [3, 0, 4, 1], [0, 0, 2, 2])
    g = generalized_box_iou(a, b)
    torch.testing.assert_close(g, t([1 / 7 - 2 / 9, -3 / 8, 1.0]))
    torch.testing.assert_close(elementwise_giou(a.expand(3, 4), b), g[0])
    # Far apart: GIoU tends to -1.
    assert generalized_box_iou(t([0, 0, 1, 1]), t([1000, 1000, 1001, 1001])).item() < -0.99


def test_giou_gradient_is_finite_for_degenerate_boxes():
    a = t([1, 1, 1, 1]).requires_grad_()
    g = elementwise_giou(a, t([1, 1, 1, 1]))
    g.sum().backward()
    assert torch.isfinite(a.grad).all()


def test_clip_and_check():
    c = clip_boxes(t([-2, 3, 10, 20]), height=8, width=6)
    assert c.tolist() == [[0, 3, 6, 8]]
    check_boxes(t([0, 0, 1, 1]))
    with pytest.raises(ValueError, match=r"boxes\[1\]=.*x1 < x0"):
        check_boxes(t([0, 0, 1, 1], [5, 0, 4, 1]))
    with pytest.raises(ValueError, match="shape"):
        check_boxes(torch.zeros(3))


def test_nms_hand_worked():
    boxes = t([0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95], dtype=torch.float64)
    # box 3 (0.95) suppresses box 0 (IoU 90/100) and box 1 (IoU 72/(90+100-72) = 0.61 > 0.5).
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms(boxes, scores, 0.95).tolist() == [3, 0, 1, 2]


def test_batched_nms_keeps_other_classes():
    boxes = t([0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10])
    scores = torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64)
    classes = torch.tensor([0, 1, 0])
    assert batched_nms(boxes, scores, classes, 0.5).tolist() == [0, 1]
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0), 0.5).numel() == 0


@pytest.mark.parametrize("seed", range(5))
def test_nms_matches_reference(seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(60, 2, generator=g, dtype=torch.float64) * 50
    wh = torch.rand(60, 2, generator=g, dtype=torch.float64) * 20 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(60, generator=g, dtype=torch.float64)
    for thr in (0.3, 0.5, 0.7):
        fast = nms(boxes, scores, thr).tolist()
        assert fast == nms_reference(boxes.tolist(), scores.tolist(), thr)
