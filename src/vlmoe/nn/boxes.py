"""Box operations shared by every detection head, loss and metric: format conversions, area,
pairwise IoU and generalized IoU (Rezatofighi et al. 2019, "Generalized Intersection over
Union"), and greedy non-maximum suppression (per class or class-agnostic).

Boxes are float tensors (..., 4). ``xyxy`` is ``[x0, y0, x1, y1]`` with x1/y1 exclusive (the
convention of `vlmoe.data.Sample`), ``cxcywh`` is ``[centre x, centre y, width, height]`` (DETR's
regression target), ``xywh`` is COCO's ``[x0, y0, width, height]``. Names carry the shapes:
N and M boxes, 4 coordinates.

`nms` is the fast path (vectorised IoU matrix, one pass over the sorted boxes on a boolean
mask); `nms_reference` is the obvious pure-Python twin the tests hold it to.
"""

from __future__ import annotations

import torch
from torch import Tensor


def xyxy_to_cxcywh(b_N4: Tensor) -> Tensor:
    x0, y0, x1, y1 = b_N4.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def cxcywh_to_xyxy(b_N4: Tensor) -> Tensor:
    cx, cy, w, h = b_N4.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def xyxy_to_xywh(b_N4: Tensor) -> Tensor:
    x0, y0, x1, y1 = b_N4.unbind(-1)
    return torch.stack([x0, y0, x1 - x0, y1 - y0], dim=-1)


def xywh_to_xyxy(b_N4: Tensor) -> Tensor:
    x0, y0, w, h = b_N4.unbind(-1)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=-1)


def box_area(b_N4: Tensor) -> Tensor:
    """Area of xyxy boxes (0 for inverted boxes): (..., 4) -> (...)."""
    return (b_N4[..., 2] - b_N4[..., 0]).clamp(min=0) * (b_N4[..., 3] - b_N4[..., 1]).clamp(min=0)


def check_boxes(b_N4: Tensor, what: str = "boxes") -> None:
    """Raise ValueError unless ``b_N4`` is (N, 4), finite, with x1 >= x0 and y1 >= y0."""
    if b_N4.ndim != 2 or b_N4.shape[-1] != 4:
        raise ValueError(f"{what}: expected shape (N, 4), got {tuple(b_N4.shape)}")
    if not torch.isfinite(b_N4).all():
        raise ValueError(f"{what}: non-finite coordinates")
    bad = (b_N4[:, 2] < b_N4[:, 0]) | (b_N4[:, 3] < b_N4[:, 1])
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"{what}[{i}]={b_N4[i].tolist()}: x1 < x0 or y1 < y0")


def _inter_union(a_N4: Tensor, b_M4: Tensor) -> tuple[Tensor, Tensor]:
    lt_NM2 = torch.maximum(a_N4[:, None, :2], b_M4[None, :, :2])
    rb_NM2 = torch.minimum(a_N4[:, None, 2:], b_M4[None, :, 2:])
    wh_NM2 = (rb_NM2 - lt_NM2).clamp(min=0)
    inter_NM = wh_NM2[..., 0] * wh_NM2[..., 1]
    union_NM = box_area(a_N4)[:, None] + box_area(b_M4)[None, :] - inter_NM
    return inter_NM, union_NM


def box_iou(a_N4: Tensor, b_M4: Tensor) -> Tensor:
    """Pairwise IoU of xyxy boxes: (N, 4), (M, 4) -> (N, M); 0 where the union is empty."""
    inter_NM, union_NM = _inter_union(a_N4, b_M4)
    return torch.where(union_NM > 0, inter_NM / union_NM.clamp(min=1e-12), 0.0)


