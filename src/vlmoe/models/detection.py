"""Object detection on the (MoE) ViT's patch tokens: two heads a user picks by config.

- ``head="patch"``: dense per-patch prediction on the patch grid, one level, as FCOS (Tian et
  al. 2019) and CenterNet (Zhou et al. 2019) do on feature maps. Each patch predicts a score per
  class (sigmoid, no background class; trained with Generalized Focal Loss's quality focal loss,
  Li et al. 2020, so the score estimates the box's IoU) and its box as distances (left, top,
  right, bottom) from the patch centre. Decoding keeps scores above a threshold and runs NMS per
  class. It converges like a classifier: every patch gets a target from the first step.
- ``head="set"``: DETR (Carion et al. 2020) set prediction with the fixes that make it train
  fast on small data: queries carry explicit anchor boxes refined layer by layer (DAB-DETR, Liu
  et al. 2022; Deformable DETR's iterative refinement), every decoder layer is supervised after
  its own Hungarian matching, and denoising queries (DN-DETR, Li et al. 2022) - noised copies of
  the ground-truth boxes and labels that must be reconstructed - give the decoder a matching-free
  signal from the first step. Decoding takes the top scores, no NMS.

Both heads read the ViT's final patch tokens; MoE lives in the backbone (`backbone.transformer.
moe`), so `vlmoe inspect` shows where object and background patches are routed as for any ViT.
Losses are in `vlmoe.models.detection_loss`. Boxes inside the model are normalized to [0, 1]
(``xyxy`` for outputs, ``cxcywh`` for anchors); `decode` turns them into pixels.

Shapes: B images, N patches, Q queries (dn queries first when present), C classes, D head width,
L decoder layers, M ground-truth boxes (padded per batch), G denoising groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlmoe.models.base import PretrainedModel
from vlmoe.models.config import DetectionConfig
from vlmoe.models.outputs import DenoisingPlan, DetectionOutput
from vlmoe.models.vit import ViT
from vlmoe.moe.layer import MoEAux
from vlmoe.nn.boxes import batched_nms, cxcywh_to_xyxy
from vlmoe.nn.embed import sincos_2d


@dataclass
class Targets:
    """Ground truth of one image: normalized xyxy ``boxes`` (M, 4) and class ``labels`` (M,)."""

    boxes: Tensor
    labels: Tensor


@dataclass
class Detections:
    """Detections of one image, in pixels: ``boxes`` (K, 4) xyxy, ``scores`` (K,),
    ``labels`` (K,) class ids, by decreasing score."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor


def targets_from_batch(batch: dict) -> list[Targets]:
    """Per-image `Targets` from a detection batch (``boxes`` (B, M, 4) normalized xyxy,
    ``box_labels`` (B, M), ``box_mask`` (B, M), as `vlmoe.tasks.detection` collates them);
    padding and unknown labels (-100) are left out."""
    keep_BM = batch["box_mask"] & (batch["box_labels"] >= 0)
    return [
        Targets(boxes=b_M4[k_M], labels=l_M[k_M])
        for b_M4, l_M, k_M in zip(batch["boxes"], batch["box_labels"], keep_BM)
    ]


def inverse_sigmoid(x: Tensor, eps: float = 1e-4) -> Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


def patch_centres(grid: tuple[int, int]) -> Tensor:
    """Normalized (x, y) centres of the patches, row-major: (N, 2)."""
    rows, cols = grid
    ys = (torch.arange(rows, dtype=torch.float32) + 0.5) / rows
    xs = (torch.arange(cols, dtype=torch.float32) + 0.5) / cols
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], dim=-1)


