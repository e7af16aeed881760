"""Model configs: one typed slice per module, mirroring the module tree.

`TransformerConfig` is the slice every model shares; its MoE part is `moe` (None = dense) plus
where to put it, `moe_every` (V-MoE: every other block, i.e. blocks 1, 3, 5, ...) or an explicit
`moe_layers` list. `moe.dim` is always the transformer's `dim` (filled in here), so a dense model
and its MoE twin differ only in `moe`, `moe_every` and `moe_layers`.

Equal active parameters: the MoE twin of a dense model whose FFN hidden width is h uses experts
of hidden width h / (top_k + num_shared_experts), so each token runs the same number of FFN
weights in both (see `vlmoe.models.presets`).

The fields after `checkpointing` (grouped-query heads, biases, norm epsilon, block layout, input
and final norms) default to vlmoe's own design; they exist so that pretrained checkpoints
(`vlmoe.models.hf`: Llama, Qwen2, CLIP, BERT, ...) compute exactly what they were trained to.

Expert choice and soft MoE mix tokens across a sequence, so a later token would change how an
earlier one is processed; a causal text transformer refuses them (`ConfigError`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from vlmoe.config import Config, ConfigError, MoEConfig, check


def _build_optional(data: Any, path: str, name: str, tp: type[Config]) -> Any:
    """Build an optional nested config (`X | None` field) before the generic coercion, so that
    its own validation message (e.g. "moe.top_k=5 must be <= ...") reaches the user instead of
    a generic "is not a valid X | None"."""
    if isinstance(data, dict) and isinstance(data.get(name), dict):
        data = {**data, name: tp.from_dict(data[name], _path=f"{path}.{name}" if path else name)}
    return data


@dataclass
class TransformerConfig(Config):
    """A stack of pre-norm blocks; each block's FFN is dense or MoE."""

    dim: int = 64
    num_layers: int = 2
    num_heads: int = 4
    head_dim: int | None = None  # default dim // num_heads
    hidden_dim: int = 192  # dense FFN hidden width
    activation: Literal["swiglu", "gelu", "gelu_erf", "quick_gelu"] = "swiglu"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    dropout: float = 0.0
    moe: MoEConfig | None = None  # None = dense; moe.dim is set to `dim`
    moe_every: int = 2  # MoE in blocks i with (i + 1) % moe_every == 0
    moe_layers: list[int] | None = None  # explicit block indices (overrides moe_every)
    checkpointing: Literal["none", "block"] = "none"  # activation checkpointing per block
    num_kv_heads: int | None = None  # grouped-query attention (None = num_heads)
    attn_bias: Literal["none", "qkv", "all"] = "none"  # biases on q/k/v ("qkv") and output too
    mlp_bias: bool = False  # biases in dense FFNs (MoE experts are bias-free)
    norm_eps: float = 1e-6
    layout: Literal["pre", "post", "parallel"] = "pre"  # see vlmoe.nn.block
    input_norm: bool = False  # a norm before the first block (CLIP's pre-LN, BERT's embedding LN)
    final_norm: bool = True  # the norm after the last block

    @classmethod
    def from_dict(cls, data: dict[str, Any], _path: str = "") -> TransformerConfig:
        return super().from_dict(_build_optional(data, _path, "moe", MoEConfig), _path)

    def __post_init__(self) -> None:
        for name in ("dim", "num_layers", "num_heads", "hidden_dim", "moe_every"):
            value = getattr(self, name)
            check(
                isinstance(value, int) and value >= 1,
                f"transformer.{name} must be >= 1, got {value!r}",
            )
        if self.head_dim is None:
            check(
                self.dim % self.num_heads == 0,
                f"transformer.dim={self.dim} must be divisible by "
                f"transformer.num_heads={self.num_heads} "
                "(or set transformer.head_dim)",
            )
        else:
            check(self.head_dim >= 1, f"transformer.head_dim must be >= 1, got {self.head_dim}")
        check(
            0.0 <= self.dropout < 1.0, f"transformer.dropout must be in [0, 1), got {self.dropout}"
        )
        if self.num_kv_heads is not None:
            check(
                isinstance(self.num_kv_heads, int)
                and self.num_kv_heads >= 1
                and self.num_heads % self.num_kv_heads == 0,
                f"transformer.num_kv_heads={self.num_kv_heads!r} must be >= 1 and divide "
                f"transformer.num_heads={self.num_heads}",
            )
        check(self.norm_eps > 0, f"transformer.norm_eps must be > 0, got {self.norm_eps}")
        if self.moe is not None:
            check(
                self.activation in ("swiglu", "gelu"),
                f"transformer.activation={self.activation!r} has no MoE expert kernel; "
                "MoE experts are 'swiglu' or 'gelu'",
            )
            check(
                not self.mlp_bias,
                "transformer.mlp_bias=True cannot be used with moe: MoE experts are bias-free",
            )
        if self.moe_layers is not None:
            bad = [i for i in self.moe_layers if not 0 <= i < self.num_layers]
            check(
                not bad,
                f"transformer.moe_layers={self.moe_layers} has indices outside "
                f"[0, {self.num_layers}): {bad}",
            )
            check(
                len(set(self.moe_layers)) == len(self.moe_layers),
                f"transformer.moe_layers={self.moe_layers} has duplicates",
            )
        if self.moe is not None and self.moe.dim != self.dim:
            # The transformer owns the width; the MoE slice follows it.
            self.moe = dataclasses.replace(self.moe, dim=self.dim)

    def moe_layer_ids(self) -> list[int]:
        """Indices of the blocks whose FFN is an MoE layer (empty for a dense model)."""
        if self.moe is None:
            return []
        if self.moe_layers is not None:
            return sorted(self.moe_layers)
        return [i for i in range(self.num_layers) if (i + 1) % self.moe_every == 0]

    @property
    def attn_head_dim(self) -> int:
        return self.head_dim or self.dim // self.num_heads


