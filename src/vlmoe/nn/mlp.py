"""Dense feed-forward layers: SwiGLU (Shazeer 2020, as in LLaMA) and GELU (as in ViT).

Weights are bias-free so that a dense MLP and its upcycled experts hold exactly the same
parameters. `fc_in` packs the gate and up projections of SwiGLU side by side (gate first), the
same layout the stacked experts use, so one matmul computes both.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

Activation = Literal["swiglu", "gelu"]


def activate(h: Tensor, activation: Activation) -> Tensor:
    """Apply the MLP's nonlinearity to the output of `fc_in`: (..., I) -> (..., H).

    For SwiGLU, I = 2H and the first half is the gate: silu(gate) * up.
    """
    if activation == "swiglu":
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up
    if activation == "gelu":
        return F.gelu(h, approximate="tanh")
    raise ValueError(f"unknown activation {activation!r}; expected 'swiglu' or 'gelu'")


def in_features_factor(activation: Activation) -> int:
    """How many hidden-sized projections `fc_in` packs: 2 for SwiGLU, 1 for GELU."""
    return 2 if activation == "swiglu" else 1


class MLP(nn.Module):
    """Position-wise feed-forward network: fc_out(act(fc_in(x)))."""

    def __init__(self, dim: int, hidden_dim: int, activation: Activation = "swiglu") -> None:
        super().__init__()
        self.dim, self.hidden_dim, self.activation = dim, hidden_dim, activation
        self.fc_in = nn.Linear(dim, in_features_factor(activation) * hidden_dim, bias=False)
        self.fc_out = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_out(activate(self.fc_in(x), self.activation))  # (..., D)
