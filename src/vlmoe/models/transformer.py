"""The transformer stack shared by every vlmoe model: pre-norm blocks, dense or MoE per block.

Which blocks are MoE comes from `TransformerConfig.moe_layer_ids()` (V-MoE, Riquelme et al.
2021: every other block by default), so a dense model and its MoE twin are the same code with a
different config. The stack returns the final-normed hidden states and one `MoEAux` per MoE
block, in block order; a dense stack returns an empty list.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vlmoe.models.config import TransformerConfig
from vlmoe.moe.layer import MoEAux, MoELayer
from vlmoe.nn.attention import KVCache
from vlmoe.nn.block import Block
from vlmoe.nn.mlp import MLP
from vlmoe.nn.norm import make_norm


def build_ffn(cfg: TransformerConfig, index: int) -> nn.Module:
    """Block `index`'s feed-forward layer: an MoELayer where the config asks, else a dense MLP."""
    if cfg.moe is not None and index in cfg.moe_layer_ids():
        return MoELayer(cfg.moe)
    return MLP(cfg.dim, cfg.hidden_dim, cfg.activation, bias=cfg.mlp_bias)


class Transformer(nn.Module):
    """Blocks + final norm: (B, L, D) -> (B, L, D), list[MoEAux]."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(
            Block(
                cfg.dim,
                cfg.num_heads,
                build_ffn(cfg, i),
                head_dim=cfg.head_dim,
                norm=cfg.norm,
                dropout=cfg.dropout,
                num_kv_heads=cfg.num_kv_heads,
                qkv_bias=cfg.attn_bias != "none",
                proj_bias=cfg.attn_bias == "all",
                norm_eps=cfg.norm_eps,
                layout=cfg.layout,
            )
            for i in range(cfg.num_layers)
        )
        if cfg.input_norm:  # absent otherwise, so that existing checkpoints keep their keys
            self.input_norm = make_norm(cfg.norm, cfg.dim, cfg.norm_eps)
        self.norm = make_norm(cfg.norm, cfg.dim, cfg.norm_eps) if cfg.final_norm else nn.Identity()

    def forward(
        self,
        x_BLD: Tensor,
        modality_BL: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        causal: bool = False,
        rope: tuple[Tensor, Tensor] | None = None,
        cache: KVCache | None = None,
    ) -> tuple[Tensor, list[MoEAux]]:
        """Run every block. `mask` / `causal` / `rope` as in `vlmoe.nn.attention.Attention`;
        `modality_BL` (0 image, 1 text, -1 padding) goes to every MoE layer."""
        auxes: list[MoEAux] = []
        if self.cfg.input_norm:
            x_BLD = self.input_norm(x_BLD)
        use_ckpt = self.cfg.checkpointing == "block" and self.training and cache is None
        for i, block in enumerate(self.blocks):
            layer_cache = cache.layer(i) if cache is not None else None
            if use_ckpt and torch.is_grad_enabled():
                x_BLD, aux = checkpoint(
                    block,
                    x_BLD,
                    modality_BL,
                    mask=mask,
                    causal=causal,
                    rope=rope,
                    use_reentrant=False,
                )
            else:
                x_BLD, aux = block(
                    x_BLD, modality_BL, mask=mask, causal=causal, rope=rope, cache=layer_cache
                )
            if aux is not None:
                auxes.append(aux)
        return self.norm(x_BLD), auxes
