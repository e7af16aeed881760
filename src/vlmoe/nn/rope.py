"""Rotary position embeddings (RoPE, Su et al. 2021) for text and decoder sequences.

Positions are given per token, (B, L), so left-padded batches and cached decoding use each
sequence's own positions. The rotate-half layout (first half of the head dim paired with the
second half) matches LLaMA and GPT-NeoX. Partial rotary embeddings (GPT-NeoX, Phi) rotate only
the first `rope_dim` channels of each head and pass the rest through.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RotaryEmbedding(nn.Module):
    """Computes (cos, sin) tables for given positions; `apply_rope` rotates q and k with them."""

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
        self.head_dim, self.theta = head_dim, theta

    def forward(self, positions_BL: Tensor) -> tuple[Tensor, Tensor]:
        """(B, L) int positions -> cos, sin of shape (B, 1, L, head_dim), fp32."""
        # Computed in fp32 on every call (a few flops) rather than kept as a buffer, which
        # `model.to(torch.bfloat16)` would round.
        exponent = torch.arange(0, self.head_dim, 2, device=positions_BL.device) / self.head_dim
        inv_freq = 1.0 / (self.theta ** exponent.float())
        angles = positions_BL.float()[..., None] * inv_freq  # (B, L, Dh/2)
        angles = torch.cat([angles, angles], dim=-1)  # (B, L, Dh)
        return angles.cos()[:, None], angles.sin()[:, None]


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x_BHLK: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate queries or keys (B, H, L, Dh) by their positions' angles; with tables narrower
    than Dh (partial rotary), only the first `cos.shape[-1]` channels."""
    rot = cos.shape[-1]
    if rot < x_BHLK.shape[-1]:
        return torch.cat([apply_rope(x_BHLK[..., :rot], cos, sin), x_BHLK[..., rot:]], dim=-1)
    out = x_BHLK.float() * cos + _rotate_half(x_BHLK.float()) * sin
    return out.to(x_BHLK.dtype)