def _refuse_non_causal_routers(t: TransformerConfig, where: str) -> None:
    if t.moe is not None and t.moe.router in ("soft", "expert_choice"):
        raise ConfigError(
            f"{where}.moe.router={t.moe.router!r} cannot be used in a causal decoder: "
            f"{'soft MoE' if t.moe.router == 'soft' else 'expert choice'} mixes tokens across the "
            "sequence, so later tokens would change earlier outputs and cached generation would "
            "break; use router='topk'"
        )


def _check_image_fields(config: Any) -> None:
    """image_size, patch_size, in_channels, pos_embed, patch_embed, stem_channels of a model
    that embeds images."""
    for name in ("image_size", "patch_size", "in_channels", "stem_channels"):
        value = getattr(config, name)
        check(isinstance(value, int) and value >= 1, f"{name} must be >= 1, got {value!r}")
    choices = ("linear", "conv", "hybrid") + (("efficientnet-lite0",) * hasattr(config, "tower"))
    check(
        config.patch_embed in choices,
        f"patch_embed must be one of {choices}, got {config.patch_embed!r}",
    )
    if config.patch_embed == "efficientnet-lite0":
        _check_cnn_tower(config)
        return
    check(
        config.image_size % config.patch_size == 0,
        f"image_size={config.image_size} must be divisible by patch_size={config.patch_size}",
    )
    if config.patch_embed != "linear":
        p = config.patch_size
        check(
            p & (p - 1) == 0,
            f"patch_embed={config.patch_embed!r} needs patch_size a power of 2 (one stride-2 "
            f"conv per halving), got patch_size={p}",
        )
    if config.pos_embed == "sincos":
        check(
            config.transformer.dim % 4 == 0,
            f"pos_embed='sincos' needs transformer.dim % 4 == 0, got {config.transformer.dim}",
        )


def _check_cnn_tower(config: Any) -> None:
    """A CNN tower's stride (`patch_size`) is the end of one of its stages."""
    check(
        config.patch_size in (8, 16, 32),
        f"patch_embed='efficientnet-lite0' needs patch_size (its output stride) 8, 16 or 32, "
        f"got {config.patch_size}",
    )
    check(
        config.tower.input_size % config.patch_size == 0,
        f"tower.input_size={config.tower.input_size} must be divisible by "
        f"patch_size={config.patch_size}",
    )
    check(
        config.in_channels == 3, f"efficientnet-lite0 needs in_channels=3, got {config.in_channels}"
    )


