"""Stacked expert weights and the backends that run every expert on its own slice of tokens.

Legend: N rows in the dispatched buffer (sorted by expert), D model dim, H expert hidden dim,
I = 2H for SwiGLU (gate and up packed, gate first) or H for GELU, E experts.

`Experts(x_ND, counts_E) -> y_ND`: rows [off_e, off_e + counts_E[e]) belong to expert e, where
off_e is the running sum of counts. Rows past sum(counts_E) (tokens dropped by capacity) come
back as zeros. The `loop` backend is the obviously correct reference that fast backends are
tested against.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from vlmoe.nn.mlp import Activation, activate, in_features_factor

Backend = Literal["auto", "loop", "grouped_mm", "bmm"]


def experts_loop(x_ND: Tensor, counts_E: Tensor, w_in_EDI: Tensor, w_out_EHD: Tensor,
                 activation: Activation) -> Tensor:
    """Reference: a Python loop over experts, each on its contiguous slice."""
    y_ND = x_ND.new_zeros(x_ND.shape[0], w_out_EHD.shape[-1])
    start = 0
    for e, n in enumerate(counts_E.tolist()):
        if n:
            h = activate(x_ND[start : start + n] @ w_in_EDI[e], activation)  # (n, H)
            y_ND[start : start + n] = h @ w_out_EHD[e]  # (n, D)
        start += n
    return y_ND


class Experts(nn.Module):
    """E feed-forward experts with stacked weights `w_in` (E, D, I) and `w_out` (E, H, D)."""

    def __init__(self, num_experts: int, dim: int, hidden_dim: int,
                 activation: Activation = "swiglu", backend: Backend = "auto") -> None:
        super().__init__()
        self.num_experts, self.dim, self.hidden_dim = num_experts, dim, hidden_dim
        self.activation, self.backend = activation, backend
        inner = in_features_factor(activation) * hidden_dim
        self.w_in = nn.Parameter(torch.empty(num_experts, dim, inner))
        self.w_out = nn.Parameter(torch.empty(num_experts, hidden_dim, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The same distribution nn.Linear uses, so an expert starts like a dense MLP would.
        nn.init.uniform_(self.w_in, -1 / math.sqrt(self.dim), 1 / math.sqrt(self.dim))
        bound = 1 / math.sqrt(self.hidden_dim)
        nn.init.uniform_(self.w_out, -bound, bound)

    def forward(self, x_ND: Tensor, counts_E: Tensor) -> Tensor:
        return experts_loop(x_ND, counts_E, self.w_in, self.w_out, self.activation)