class PatchHead(nn.Module):
    """Per-patch class scores and (l, t, r, b) box distances, in units of one patch."""

    def __init__(self, cfg: DetectionConfig, in_dim: int, grid: tuple[int, int]) -> None:
        super().__init__()
        D = cfg.head_dim
        self.trunk = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Linear(in_dim, D), nn.GELU(), nn.Linear(D, D), nn.GELU()
        )
        self.cls = nn.Linear(D, cfg.num_classes)
        self.box = nn.Linear(D, 4)
        # Focal-loss prior (RetinaNet): start every score at 0.01 so the first steps are stable.
        nn.init.constant_(self.cls.bias, -math.log(99.0))
        nn.init.zeros_(self.box.weight)
        nn.init.constant_(self.box.bias, math.log(math.e - 1))  # softplus -> 1 patch each side
        self.register_buffer("centres_N2", patch_centres(grid), persistent=False)
        self.register_buffer(
            "patch_wh_2", torch.tensor([1 / grid[1], 1 / grid[0]]), persistent=False
        )

    def forward(self, x_BND: Tensor) -> tuple[Tensor, Tensor]:
        h_BND = self.trunk(x_BND)
        logits_BNC = self.cls(h_BND)
        ltrb_BN4 = F.softplus(self.box(h_BND)) * self.patch_wh_2.repeat(2)  # normalized
        c_N4 = self.centres_N2.repeat(1, 2)  # [cx, cy, cx, cy]
        boxes_BN4 = c_N4 + ltrb_BN4 * torch.tensor([-1.0, -1.0, 1.0, 1.0], device=x_BND.device)
        return logits_BNC, boxes_BN4


def box_sine_embed(b_BQ4: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Sine embedding of each of the 4 coordinates (in [0, 1]) with dim / 4 channels: (B, Q, D)."""
    n = dim // 4
    freqs = temperature ** (2 * (torch.arange(n // 2, device=b_BQ4.device) / n))  # (n/2,)
    x_BQ4f = b_BQ4[..., None] * 2 * math.pi / freqs  # (B, Q, 4, n/2)
    emb = torch.cat([x_BQ4f.sin(), x_BQ4f.cos()], dim=-1)  # (B, Q, 4, n)
    return emb.flatten(-2)


class DecoderLayer(nn.Module):
    """Pre-norm DETR decoder layer: query self-attention, cross-attention to the patches, MLP."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(
        self,
        q_BQD: Tensor,
        pos_BQD: Tensor,
        mem_BND: Tensor,
        mem_pos_BND: Tensor,
        attn_mask_QQ: Tensor | None,
    ) -> Tensor:
        h = self.norm1(q_BQD)
        q_BQD = q_BQD + self.self_attn(h + pos_BQD, h + pos_BQD, h, attn_mask=attn_mask_QQ)[0]
        h = self.norm2(q_BQD)
        q_BQD = q_BQD + self.cross_attn(h + pos_BQD, mem_BND + mem_pos_BND, mem_BND)[0]
        return q_BQD + self.mlp(self.norm3(q_BQD))