def _check_text_fields(config: Any) -> None:
    """vocab_size and max_seq_len of a model that embeds token ids."""
    for name in ("vocab_size", "max_seq_len"):
        value = getattr(config, name)
        check(isinstance(value, int) and value >= 1, f"{name} must be >= 1, got {value!r}")


@dataclass
class ViTConfig(Config):
    """Vision transformer (V-MoE style when `transformer.moe` is set)."""

    image_size: int = 32
    patch_size: int = 8
    in_channels: int = 3
    pos_embed: Literal["learned", "sincos"] = "learned"
    # "linear": ViT's patch projection; "conv": a convolutional stem (vlmoe.nn.ConvStem);
    # "hybrid": their sum (vlmoe.nn.HybridEmbed)
    patch_embed: Literal["linear", "conv", "hybrid"] = "linear"
    stem_channels: int = 32  # width of the conv stem's first layer (conv, hybrid)
    pool: Literal["cls", "mean"] = "cls"
    num_classes: int = 10  # 0 = no classification head (e.g. a decoder's vision encoder)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)

    def __post_init__(self) -> None:
        _check_image_fields(self)
        check(self.num_classes >= 0, f"num_classes must be >= 0, got {self.num_classes}")


@dataclass
class TextConfig(Config):
    """Text transformer: a causal LM (generation) or a bidirectional encoder."""

    vocab_size: int = 256
    max_seq_len: int = 64
    attention: Literal["causal", "bidirectional"] = "causal"
    positions: Literal["rope", "learned"] = "rope"
    rope_theta: float = 10000.0
    rope_dim: int | None = None  # rotate only this many channels per head (Phi); None = all
    pool: Literal["mean", "last", "first"] = "mean"  # the `pooled` output (encoders)
    tie_embeddings: bool = False  # the LM head reuses the token embedding matrix
    lm_head_bias: bool = False
    transformer: TransformerConfig = field(default_factory=TransformerConfig)

    def __post_init__(self) -> None:
        _check_text_fields(self)
        check(self.rope_theta > 0, f"rope_theta must be > 0, got {self.rope_theta}")
        if self.rope_dim is not None:
            check(
                isinstance(self.rope_dim, int)
                and 2 <= self.rope_dim <= self.transformer.attn_head_dim
                and self.rope_dim % 2 == 0,
                f"rope_dim={self.rope_dim!r} must be even and in [2, head dim="
                f"{self.transformer.attn_head_dim}]",
            )
        check(
            not (self.tie_embeddings and self.lm_head_bias),
            "tie_embeddings=True cannot be combined with lm_head_bias=True",
        )
        if self.positions == "rope":
            check(
                self.transformer.attn_head_dim % 2 == 0,
                f"positions='rope' needs an even head dim, got {self.transformer.attn_head_dim}",
            )
        if self.attention == "causal":
            _refuse_non_causal_routers(self.transformer, "transformer")


@dataclass
class CNNTowerConfig(Config):
    """A pretrained CNN's feature map as image tokens (`patch_embed='efficientnet-lite0'`,
    `vlmoe.models.efficientnet.EfficientNetTokens`); `patch_size` is its output stride."""

    input_size: int = 128  # images are resized (bilinear) to this side before the CNN
    trainable: bool = False  # False: frozen weights, batch norm kept in eval mode

    def __post_init__(self) -> None:
        check(
            isinstance(self.input_size, int) and self.input_size >= 8,
            f"tower.input_size must be >= 8, got {self.input_size!r}",
        )


@dataclass
class ImageTextConfig(Config):
    """The inputs of a single-tower image-text model (fusion, contrastive): its image and
    text fields, checked here; subclasses add their heads and the `transformer` slice."""

    image_size: int = 32
    patch_size: int = 8
    in_channels: int = 3
    pos_embed: Literal["learned", "sincos"] = "learned"
    # as in ViTConfig, or "efficientnet-lite0": a CNN's feature map (`tower`; ImageNet weights
    # from `vlmoe.models.hf.compose_*(vision="efficientnet-lite0")`)
    patch_embed: Literal["linear", "conv", "hybrid", "efficientnet-lite0"] = "linear"
    stem_channels: int = 32
    tower: CNNTowerConfig = field(default_factory=CNNTowerConfig)
    vocab_size: int = 256
    max_seq_len: int = 32  # text tokens

    def __post_init__(self) -> None:
        _check_image_fields(self)
        _check_text_fields(self)


