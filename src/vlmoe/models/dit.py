"""Diffusion transformer (DiT, Peebles & Xie 2023) with adaLN-zero conditioning and sparse MoE
feed-forward layers, for class- and caption-conditioned image generation.

Legend: B batch, C image channels, H/W pixels, N patch tokens, P = patch_size**2 * C values per
patch, D model dim, L caption tokens, F timestep frequency features.

- Patches: a stride-p convolution embeds the noisy image as N tokens (row-major over the grid)
  plus fixed 2-D sin-cos positions; `unpatchify` folds the (B, N, P) output back to pixels.
- Conditioning vector c (B, D) = timestep embedding + class embedding (+ the pooled caption).
  Each block maps SiLU(c) to shift, scale and gate of its attention and FFN branches; the gates
  start at zero (adaLN-zero), so every block starts as the identity.
- Captions go through vlmoe's text transformer (`vlmoe.models.text`, a bidirectional encoder);
  `text_conditioning="pooled"` adds its mean-pooled output to c (adaLN), `"cross_attention"`
  lets the patches attend to its tokens in every block (PixArt-alpha, Chen et al. 2023).
- Feed-forward layers are dense or `vlmoe.moe.MoELayer` by the same `TransformerConfig` as
  every other vlmoe model: shared + routed top-k experts is the DiT-MoE recipe (Fei et al. 2024),
  `router="expert_choice"` the EC-DiT one (Sun et al. 2024). Expert choice picks tokens over
  the whole batch, so a sample's output depends on the rest of its batch (as in EC-DiT).
- Classifier-free guidance (Ho & Salimans 2022) needs an unconditional model: `drop_B` (or a
  label of -1) replaces the class by a learned null class and the caption by a learned null.

The model predicts the rectified-flow velocity; the loss and the samplers are in
`vlmoe.models.flow`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlmoe.config import Config, check
from vlmoe.models.base import PretrainedModel
from vlmoe.models.config import TextConfig, TransformerConfig, _build_optional
from vlmoe.models.text import TextTransformer
from vlmoe.models.transformer import build_ffn
from vlmoe.moe.layer import MoEAux, MoELayer
from vlmoe.nn.attention import Attention
from vlmoe.nn.embed import FixedPositions, PatchEmbed, check_images


@dataclass
class DiTConfig(Config):
    """A DiT over `image_size` images; `transformer` holds widths and the MoE slice.

    `transformer.norm` is not used: DiT blocks normalize with affine-free LayerNorm whose shift
    and scale come from the conditioning (adaLN).
    """

    image_size: int = 28
    patch_size: int = 4
    in_channels: int = 1
    num_classes: int = 10  # 0 = no class conditioning
    text: TextConfig | None = None  # caption encoder; None = no caption conditioning
    text_conditioning: Literal["pooled", "cross_attention"] = "pooled"
    freq_dim: int = 256  # sinusoidal timestep features
    transformer: TransformerConfig = field(default_factory=TransformerConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any], _path: str = "") -> DiTConfig:
        return super().from_dict(_build_optional(data, _path, "text", TextConfig), _path)

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "in_channels", "freq_dim"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 1, f"{name} must be >= 1, got {value!r}")
        check(
            self.image_size % self.patch_size == 0,
            f"image_size={self.image_size} must be divisible by patch_size={self.patch_size}",
        )
        check(self.freq_dim % 2 == 0, f"freq_dim must be even, got {self.freq_dim}")
        check(self.num_classes >= 0, f"num_classes must be >= 0, got {self.num_classes}")
        check(
            self.transformer.dim % 4 == 0,
            f"transformer.dim must be divisible by 4 (2-D sin-cos positions), "
            f"got {self.transformer.dim}",
        )
        if self.text is not None:
            check(
                self.text.attention == "bidirectional",
                f"text.attention must be 'bidirectional' (a caption encoder), "
                f"got {self.text.attention!r}",
            )
        moe = self.transformer.moe
        if moe is not None:
            check(
                moe.expert_groups == "none" and moe.router != "soft",
                "transformer.moe: a DiT routes image patches in one pool with router 'topk' or "
                f"'expert_choice', got router={moe.router!r}, expert_groups={moe.expert_groups!r}",
            )

    @property
    def grid_size(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side

    @property
    def patch_values(self) -> int:
        return self.patch_size**2 * self.in_channels


@dataclass
class DiTOutput:
    velocity: Tensor  # (B, C, H, W) predicted velocity (noise - data)
    patch_grid: tuple[int, int]
    # One MoEAux per MoE layer run, in module order: caption encoder first, then the blocks.
    # Each block aux covers the (B * N) patch tokens, row-major over `patch_grid`.
    moe_aux: list[MoEAux] = field(default_factory=list)
    num_text_aux: int = 0

    @property
    def block_aux(self) -> list[MoEAux]:
        """The MoE auxes of the DiT blocks only (over image patches)."""
        return self.moe_aux[self.num_text_aux :]


def patchify(images_BCHW: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), patches row-major, values (p_row, p_col, C) within."""
    B, C, H, W = images_BCHW.shape
    p = patch_size
    x = images_BCHW.reshape(B, C, H // p, p, W // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(x_BNP: Tensor, patch_size: int, channels: int, grid: tuple[int, int]) -> Tensor:
    """Inverse of `patchify`: (B, N, p*p*C) -> (B, C, H, W)."""
    B = x_BNP.shape[0]
    p, (rows, cols) = patch_size, grid
    x = x_BNP.reshape(B, rows, cols, p, p, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(B, channels, rows * p, cols * p)


def timestep_features(t_B: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features (B, dim) of times t in [0, 1] (scaled by 1000, as DiT's integer
    steps, so the frequencies resolve small differences in t)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t_B.device) / half
    )
    angles = 1000.0 * t_B.float()[:, None] * freqs[None]  # (B, dim/2)
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def modulate(x_BND: Tensor, shift_B1D: Tensor, scale_B1D: Tensor) -> Tensor:
    return x_BND * (1 + scale_B1D) + shift_B1D


def _affine_free_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


class CrossAttention(nn.Module):
    """Patches (queries) attend to caption tokens (keys/values); `mask_BL` True = real token."""

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        inner = num_heads * self.head_dim
        self.q = nn.Linear(dim, inner, bias=False)
        self.kv = nn.Linear(dim, 2 * inner, bias=False)
        self.proj = nn.Linear(inner, dim, bias=False)

    def forward(self, x_BND: Tensor, context_BLD: Tensor, mask_BL: Tensor) -> Tensor:
        B, N, _ = x_BND.shape
        L = context_BLD.shape[1]
        q = self.q(x_BND).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        kv = self.kv(context_BLD).view(B, L, 2, self.num_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, Dh)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_BL[:, None, None, :])
        return self.proj(out.transpose(1, 2).reshape(B, N, -1))  # (B, N, D)


