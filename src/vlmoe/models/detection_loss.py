"""Losses of the two detection heads in `vlmoe.models.detection`, pure functions of a
`DetectionOutput` and the ground truth.

- Patch head: FCOS-style assignment (Tian et al. 2019) with centre sampling - a patch is a
  positive of a box when its centre lies inside the box and within ``center_radius`` patches of
  the box centre; the patch holding the box centre is always a positive, so no box goes
  unassigned; a patch claimed by several boxes takes the smallest (FCOS). Scores are trained
  with the quality focal loss of Generalized Focal Loss (Li et al. 2020): the target of a
  positive is the IoU of its predicted box with its ground truth, so scores rank boxes by
  quality, which is what COCO AP at high IoU rewards. Boxes get GIoU + L1 losses.
- Set head: DETR's Hungarian matching (Carion et al. 2020) with
  `scipy.optimize.linear_sum_assignment` on focal class cost + L1 + GIoU (the weights of DINO,
  Zhang et al. 2022), sigmoid focal loss (Lin et al. 2017) on classes, L1 + GIoU on matched
  boxes, applied to every decoder layer; denoising queries (DN-DETR) are scored against the
  box they were made from, without matching.

Every loss is normalized by the number of ground-truth boxes in the batch (at least 1).
"""

from __future__ import annotations

from itertools import permutations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from vlmoe.models.config import DetectionConfig
from vlmoe.models.detection import DetectionOutput, Targets, patch_centres
from vlmoe.nn.boxes import (
    elementwise_giou,
    elementwise_iou,
    generalized_box_iou,
    xyxy_to_cxcywh,
)


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Summed focal loss (RetinaNet) of sigmoid logits against 0/1 targets of the same shape."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss.sum()


def quality_focal_loss(logits: Tensor, quality: Tensor, beta: float = 2.0) -> Tensor:
    """Summed quality focal loss (GFL): BCE against soft targets in [0, 1], scaled by
    |target - sigmoid(logit)|^beta."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, quality, reduction="none")
    return (ce * (quality - p).abs().pow(beta)).sum()


# ----------------------------------------------------------------------------- patch head


def assign_patches(boxes_M4: Tensor, grid: tuple[int, int], center_radius: float) -> Tensor:
    """Index of the ground-truth box each patch learns (-1 = background): (N,).

    Boxes are normalized xyxy. See the module docstring for the rule.
    """
    centres_N2 = patch_centres(grid).to(boxes_M4.device)
    N, M = centres_N2.shape[0], boxes_M4.shape[0]
    if M == 0:
        return torch.full((N,), -1, dtype=torch.long, device=boxes_M4.device)
    cx, cy = centres_N2[:, 0:1], centres_N2[:, 1:2]  # (N, 1)
    x0, y0, x1, y1 = (boxes_M4[:, i][None] for i in range(4))  # (1, M)
    inside_NM = (cx > x0) & (cx < x1) & (cy > y0) & (cy < y1)
    rx, ry = center_radius / grid[1], center_radius / grid[0]
    near_NM = ((cx - (x0 + x1) / 2).abs() < rx) & ((cy - (y0 + y1) / 2).abs() < ry)
    cand_NM = inside_NM & near_NM
    # The patch holding each box's centre (clamped into the grid) is always a candidate.
    col = (((x0 + x1) / 2) * grid[1]).long().clamp(0, grid[1] - 1)
    row = (((y0 + y1) / 2) * grid[0]).long().clamp(0, grid[0] - 1)
    cand_NM[(row * grid[1] + col)[0], torch.arange(M, device=boxes_M4.device)] = True
    area_M = ((x1 - x0) * (y1 - y0))[0]
    cost_NM = torch.where(cand_NM, area_M[None].expand(N, M), torch.inf)
    best_cost, best = cost_NM.min(dim=1)
    return torch.where(torch.isfinite(best_cost), best, -1)


def patch_loss(
    out: DetectionOutput, targets: list[Targets], cfg: DetectionConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """Quality focal + GIoU + L1 loss of the patch head, per positive patch: (total, parts)."""
    logits_BNC, boxes_BN4 = out.class_logits.float(), out.boxes.float()
    device = boxes_BN4.device
    quality_BNC = torch.zeros_like(logits_BNC)
    pred, gt = [], []
    for b, t in enumerate(targets):
        gt_M4, labels_M = t.boxes.to(device).float(), t.labels.to(device)
        assigned_N = assign_patches(gt_M4, out.patch_grid, cfg.center_radius)
        pos_P = (assigned_N >= 0).nonzero().squeeze(1)
        if len(pos_P) == 0:
            continue
        gt_P4, pred_P4 = gt_M4[assigned_N[pos_P]], boxes_BN4[b, pos_P]
        quality_BNC[b, pos_P, labels_M[assigned_N[pos_P]]] = elementwise_iou(
            pred_P4.detach(), gt_P4
        )
        pred.append(pred_P4)
        gt.append(gt_P4)
    num_pos = max(1, sum(len(p) for p in pred))
    cls = quality_focal_loss(logits_BNC, quality_BNC) / num_pos
    if pred:
        pred_P4, gt_P4 = torch.cat(pred), torch.cat(gt)
        giou = (1 - elementwise_giou(pred_P4, gt_P4)).sum() / num_pos
        l1 = F.l1_loss(pred_P4, gt_P4, reduction="sum") / num_pos
    else:
        giou = l1 = logits_BNC.sum() * 0
    total = cfg.class_weight * cls + cfg.giou_weight * giou + cfg.l1_weight * l1
    return total, {"loss/cls": cls.detach(), "loss/giou": giou.detach(), "loss/l1": l1.detach()}


# ----------------------------------------------------------------------------- set head


def match_cost(
    logits_QC: Tensor, boxes_Q4: Tensor, labels_M: Tensor, gt_M4: Tensor, cfg: DetectionConfig
) -> Tensor:
    """DETR matching cost (Q, M): focal class cost + L1 on cxcywh - GIoU, weighted by cfg."""
    p_QM = logits_QC.float().sigmoid()[:, labels_M]
    a, g = cfg.focal_alpha, cfg.focal_gamma
    pos = a * (1 - p_QM) ** g * -(p_QM + 1e-8).log()
    neg = (1 - a) * p_QM**g * -(1 - p_QM + 1e-8).log()
    l1_QM = torch.cdist(xyxy_to_cxcywh(boxes_Q4.float()), xyxy_to_cxcywh(gt_M4.float()), p=1)
    giou_QM = generalized_box_iou(boxes_Q4.float(), gt_M4.float())
    return cfg.class_weight * (pos - neg) + cfg.l1_weight * l1_QM - cfg.giou_weight * giou_QM


def hungarian_match(cost_QM: Tensor) -> tuple[Tensor, Tensor]:
    """Minimum-cost one-to-one matching (scipy): (query ids, gt ids), sorted by query."""
    q, m = linear_sum_assignment(cost_QM.detach().cpu().numpy())
    return torch.as_tensor(q, dtype=torch.long), torch.as_tensor(m, dtype=torch.long)


def hungarian_match_reference(cost_QM: Tensor) -> tuple[Tensor, Tensor]:
    """Brute force over every assignment (tiny problems only): the slow twin of
    `hungarian_match`, returning the same minimum total cost."""
    cost = cost_QM.detach().cpu().numpy().astype(np.float64)
    Q, M = cost.shape
    best, best_q = np.inf, None
    for qs in permutations(range(Q), M):
        total = cost[list(qs), range(M)].sum()
        if total < best:
            best, best_q = total, qs
    pairs = sorted(zip(best_q, range(M)))
    return (
        torch.tensor([p[0] for p in pairs], dtype=torch.long),
        torch.tensor([p[1] for p in pairs], dtype=torch.long),
    )


def _set_terms(
    logits_BQC: Tensor,
    boxes_BQ4: Tensor,
    matches: list[tuple[Tensor, Tensor]],
    targets: list[Targets],
    cfg: DetectionConfig,
    num_boxes: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Focal class loss over every query, L1 + GIoU over the matched ones."""
    device = logits_BQC.device
    onehot_BQC = torch.zeros_like(logits_BQC, dtype=torch.float32)
    pred, gt = [], []
    for b, ((q, m), t) in enumerate(zip(matches, targets)):
        q, m = q.to(device), m.to(device)
        onehot_BQC[b, q, t.labels.to(device)[m]] = 1.0
        pred.append(boxes_BQ4[b, q].float())
        gt.append(t.boxes.to(device).float()[m])
    cls = sigmoid_focal_loss(logits_BQC.float(), onehot_BQC, cfg.focal_alpha, cfg.focal_gamma)
    pred_P4, gt_P4 = torch.cat(pred), torch.cat(gt)
    l1 = F.l1_loss(xyxy_to_cxcywh(pred_P4), xyxy_to_cxcywh(gt_P4), reduction="sum")
    giou = (1 - elementwise_giou(pred_P4, gt_P4)).sum()
    return cls / num_boxes, l1 / num_boxes, giou / num_boxes