@dataclass
class FusionConfig(ImageTextConfig):
    """VL-MoE-style fusion encoder over [image patches ; text tokens], with task heads."""

    pool: Literal["mean", "cls"] = "mean"
    num_classes: int = 0  # image classification head (0 = none)
    num_answers: int = 0  # VQA as answer classification (0 = none)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.num_classes >= 0, f"num_classes must be >= 0, got {self.num_classes}")
        check(self.num_answers >= 0, f"num_answers must be >= 0, got {self.num_answers}")


@dataclass
class ContrastiveConfig(ImageTextConfig):
    """LIMoE-style contrastive model: one shared tower embeds images and texts."""

    embed_dim: int = 64  # joint embedding width
    logit_scale_init: float = 14.285714  # 1 / 0.07, as in CLIP
    logit_scale_max: float = 100.0
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    # A separate text encoder (CLIP-style two towers, e.g. a pretrained MiniLM); None = texts
    # share `transformer` with images (LIMoE).
    text_tower: TextConfig | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any], _path: str = "") -> ContrastiveConfig:
        return super().from_dict(_build_optional(data, _path, "text_tower", TextConfig), _path)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.text_tower is not None:
            t = self.text_tower
            check(
                t.attention == "bidirectional",
                f"text_tower.attention must be 'bidirectional', got {t.attention!r}",
            )
            check(
                t.vocab_size == self.vocab_size,
                f"vocab_size={self.vocab_size} must equal text_tower.vocab_size={t.vocab_size}",
            )
            check(
                self.max_seq_len <= t.max_seq_len,
                f"max_seq_len={self.max_seq_len} must be <= text_tower.max_seq_len={t.max_seq_len}",
            )
        check(self.embed_dim >= 1, f"embed_dim must be >= 1, got {self.embed_dim}")
        check(
            self.logit_scale_init > 0, f"logit_scale_init must be > 0, got {self.logit_scale_init}"
        )
        check(
            self.logit_scale_max >= self.logit_scale_init,
            f"logit_scale_max={self.logit_scale_max} must be >= "
            f"logit_scale_init={self.logit_scale_init}",
        )


@dataclass
class DecoderConfig(Config):
    """MoE-LLaVA-style decoder: vision encoder -> projector -> causal LM over [image ; text].

    `vision=None` means an external encoder is passed to the model (any module mapping images
    to (B, N, vision_dim) features); `vision_dim` then says its width.
    """

    vision: ViTConfig | None = field(default_factory=lambda: ViTConfig(num_classes=0))
    vision_dim: int | None = None  # only for an external encoder (vision=None)
    vision_feature: Literal["patch", "all"] = "patch"  # "patch" drops the ViT's class token
    projector: Literal["linear", "mlp"] = "mlp"  # "mlp": Linear-GELU-Linear (LLaVA-1.5)
    # None: image tokens go in front of the text. An id: input_ids hold that many `<image>`
    # placeholders (LLaVA; `vlmoe.data` GenerationCollate), replaced by the image tokens.
    image_token_id: int | None = None
    # "sincos": add the patch grid's fixed 2-D sine-cosine positions to the projected image
    # tokens, so the LM can read where a patch is (Pix2Seq / DETR add them to the features the
    # decoder attends to); needs a patch grid (vlmoe's ViT, or a square external grid).
    image_positions: Literal["none", "sincos"] = "none"
    text: TextConfig = field(default_factory=TextConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any], _path: str = "") -> DecoderConfig:
        return super().from_dict(_build_optional(data, _path, "vision", ViTConfig), _path)

    def __post_init__(self) -> None:
        check(
            self.text.attention == "causal",
            f"text.attention must be 'causal' in a decoder, got {self.text.attention!r}",
        )
        _refuse_non_causal_routers(self.text.transformer, "text.transformer")
        if self.image_token_id is not None:
            check(
                0 <= self.image_token_id < self.text.vocab_size,
                f"image_token_id={self.image_token_id} must be in [0, text.vocab_size="
                f"{self.text.vocab_size})",
            )
        if self.vision is None:
            check(
                self.vision_dim is not None and self.vision_dim >= 1,
                "vision_dim must be set (>= 1) when vision is null (external encoder), "
                f"got {self.vision_dim!r}",
            )
        else:
            check(
                self.vision_dim is None or self.vision_dim == self.vision.transformer.dim,
                f"vision_dim={self.vision_dim} must be null or equal vision.transformer.dim="
                f"{self.vision.transformer.dim}",
            )

    @property
    def vision_width(self) -> int:
        return self.vision.transformer.dim if self.vision is not None else self.vision_dim