class DiTBlock(nn.Module):
    """adaLN-zero block: x + gate * attn(mod(norm(x))) [+ cross-attn], x + gate * ffn(mod(...))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn: nn.Module,
        *,
        head_dim: int | None = None,
        cross_attention: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = _affine_free_norm(dim)
        self.attn = Attention(dim, num_heads, head_dim=head_dim)
        self.norm_cross = nn.LayerNorm(dim, eps=1e-6) if cross_attention else None
        self.cross = CrossAttention(dim, num_heads, head_dim) if cross_attention else None
        self.norm2 = _affine_free_norm(dim)
        self.ffn = ffn
        self.ada = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    @property
    def is_moe(self) -> bool:
        return isinstance(self.ffn, MoELayer)

    def forward(
        self,
        x_BND: Tensor,
        c_BD: Tensor,
        context_BLD: Tensor | None = None,
        context_mask_BL: Tensor | None = None,
    ) -> tuple[Tensor, MoEAux | None]:
        mods = self.ada(F.silu(c_BD))[:, None].chunk(6, dim=-1)  # 6 x (B, 1, D)
        shift1, scale1, gate1, shift2, scale2, gate2 = mods
        x_BND = x_BND + gate1 * self.attn(modulate(self.norm1(x_BND), shift1, scale1))
        if self.cross is not None:
            x_BND = x_BND + self.cross(self.norm_cross(x_BND), context_BLD, context_mask_BL)
        h_BND = modulate(self.norm2(x_BND), shift2, scale2)
        if self.is_moe:
            y_BND, aux = self.ffn(h_BND)
        else:
            y_BND, aux = self.ffn(h_BND), None
        return x_BND + gate2 * y_BND, aux


class DiT(PretrainedModel):
    architecture = "dit"
    config_class = DiTConfig

    def __init__(self, config: DiTConfig) -> None:
        super().__init__(config)
        t = config.transformer
        D = t.dim
        self.grid_size = config.grid_size
        self.text = None
        self.null_text = None
        if config.text is not None:
            self.text = TextTransformer(config.text)
            self.text_proj = nn.Linear(config.text.transformer.dim, D)
            self.null_text = nn.Parameter(torch.zeros(D))
        self.patch = PatchEmbed(config.image_size, config.patch_size, config.in_channels, D)
        self.pos = FixedPositions(self.grid_size, D)
        self.register_buffer(
            "patch_ids", torch.arange(self.grid_size[0] * self.grid_size[1]), persistent=False
        )
        self.time_mlp = nn.Sequential(nn.Linear(config.freq_dim, D), nn.SiLU(), nn.Linear(D, D))
        # Class ids 0..num_classes-1, plus the null class (index num_classes) for guidance.
        self.class_embed = nn.Embedding(config.num_classes + 1, D) if config.num_classes else None
        cross = config.text is not None and config.text_conditioning == "cross_attention"
        self.blocks = nn.ModuleList(
            DiTBlock(D, t.num_heads, build_ffn(t, i), head_dim=t.head_dim, cross_attention=cross)
            for i in range(t.num_layers)
        )
        self.final_norm = _affine_free_norm(D)
        self.final_ada = nn.Linear(D, 2 * D)
        self.out = nn.Linear(D, config.patch_values)
        self._init_weights()

    def _init_weights(self) -> None:
        # DiT: Xavier-uniform patch projection, and every adaLN and the output layer zero, so
        # the untrained model predicts zero velocity and each block is the identity. Unlike
        # DiT's N(0, 0.02), the class table is N(0, 1) and the timestep MLP keeps PyTorch's
        # init: DiT's small init is made for 400k-step runs; in a CPU budget of a few hundred
        # steps it leaves the condition c ~50x weaker and the samples barely follow the class
        # (MNIST: 20% judge accuracy after 800 steps, guidance 2; with this init 27% after
        # 400 steps without guidance, 65% with guidance 3).
        # Attention, FFN and experts keep vlmoe's own init.
        w = self.patch.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch.proj.bias)
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.weight, std=1.0)
        for module in (self.final_ada, self.out):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)

    def num_moe_blocks(self) -> int:
        return sum(block.is_moe for block in self.blocks)

    def condition(
        self,
        t_B: Tensor,
        labels_B: Tensor | None,
        input_ids_BL: Tensor | None,
        attention_mask_BL: Tensor | None,
        drop_B: Tensor | None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None, list[MoEAux]]:
        """(c (B, D), caption tokens (B, L+1, D) or None, their mask or None, text MoE auxes)."""
        B = t_B.shape[0]
        device = t_B.device
        drop_B = torch.zeros(B, dtype=torch.bool, device=device) if drop_B is None else drop_B
        c_BD = self.time_mlp(timestep_features(t_B, self.config.freq_dim).to(self.out.weight))
        if self.class_embed is not None:
            if labels_B is None:
                raise ValueError(
                    f"this DiT is class-conditioned (num_classes={self.config.num_classes}); "
                    "pass labels (B,) (-1 = unconditional)"
                )
            _check_labels(labels_B, B, self.config.num_classes)
            null = torch.full_like(labels_B, self.config.num_classes)
            ids_B = torch.where(drop_B | (labels_B < 0), null, labels_B)
            c_BD = c_BD + self.class_embed(ids_B)
        context_BLD = context_mask_BL = None
        text_aux: list[MoEAux] = []
        if self.text is not None:
            if input_ids_BL is None:
                raise ValueError("this DiT is caption-conditioned; pass input_ids (B, L)")
            out = self.text(input_ids_BL, attention_mask_BL)
            text_aux = out.moe_aux
            null_BD = self.null_text.expand(B, -1)
            if self.config.text_conditioning == "pooled":
                pooled_BD = torch.where(drop_B[:, None], null_BD, self.text_proj(out.pooled))
                c_BD = c_BD + pooled_BD
            else:
                tokens_BLD = self.text_proj(out.hidden_states)
                valid_BL = torch.ones_like(input_ids_BL, dtype=torch.bool)
                if attention_mask_BL is not None:
                    valid_BL = attention_mask_BL.bool()
                valid_BL = valid_BL & ~drop_B[:, None]
                # A learned null token is always present: dropped captions attend only to it,
                # and no query row is ever fully masked.
                context_BLD = torch.cat([null_BD[:, None], tokens_BLD], dim=1)
                context_mask_BL = torch.cat([valid_BL.new_ones(B, 1), valid_BL], dim=1)
        return c_BD, context_BLD, context_mask_BL, text_aux

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        labels: Tensor | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        drop: Tensor | None = None,
    ) -> DiTOutput:
        """Noisy images x_t (B, C, H, W) at times t (B,) in [0, 1] (1 = pure noise) -> velocity.

        `labels` (B,) class ids (-1 = none), `input_ids`/`attention_mask` (B, L) captions,
        `drop` (B,) bool: use the null condition (classifier-free guidance) where True.
        """
        cfg = self.config
        check_images(x, cfg.image_size, cfg.in_channels)
        B = x.shape[0]
        if t.dim() != 1 or t.shape[0] != B:
            raise ValueError(f"t must have shape ({B},), got {tuple(t.shape)}")
        c_BD, context_BLD, context_mask_BL, auxes = self.condition(
            t, labels, input_ids, attention_mask, drop
        )
        num_text_aux = len(auxes)
        x_BND = self.patch(x) + self.pos(self.patch_ids)  # (B, N, D)
        for block in self.blocks:
            x_BND, aux = block(x_BND, c_BD, context_BLD, context_mask_BL)
            if aux is not None:
                auxes.append(aux)
        shift_B1D, scale_B1D = self.final_ada(F.silu(c_BD))[:, None].chunk(2, dim=-1)
        x_BNP = self.out(modulate(self.final_norm(x_BND), shift_B1D, scale_B1D))  # (B, N, P)
        velocity = unpatchify(x_BNP, cfg.patch_size, cfg.in_channels, self.grid_size)
        return DiTOutput(velocity.float(), self.grid_size, auxes, num_text_aux)


def _check_labels(labels_B: Tensor, batch: int, num_classes: int) -> None:
    if labels_B.shape != (batch,) or labels_B.is_floating_point():
        raise ValueError(
            f"labels must be integer class ids of shape ({batch},), got "
            f"{labels_B.dtype} {tuple(labels_B.shape)}"
        )
    if labels_B.numel() and int(labels_B.max()) >= num_classes:
        raise ValueError(
            f"label {int(labels_B.max())} is out of range for num_classes={num_classes}"
        )
