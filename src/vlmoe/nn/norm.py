"""Normalization layers: LayerNorm (Ba et al. 2016, as in ViT) and RMSNorm (Zhang & Sennrich
2019, as in LLaMA), chosen by name so that a config can pick one."""

from __future__ import annotations

from typing import Literal

from torch import nn

NormKind = Literal["layernorm", "rmsnorm"]


def make_norm(kind: NormKind, dim: int, eps: float = 1e-6) -> nn.Module:
    """A normalization layer over the last dimension of size `dim`."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}; expected 'layernorm' or 'rmsnorm'")