@dataclass
class DetectionConfig(Config):
    """Object detector: a (MoE) ViT backbone and a detection head on its patch tokens
    (`vlmoe.models.detection`).

    `head="patch"`: dense per-patch prediction (class scores + box distances, FCOS/GFL style)
    decoded with NMS. `head="set"`: DETR-style object queries with Hungarian matching, anchor
    boxes refined layer by layer and denoising queries (DN-DETR) to speed up convergence.
    """

    num_classes: int = 24  # object classes (no background class)
    backbone: ViTConfig = field(
        default_factory=lambda: ViTConfig(num_classes=0, pool="mean", image_size=64)
    )
    head: Literal["patch", "set"] = "patch"
    head_dim: int = 128  # width of the head's layers
    # patch head
    center_radius: float = 1.5  # positives: patch centres within this many patches of a box centre
    # set head
    num_queries: int = 16
    decoder_layers: int = 3
    decoder_heads: int = 4
    dn_groups: int = 4  # denoising groups per image (0 = off)
    dn_box_noise: float = 0.4  # box noise scale (DN-DETR's lambda)
    dn_label_noise: float = 0.2  # probability of flipping a denoising query's label
    # losses (DINO's weights: focal class 2, L1 5, GIoU 2; the patch head uses the same)
    class_weight: float = 2.0
    l1_weight: float = 5.0
    giou_weight: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    # decoding
    score_threshold: float = 0.05
    nms_iou: float = 0.5
    max_detections: int = 100

    @property
    def image_size(self) -> int:
        return self.backbone.image_size

    def __post_init__(self) -> None:
        check(self.num_classes >= 1, f"num_classes must be >= 1, got {self.num_classes}")
        check(
            self.backbone.num_classes == 0,
            f"backbone.num_classes must be 0 (no classification head), got "
            f"{self.backbone.num_classes}",
        )
        check(self.head_dim >= 1, f"head_dim must be >= 1, got {self.head_dim}")
        check(self.center_radius > 0, f"center_radius must be > 0, got {self.center_radius}")
        for name in ("num_queries", "decoder_layers", "decoder_heads"):
            value = getattr(self, name)
            check(value >= 1, f"{name} must be >= 1, got {value}")
        if self.head == "set":
            check(
                self.head_dim % 8 == 0,
                f"head_dim={self.head_dim} must be a multiple of 8 for the set head "
                "(sine embedding of 4 box coordinates)",
            )
        check(
            self.head_dim % self.decoder_heads == 0,
            f"head_dim={self.head_dim} must be divisible by decoder_heads={self.decoder_heads}",
        )
        check(self.dn_groups >= 0, f"dn_groups must be >= 0, got {self.dn_groups}")
        check(
            0 <= self.dn_box_noise <= 1, f"dn_box_noise must be in [0, 1], got {self.dn_box_noise}"
        )
        check(
            0 <= self.dn_label_noise <= 1,
            f"dn_label_noise must be in [0, 1], got {self.dn_label_noise}",
        )
        check(0 < self.nms_iou <= 1, f"nms_iou must be in (0, 1], got {self.nms_iou}")
        check(
            0 <= self.score_threshold < 1,
            f"score_threshold must be in [0, 1), got {self.score_threshold}",
        )
        check(self.max_detections >= 1, f"max_detections must be >= 1, got {self.max_detections}")