class SetHead(nn.Module):
    """DETR decoder with anchor-box queries, per-layer refinement and denoising queries."""

    def __init__(self, cfg: DetectionConfig, in_dim: int, grid: tuple[int, int]) -> None:
        super().__init__()
        D, Q, C = cfg.head_dim, cfg.num_queries, cfg.num_classes
        self.cfg = cfg
        self.memory = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, D))
        self.register_buffer("mem_pos_ND", sincos_2d(D, grid), persistent=False)
        self.query_content = nn.Parameter(torch.zeros(Q, D))
        # Anchors start spread over the image (a grid of centres), a patch and a half wide.
        side = math.ceil(math.sqrt(Q))
        cx = ((torch.arange(Q) % side) + 0.5) / side
        cy = ((torch.arange(Q) // side) + 0.5) / side
        wh = torch.full((Q,), 1.5 / max(grid))
        self.query_anchor = nn.Parameter(inverse_sigmoid(torch.stack([cx, cy, wh, wh], -1)))
        self.label_embed = nn.Embedding(C + 1, D)  # index C: padding slots of the dn queries
        self.ref_pos = nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.Linear(D, D))
        self.layers = nn.ModuleList(
            DecoderLayer(D, cfg.decoder_heads) for _ in range(cfg.decoder_layers)
        )
        self.out_norm = nn.LayerNorm(D)
        self.cls = nn.Linear(D, C)
        nn.init.constant_(self.cls.bias, -math.log(99.0))
        self.box = nn.ModuleList(
            nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.Linear(D, 4))
            for _ in range(cfg.decoder_layers)
        )
        for mlp in self.box:
            nn.init.zeros_(mlp[-1].weight)
            nn.init.zeros_(mlp[-1].bias)

    def denoising_queries(
        self, targets: list[Targets], generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, DenoisingPlan] | None:
        """Noised ground truth as (content (B, G*M, D), anchor logits (B, G*M, 4), plan)."""
        G, M = self.cfg.dn_groups, max((len(t.labels) for t in targets), default=0)
        if G == 0 or M == 0:
            return None
        device = self.query_content.device
        B, C = len(targets), self.cfg.num_classes
        boxes_BM4 = torch.tensor([[0.5, 0.5, 0.1, 0.1]], device=device).repeat(B, M, 1)
        labels_BM = torch.full((B, M), C, dtype=torch.long, device=device)
        index_BM = torch.full((B, M), -1, dtype=torch.long, device=device)
        for b, t in enumerate(targets):
            n = len(t.labels)
            x0, y0, x1, y1 = t.boxes.to(device).float().unbind(-1)
            boxes_BM4[b, :n] = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)
            labels_BM[b, :n] = t.labels.to(device)
            index_BM[b, :n] = torch.arange(n, device=device)
        boxes = boxes_BM4.repeat(1, G, 1)  # (B, G*M, 4)
        labels = labels_BM.repeat(1, G)
        lam = self.cfg.dn_box_noise

        def rand(*shape: int) -> Tensor:
            return torch.rand(*shape, generator=generator).to(device)

        wh = boxes[..., 2:]
        centre = boxes[..., :2] + (2 * rand(*wh.shape) - 1) * lam * wh / 2
        wh = wh * (1 + (2 * rand(*wh.shape) - 1) * lam)
        noisy = torch.cat([centre, wh.clamp(min=1e-3)], -1).clamp(0, 1)
        flip = (rand(*labels.shape) < self.cfg.dn_label_noise) & (labels < C)
        random_labels = (rand(*labels.shape) * C).long().clamp(max=C - 1)
        labels = torch.where(flip, random_labels, labels)
        plan = DenoisingPlan(gt_index=index_BM.repeat(1, G), num_groups=G)
        return self.label_embed(labels), inverse_sigmoid(noisy), plan

    @staticmethod
    def attention_mask(num_dn: int, num_groups: int, num_queries: int, device) -> Tensor:
        """(Q', Q') True = may not attend: matching queries do not see the denoising ones (they
        would see the answers), and denoising groups do not see each other."""
        total = num_dn + num_queries
        mask = torch.zeros(total, total, dtype=torch.bool, device=device)
        mask[num_dn:, :num_dn] = True
        per = num_dn // max(num_groups, 1)
        for g in range(num_groups):
            lo, hi = g * per, (g + 1) * per
            mask[lo:hi, :lo] = True
            mask[lo:hi, hi:num_dn] = True
        return mask

    def forward(
        self, x_BND: Tensor, targets: list[Targets] | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, DenoisingPlan | None]:
        """-> per-layer class logits (L, B, Q, C) and xyxy boxes (L, B, Q, 4) of the matching
        queries, the same for the denoising queries (or None) and their plan."""
        B = x_BND.shape[0]
        mem_BND = self.memory(x_BND)
        mem_pos = self.mem_pos_ND.to(mem_BND.dtype).expand(B, -1, -1)
        content = self.query_content.expand(B, -1, -1)
        anchor = self.query_anchor.expand(B, -1, -1)
        dn = self.denoising_queries(targets) if self.training and targets is not None else None
        num_dn, mask = 0, None
        if dn is not None:
            content = torch.cat([dn[0], content], 1)
            anchor = torch.cat([dn[1], anchor], 1)
            num_dn = dn[0].shape[1]
            mask = self.attention_mask(num_dn, dn[2].num_groups, self.cfg.num_queries, x_BND.device)
        q_BQD, ref_BQ4 = content, anchor.sigmoid()
        logits, boxes = [], []
        for layer, box_mlp in zip(self.layers, self.box):
            pos_BQD = self.ref_pos(box_sine_embed(ref_BQ4, q_BQD.shape[-1]))
            q_BQD = layer(q_BQD, pos_BQD, mem_BND, mem_pos, mask)
            h_BQD = self.out_norm(q_BQD)
            new_ref = (inverse_sigmoid(ref_BQ4) + box_mlp(h_BQD)).sigmoid()  # (B, Q, 4) cxcywh
            logits.append(self.cls(h_BQD))
            boxes.append(cxcywh_to_xyxy(new_ref))
            ref_BQ4 = new_ref.detach()  # Deformable DETR: no gradient through the references
        logits_LBQC, boxes_LBQ4 = torch.stack(logits), torch.stack(boxes)
        if dn is None:
            return logits_LBQC, boxes_LBQ4, None, None, None
        return (
            logits_LBQC[:, :, num_dn:],
            boxes_LBQ4[:, :, num_dn:],
            logits_LBQC[:, :, :num_dn],
            boxes_LBQ4[:, :, :num_dn],
            dn[2],
        )


