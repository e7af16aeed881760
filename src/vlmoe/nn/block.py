"""The pre-norm transformer block (Xiong et al. 2020): x + attn(norm(x)), then x + ffn(norm(x)).

Two other layouts exist for imported checkpoints: "post" (the original Transformer and BERT:
norm(x + attn(x)), then norm(x + ffn(x))) and "parallel" (GPT-J, Phi: one norm, attention and
FFN side by side, x + attn(norm(x)) + ffn(norm(x)); `norm2` is then unused and absent).

The feed-forward part is handed in: a dense `vlmoe.nn.mlp.MLP`, or a sparse MoE layer
(`vlmoe.moe.MoELayer`) — anything called as `ffn(x, modality=...) -> (y, aux)`. Keeping the
choice outside the block is what lets a dense model and its MoE twin differ only in config, and
keeps `vlmoe.nn` free of imports from `vlmoe.moe`. A dense block returns `None` as its aux.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor, nn

from vlmoe.nn.attention import Attention, LayerKVCache
from vlmoe.nn.mlp import MLP
from vlmoe.nn.norm import NormKind, make_norm

BlockLayout = Literal["pre", "post", "parallel"]


class Block(nn.Module):
    """One transformer block (pre-norm unless `layout` says otherwise) with a dense or MoE
    feed-forward layer."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn: nn.Module,
        *,
        head_dim: int | None = None,
        norm: NormKind = "layernorm",
        dropout: float = 0.0,
        num_kv_heads: int | None = None,
        qkv_bias: bool = False,
        proj_bias: bool = False,
        norm_eps: float = 1e-6,
        layout: BlockLayout = "pre",
    ) -> None:
        super().__init__()
        self.layout = layout
        self.norm1 = make_norm(norm, dim, norm_eps)
        self.attn = Attention(
            dim,
            num_heads,
            head_dim=head_dim,
            dropout=dropout,
            num_kv_heads=num_kv_heads,
            qkv_bias=qkv_bias,
            proj_bias=proj_bias,
        )
        self.norm2 = make_norm(norm, dim, norm_eps) if layout != "parallel" else None
        self.ffn = ffn
        self.drop = nn.Dropout(dropout)

    @property
    def is_moe(self) -> bool:
        return not isinstance(self.ffn, MLP)

    def forward(
        self,
        x_BLD: Tensor,
        modality_BL: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        causal: bool = False,
        rope: tuple[Tensor, Tensor] | None = None,
        cache: LayerKVCache | None = None,
    ) -> tuple[Tensor, Any]:
        """x (B, L, D) -> (x (B, L, D), MoEAux or None for a dense block)."""

        def attend(h_BLD: Tensor) -> Tensor:
            return self.drop(self.attn(h_BLD, mask=mask, causal=causal, rope=rope, cache=cache))

        if self.layout == "parallel":
            h_BLD = self.norm1(x_BLD)
            y_BLD, aux = self._ffn(h_BLD, modality_BL)
            return x_BLD + attend(h_BLD) + y_BLD, aux
        if self.layout == "post":
            x_BLD = self.norm1(x_BLD + attend(x_BLD))
            y_BLD, aux = self._ffn(x_BLD, modality_BL)
            return self.norm2(x_BLD + y_BLD), aux
        x_BLD = x_BLD + attend(self.norm1(x_BLD))
        y_BLD, aux = self._ffn(self.norm2(x_BLD), modality_BL)
        return x_BLD + y_BLD, aux

    def _ffn(self, h_BLD: Tensor, modality_BL: Tensor | None) -> tuple[Tensor, Any]:
        if self.is_moe:
            y_BLD, aux = self.ffn(h_BLD, modality=modality_BL)
        else:
            y_BLD, aux = self.ffn(h_BLD), None
        return self.drop(y_BLD), aux
