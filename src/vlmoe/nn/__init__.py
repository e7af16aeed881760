"""Leaf layers: attention (SDPA, masks, KV cache), RoPE, norms, patch/position embeddings, the
dense MLP, and the pre-norm block that holds a dense or MoE feed-forward layer."""

from vlmoe.nn.attention import (
    Attention,
    KVCache,
    LayerKVCache,
    build_attention_mask,
    positions_from_mask,
)
from vlmoe.nn.block import Block
from vlmoe.nn.embed import (
    ConvStem,
    FixedPositions,
    HybridEmbed,
    LearnedPositions,
    PatchEmbed,
    sincos_2d,
)
from vlmoe.nn.mlp import MLP
from vlmoe.nn.norm import make_norm
from vlmoe.nn.rope import RotaryEmbedding, apply_rope

__all__ = [
    "MLP",
    "Attention",
    "Block",
    "ConvStem",
    "FixedPositions",
    "HybridEmbed",
    "KVCache",
    "LayerKVCache",
    "LearnedPositions",
    "PatchEmbed",
    "RotaryEmbedding",
    "apply_rope",
    "build_attention_mask",
    "make_norm",
    "positions_from_mask",
    "sincos_2d",
]