def set_loss(
    out: DetectionOutput, targets: list[Targets], cfg: DetectionConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """DETR loss summed over decoder layers, plus the denoising queries' loss: (total, parts)."""
    if out.layer_class_logits is None or out.layer_boxes is None:
        raise ValueError("set_loss needs the set head's per-layer outputs (config head='set')")
    num_boxes = max(1, sum(len(t.labels) for t in targets))
    parts: dict[str, Tensor] = {}
    total = out.class_logits.sum() * 0
    for layer, (logits_BQC, boxes_BQ4) in enumerate(zip(out.layer_class_logits, out.layer_boxes)):
        matches = [
            hungarian_match(match_cost(logits_BQC[b], boxes_BQ4[b], t.labels, t.boxes, cfg))
            for b, t in enumerate(targets)
        ]
        cls, l1, giou = _set_terms(logits_BQC, boxes_BQ4, matches, targets, cfg, num_boxes)
        total = total + cfg.class_weight * cls + cfg.l1_weight * l1 + cfg.giou_weight * giou
        if layer == len(out.layer_class_logits) - 1:
            parts.update(
                {"loss/cls": cls.detach(), "loss/l1": l1.detach(), "loss/giou": giou.detach()}
            )
    if out.dn_class_logits is not None and out.dn_boxes is not None and out.dn_plan is not None:
        gt_index_BK = out.dn_plan.gt_index
        matches = []
        for b in range(len(targets)):
            k = (gt_index_BK[b] >= 0).nonzero().squeeze(1)
            matches.append((k.cpu(), gt_index_BK[b, k].cpu()))
        dn_boxes = out.dn_plan.num_groups * num_boxes
        dn_total = total * 0
        for logits_BKC, boxes_BK4 in zip(out.dn_class_logits, out.dn_boxes):
            cls, l1, giou = _set_terms(logits_BKC, boxes_BK4, matches, targets, cfg, dn_boxes)
            dn_total = (
                dn_total + cfg.class_weight * cls + cfg.l1_weight * l1 + cfg.giou_weight * giou
            )
        total = total + dn_total
        parts["loss/dn"] = dn_total.detach()
    return total, parts


def detection_loss(
    out: DetectionOutput, targets: list[Targets], cfg: DetectionConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss of whichever head `cfg.head` names."""
    return patch_loss(out, targets, cfg) if cfg.head == "patch" else set_loss(out, targets, cfg)