def generalized_box_iou(a_N4: Tensor, b_M4: Tensor) -> Tensor:
    """Pairwise GIoU = IoU - (|C| - |A u B|) / |C|, C the smallest enclosing box: (N, M) in
    [-1, 1]. Degenerate boxes (zero area) are allowed; an empty enclosing box gives 0."""
    inter_NM, union_NM = _inter_union(a_N4, b_M4)
    iou_NM = torch.where(union_NM > 0, inter_NM / union_NM.clamp(min=1e-12), 0.0)
    lt_NM2 = torch.minimum(a_N4[:, None, :2], b_M4[None, :, :2])
    rb_NM2 = torch.maximum(a_N4[:, None, 2:], b_M4[None, :, 2:])
    wh_NM2 = (rb_NM2 - lt_NM2).clamp(min=0)
    hull_NM = wh_NM2[..., 0] * wh_NM2[..., 1]
    penalty_NM = torch.where(hull_NM > 0, (hull_NM - union_NM) / hull_NM.clamp(min=1e-12), 0.0)
    return iou_NM - penalty_NM


def elementwise_iou(a_N4: Tensor, b_N4: Tensor) -> Tensor:
    """IoU of matched pairs a[i], b[i]: (N, 4), (N, 4) -> (N,)."""
    wh = torch.minimum(a_N4[:, 2:], b_N4[:, 2:]) - torch.maximum(a_N4[:, :2], b_N4[:, :2])
    inter = wh.clamp(min=0).prod(-1)
    union = box_area(a_N4) + box_area(b_N4) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), 0.0)


def elementwise_giou(a_N4: Tensor, b_N4: Tensor) -> Tensor:
    """GIoU of matched pairs a[i], b[i]: (N, 4), (N, 4) -> (N,)."""
    lt = torch.maximum(a_N4[:, :2], b_N4[:, :2])
    rb = torch.minimum(a_N4[:, 2:], b_N4[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = box_area(a_N4) + box_area(b_N4) - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1e-12), 0.0)
    hull_wh = torch.maximum(a_N4[:, 2:], b_N4[:, 2:]) - torch.minimum(a_N4[:, :2], b_N4[:, :2])
    hull = hull_wh.clamp(min=0).prod(-1)
    return iou - torch.where(hull > 0, (hull - union) / hull.clamp(min=1e-12), 0.0)


def clip_boxes(b_N4: Tensor, height: float, width: float) -> Tensor:
    """Clip xyxy boxes to the image ``[0, width] x [0, height]``."""
    x = b_N4[..., 0::2].clamp(0, width)
    y = b_N4[..., 1::2].clamp(0, height)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def nms(boxes_N4: Tensor, scores_N: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS: indices of the kept boxes, by decreasing score.

    A box is dropped when its IoU with a higher-scoring kept box is > ``iou_threshold``.
    Ties in score keep the lower index first (a stable sort), as `nms_reference` does.
    """
    order_N = torch.sort(scores_N, descending=True, stable=True).indices
    iou_NN = box_iou(boxes_N4[order_N], boxes_N4[order_N])
    suppress_NN = iou_NN > iou_threshold
    alive = torch.ones(len(order_N), dtype=torch.bool)
    keep = []
    for i in range(len(order_N)):
        if alive[i]:
            keep.append(i)
            alive &= ~suppress_NN[i]
    return order_N[torch.tensor(keep, dtype=torch.long)]


def batched_nms(
    boxes_N4: Tensor, scores_N: Tensor, classes_N: Tensor, iou_threshold: float
) -> Tensor:
    """NMS within each class (boxes of different classes never suppress each other).

    Shifts each class's boxes into a disjoint region so one `nms` call does every class.
    """
    if boxes_N4.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    span = float(boxes_N4.max() - boxes_N4.min()) + 1.0
    shifted_N4 = boxes_N4 + (classes_N.to(boxes_N4.dtype) * span)[:, None]
    return nms(shifted_N4, scores_N, iou_threshold)


def nms_reference(boxes: list[list[float]], scores: list[float], iou_threshold: float) -> list[int]:
    """Pure-Python greedy NMS, the slow twin of `nms`."""

    def iou(a: list[float], b: list[float]) -> float:
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])  # noqa: E731
        union = area(a) + area(b) - inter
        return inter / union if union > 0 else 0.0

    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        if all(iou(boxes[i], boxes[k]) <= iou_threshold for k in keep):
            keep.append(i)
    return keep
