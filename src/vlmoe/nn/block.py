"""The pre-norm transformer block (Xiong et al. 2020): x + attn(norm(x)), then x + ffn(norm(x)).

The feed-forward part is handed in: a dense `vlmoe.nn.mlp.MLP`, or a sparse MoE layer
(`vlmoe.moe.MoELayer`) — anything called as `ffn(x, modality=...) -> (y, aux)`. Keeping the
choice outside the block is what lets a dense model and its MoE twin differ only in config, and
keeps `vlmoe.nn` free of imports from `vlmoe.moe`. A dense block returns `None` as its aux.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from vlmoe.nn.attention import Attention, LayerKVCache
from vlmoe.nn.mlp import MLP
from vlmoe.nn.norm import NormKind, make_norm


class Block(nn.Module):
    """One pre-norm transformer block with a dense or MoE feed-forward layer."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn: nn.Module,
        *,
        head_dim: int | None = None,
        norm: NormKind = "layernorm",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = make_norm(norm, dim)
        self.attn = Attention(dim, num_heads, head_dim=head_dim, dropout=dropout)
        self.norm2 = make_norm(norm, dim)
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
        x_BLD = x_BLD + self.drop(
            self.attn(self.norm1(x_BLD), mask=mask, causal=causal, rope=rope, cache=cache)
        )
        h_BLD = self.norm2(x_BLD)
        if self.is_moe:
            y_BLD, aux = self.ffn(h_BLD, modality=modality_BL)
        else:
            y_BLD, aux = self.ffn(h_BLD), None
        return x_BLD + self.drop(y_BLD), aux
