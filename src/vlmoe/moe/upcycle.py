"""Sparse upcycling (Komatsuzaki et al. 2023): a dense FFN becomes an MoE layer of E copies.

Every expert starts as an exact copy of the dense MLP and the router is fresh. With renormalized
top-k weights (they sum to 1) and no capacity drops, the upcycled layer computes
sum_k w_k * MLP(x) = MLP(x): it starts as the dense model (equal up to float rounding of the
weighted sum; bit-exact for k = 1). `noise_std` adds relative Gaussian noise to each copy to
break the symmetry between experts, as MoE-LLaVA-style recipes sometimes do.
"""

from __future__ import annotations

import torch

from vlmoe.config import ConfigError, MoEConfig
from vlmoe.moe.layer import MoELayer
from vlmoe.nn.mlp import MLP


def upcycle_mlp(
    mlp: MLP, cfg: MoEConfig, noise_std: float = 0.0, generator: torch.Generator | None = None
) -> MoELayer:
    """A new `MoELayer(cfg)` whose experts are copies of `mlp` (weights cloned, not shared)."""
    if cfg.dim != mlp.dim or cfg.hidden_dim != mlp.hidden_dim or cfg.activation != mlp.activation:
        raise ConfigError(
            f"cannot upcycle an MLP (dim={mlp.dim}, hidden_dim={mlp.hidden_dim}, "
            f"activation={mlp.activation!r}) into experts of dim={cfg.dim}, "
            f"hidden_dim={cfg.hidden_dim}, activation={cfg.activation!r}: they must match"
        )
    if cfg.num_shared_experts:
        raise ConfigError(
            "upcycling into shared experts is not supported: set moe.num_shared_experts=0"
        )
    layer = MoELayer(cfg).to(device=mlp.fc_in.weight.device, dtype=mlp.fc_in.weight.dtype)
    with torch.no_grad():
        w_in_DI = mlp.fc_in.weight.t()  # (D, I)
        w_out_HD = mlp.fc_out.weight.t()  # (H, D)
        layer.experts.w_in.copy_(w_in_DI.expand_as(layer.experts.w_in))
        layer.experts.w_out.copy_(w_out_HD.expand_as(layer.experts.w_out))
        if noise_std > 0:
            for w in (layer.experts.w_in, layer.experts.w_out):
                noise = torch.randn(w.shape, generator=generator, device=w.device, dtype=w.dtype)
                w.mul_(1 + noise_std * noise)
    return layer
