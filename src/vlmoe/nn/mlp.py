"""Dense feed-forward layers: SwiGLU (Shazeer 2020, as in LLaMA) and GELU (as in ViT).

GELU comes in three forms, named as the checkpoints that use them need: "gelu" (the tanh
approximation, SigLIP's `gelu_pytorch_tanh`), "gelu_erf" (the exact one, BERT and ViT) and
"quick_gelu" (x * sigmoid(1.702 x), CLIP). MoE experts support "swiglu" and "gelu".

Weights are bias-free by default so that a dense MLP and its upcycled experts hold exactly the
same parameters; `bias=True` is for imported checkpoints (CLIP, BERT, ...). `fc_in` packs the
gate and up projections of SwiGLU side by side (gate first), the same layout the stacked experts
use, so one matmul computes both.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Activation = Literal["swiglu", "gelu", "gelu_erf", "quick_gelu"]


def activate(h: Tensor, activation: Activation) -> Tensor:
    """Apply the MLP's nonlinearity to the output of `fc_in`: (..., I) -> (..., H).

    For SwiGLU, I = 2H and the first half is the gate: silu(gate) * up.
    """
    if activation == "swiglu":
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up
    if activation == "gelu":
        return F.gelu(h, approximate="tanh")
    if activation == "gelu_erf":
        return F.gelu(h)
    if activation == "quick_gelu":
        return h * torch.sigmoid(1.702 * h)
    raise ValueError(
        f"unknown activation {activation!r}; expected 'swiglu', 'gelu', 'gelu_erf' or 'quick_gelu'"
    )


def in_features_factor(activation: Activation) -> int:
    """How many hidden-sized projections `fc_in` packs: 2 for SwiGLU, 1 for GELU."""
    return 2 if activation == "swiglu" else 1


class MLP(nn.Module):
    """Position-wise feed-forward network: fc_out(act(fc_in(x)))."""

    def __init__(
        self, dim: int, hidden_dim: int, activation: Activation = "swiglu", bias: bool = False
    ) -> None:
        super().__init__()
        self.dim, self.hidden_dim, self.activation = dim, hidden_dim, activation
        self.fc_in = nn.Linear(dim, in_features_factor(activation) * hidden_dim, bias=bias)
        self.fc_out = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_out(activate(self.fc_in(x), self.activation))  # (..., D)
