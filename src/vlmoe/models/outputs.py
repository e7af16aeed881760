"""The output dataclass of each model. Every field is always present, whatever the options;
a head the config leaves out gives None. `moe_aux` holds one `MoEAux` per MoE layer run, in
order (empty for a dense model); losses and routing stats are computed from it outside the model.

Routing plots: `image_token_mask` marks which positions of the sequence the MoE layers saw are
image patches, row-major over `patch_grid` (rows, cols); `modality` is the id each token carried
(0 image, 1 text, -1 padding). An `MoEAux`'s tokens are that sequence flattened, (B * S).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from vlmoe.moe.layer import MoEAux


@dataclass
class ViTOutput:
    logits: Tensor | None  # (B, num_classes); None when num_classes = 0
    pooled: Tensor  # (B, D)
    features: Tensor  # (B, S, D) final-normed tokens, class token first when pool = "cls"
    modality: Tensor  # (B, S) all 0
    image_token_mask: Tensor  # (B, S) True at patch tokens
    patch_grid: tuple[int, int]
    moe_aux: list[MoEAux] = field(default_factory=list)


@dataclass
class TextOutput:
    logits: Tensor | None  # (B, L, vocab) for a causal LM; None for an encoder
    hidden_states: Tensor  # (B, L, D)
    pooled: Tensor  # (B, D) per TextConfig.pool over real tokens
    modality: Tensor  # (B, L) 1, or -1 at padding
    moe_aux: list[MoEAux] = field(default_factory=list)


@dataclass
class FusionOutput:
    hidden_states: Tensor  # (B, S, D) over [cls? ; image patches ; text tokens]
    pooled: Tensor  # (B, D)
    class_logits: Tensor | None  # (B, num_classes)
    vqa_logits: Tensor | None  # (B, num_answers)
    itm_logits: Tensor  # (B, 2): [no match, match]
    modality: Tensor  # (B, S)
    image_token_mask: Tensor  # (B, S)
    patch_grid: tuple[int, int]
    moe_aux: list[MoEAux] = field(default_factory=list)


@dataclass
class ContrastiveOutput:
    """Images and texts go through the shared tower in two passes; `moe_aux` is the image
    pass's auxes followed by the text pass's (also given apart as `image_moe_aux` and
    `text_moe_aux`). `image_token_mask` refers to the image pass's sequence."""

    image_embeds: Tensor | None  # (B_i, embed_dim), L2-normalized
    text_embeds: Tensor | None  # (B_t, embed_dim), L2-normalized
    logit_scale: Tensor  # () exp of the learned log-temperature, clamped
    logits_per_image: Tensor | None  # (B_i, B_t) = logit_scale * image @ text.T
    logits_per_text: Tensor | None  # (B_t, B_i)
    image_token_mask: Tensor | None  # (B_i, S_img)
    patch_grid: tuple[int, int]
    moe_aux: list[MoEAux] = field(default_factory=list)
    image_moe_aux: list[MoEAux] = field(default_factory=list)
    text_moe_aux: list[MoEAux] = field(default_factory=list)


@dataclass
class DecoderOutput:
    """`logits` are aligned with `input_ids` (predict token t+1 at position t): the text
    positions when image tokens are prepended, every position with `<image>` placeholders.
    `moe_aux` is the vision encoder's auxes followed by the language model's."""

    logits: Tensor  # (B, L, vocab)
    hidden_states: Tensor  # (B, S, D) over this call's sequence (image and text tokens)
    modality: Tensor  # (B, S)
    image_token_mask: Tensor  # (B, S)
    num_image_tokens: int  # image tokens in this call's sequence (0 in cached decode steps)
    patch_grid: tuple[int, int] | None  # None for an external encoder of unknown layout
    moe_aux: list[MoEAux] = field(default_factory=list)
    vision_moe_aux: list[MoEAux] = field(default_factory=list)
    lm_moe_aux: list[MoEAux] = field(default_factory=list)


@dataclass
class DenoisingPlan:
    """Which ground-truth box each denoising query reconstructs: ``gt_index`` (B, G * M), -1 at
    padding slots (images with fewer than M boxes)."""

    gt_index: Tensor
    num_groups: int


@dataclass
class DetectionOutput:
    """Every field is present whatever the head; what a head does not make is None/empty."""

    class_logits: Tensor  # (B, N or Q, C) final predictions (matching queries only)
    boxes: Tensor  # (B, N or Q, 4) normalized xyxy
    layer_class_logits: Tensor | None  # (L, B, Q, C) every decoder layer, last = class_logits
    layer_boxes: Tensor | None  # (L, B, Q, 4)
    dn_class_logits: Tensor | None  # (L, B, G * M, C) denoising queries, training only
    dn_boxes: Tensor | None  # (L, B, G * M, 4)
    dn_plan: DenoisingPlan | None
    features: Tensor  # (B, N, D_backbone) patch tokens
    image_token_mask: Tensor  # (B, N) all True (no class token in a detector's backbone)
    patch_grid: tuple[int, int]
    moe_aux: list[MoEAux] = field(default_factory=list)