class DetectionModel(PretrainedModel):
    architecture = "detection"
    config_class = DetectionConfig

    def __init__(self, config: DetectionConfig) -> None:
        super().__init__(config)
        self.backbone = ViT(config.backbone)
        grid, dim = self.backbone.grid_size, self.backbone.out_dim
        self.grid_size = grid
        self.head = (
            PatchHead(config, dim, grid) if config.head == "patch" else SetHead(config, dim, grid)
        )

    def forward_features(self, images_BCHW: Tensor) -> tuple[Tensor, list[MoEAux]]:
        """images (B, C, H, W) -> patch tokens (B, N, D), MoE auxes."""
        x_BSD, auxes = self.backbone.forward_features(images_BCHW)
        return x_BSD[:, self.backbone.num_prefix_tokens :], auxes

    def forward(self, images: Tensor, targets: list[Targets] | None = None) -> DetectionOutput:
        """Targets (training) only feed the set head's denoising queries."""
        x_BND, auxes = self.forward_features(images)
        B, N, _ = x_BND.shape
        layer_logits = layer_boxes = dn_logits = dn_boxes = dn_plan = None
        if isinstance(self.head, PatchHead):
            logits, boxes = self.head(x_BND)
        else:
            layer_logits, layer_boxes, dn_logits, dn_boxes, dn_plan = self.head(x_BND, targets)
            logits, boxes = layer_logits[-1], layer_boxes[-1]
        return DetectionOutput(
            class_logits=logits,
            boxes=boxes,
            layer_class_logits=layer_logits,
            layer_boxes=layer_boxes,
            dn_class_logits=dn_logits,
            dn_boxes=dn_boxes,
            dn_plan=dn_plan,
            features=x_BND,
            image_token_mask=torch.ones(B, N, dtype=torch.bool, device=x_BND.device),
            patch_grid=self.grid_size,
            moe_aux=auxes,
        )

    def decode(self, out: DetectionOutput, height: int, width: int) -> list[Detections]:
        """Detections in pixels of a (height, width) input from this model's output."""
        return decode(out, self.config, height, width)

    @torch.no_grad()
    def detect(self, images: Tensor) -> list[Detections]:
        """Detections in pixels of the (B, C, H, W) input, per image."""
        was_training = self.training
        self.eval()
        try:
            out = self(images)
        finally:
            self.train(was_training)
        return decode(out, self.config, images.shape[-2], images.shape[-1])


def decode(out: DetectionOutput, cfg: DetectionConfig, height: int, width: int) -> list[Detections]:
    """Scores and boxes -> per-image detections in pixels.

    Patch head: every (patch, class) with a score above `cfg.score_threshold`, NMS per class at
    `cfg.nms_iou`, at most `cfg.max_detections`. Set head: the `cfg.max_detections` best
    (query, class) pairs above the threshold, no NMS (a set prediction has no duplicates to
    remove).
    """
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    scores_BNC = out.class_logits.float().sigmoid().cpu()
    boxes_BN4 = out.boxes.float().cpu().clamp(0, 1) * scale
    C = scores_BNC.shape[-1]
    results = []
    for scores_NC, boxes_N4 in zip(scores_BNC, boxes_BN4):
        flat = scores_NC.flatten()
        k = min(flat.numel(), cfg.max_detections if cfg.head == "set" else 1000)
        top, idx = flat.topk(k)
        keep = top > cfg.score_threshold
        top, idx = top[keep], idx[keep]
        boxes, labels = boxes_N4[idx // C], idx % C
        if cfg.head == "patch":
            kept = batched_nms(boxes, top, labels, cfg.nms_iou)[: cfg.max_detections]
            top, boxes, labels = top[kept], boxes[kept], labels[kept]
        results.append(Detections(boxes=boxes, scores=top, labels=labels))
    return results
