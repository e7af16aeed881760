"""BERT-style text encoders from Hugging Face (Devlin et al. 2019; MiniLM, Wang et al. 2020, as
in sentence-transformers' all-MiniLM-L6-v2) as a bidirectional vlmoe `TextTransformer`.

BERT is post-norm: the embedding LayerNorm becomes the stack's `input_norm`, each block is
norm(x + attn(x)) then norm(x + ffn(x)), and there is no final norm. Token type 0 is the only
one used, so its embedding is folded into the position table. The pooled output is the mean
over real tokens (sentence-transformers' pooling); BERT's pooler and MLM heads are unused.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vlmoe.models.config import TextConfig, TransformerConfig
from vlmoe.models.hf.files import HFImportError
from vlmoe.models.hf.keymap import StateReader, load_exact
from vlmoe.models.text import TextTransformer

MODEL_TYPES = ("bert",)


def bert_config(cfg: dict[str, Any], source: str) -> TextConfig:
    """The vlmoe `TextConfig` of a Hugging Face BERT config."""
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise HFImportError(
            f"{source}: position_embedding_type {cfg['position_embedding_type']!r} is not "
            "supported (only 'absolute')"
        )
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise HFImportError(f"{source}: hidden_act {cfg['hidden_act']!r} is not supported")
    if cfg.get("is_decoder") or cfg.get("add_cross_attention"):
        raise HFImportError(f"{source}: BERT as a decoder / with cross-attention is not supported")
    return TextConfig(
        vocab_size=int(cfg["vocab_size"]),
        max_seq_len=int(cfg.get("max_position_embeddings", 512)),
        attention="bidirectional",
        positions="learned",
        pool="mean",
        transformer=TransformerConfig(
            dim=int(cfg["hidden_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=int(cfg["num_attention_heads"]),
            hidden_dim=int(cfg["intermediate_size"]),
            activation="gelu_erf",
            norm="layernorm",
            norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
            attn_bias="all",
            mlp_bias=True,
            layout="post",
            input_norm=True,
            final_norm=False,
        ),
    )


def _linear(r: StateReader, hf: str, ours: str, out_dim: int, in_dim: int) -> dict[str, Tensor]:
    return {
        f"{ours}.weight": r.take(f"{hf}.weight", (out_dim, in_dim)),
        f"{ours}.bias": r.take(f"{hf}.bias", (out_dim,)),
    }


def import_bert(cfg: dict[str, Any], tensors: dict[str, Tensor], source: str) -> TextTransformer:
    """Build the vlmoe encoder of a Hugging Face BERT config and load its weights."""
    config = bert_config(cfg, source)
    model = TextTransformer(config)
    t = config.transformer
    D, I, V, P = t.dim, t.hidden_dim, config.vocab_size, config.max_seq_len
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""
    r = StateReader(tensors, source, prefix)
    types = r.take("embeddings.token_type_embeddings.weight", (cfg.get("type_vocab_size", 2), D))
    ours = {
        "embed.weight": r.take("embeddings.word_embeddings.weight", (V, D)),
        "pos.weight": r.take("embeddings.position_embeddings.weight", (P, D)) + types[0],
    }
    ours.update(_norm(r, "embeddings.LayerNorm", "transformer.input_norm", D))
    for i in range(t.num_layers):
        p, b = f"encoder.layer.{i}.", f"transformer.blocks.{i}."
        qkv = [_linear(r, f"{p}attention.self.{n}", "x", D, D) for n in ("query", "key", "value")]
        ours[f"{b}attn.qkv.weight"] = torch.cat([x["x.weight"] for x in qkv])
        ours[f"{b}attn.qkv.bias"] = torch.cat([x["x.bias"] for x in qkv])
        ours.update(_linear(r, f"{p}attention.output.dense", f"{b}attn.proj", D, D))
        ours.update(_norm(r, f"{p}attention.output.LayerNorm", f"{b}norm1", D))
        ours.update(_linear(r, f"{p}intermediate.dense", f"{b}ffn.fc_in", I, D))
        ours.update(_linear(r, f"{p}output.dense", f"{b}ffn.fc_out", D, I))
        ours.update(_norm(r, f"{p}output.LayerNorm", f"{b}norm2", D))
    r.prefix = ""
    r.finish([r"(bert\.)?pooler\..*", r"(bert\.)?embeddings\.position_ids", r"cls\..*"])
    load_exact(model, ours, source)
    return model


def _norm(r: StateReader, hf: str, ours: str, dim: int) -> dict[str, Tensor]:
    return {
        f"{ours}.weight": r.take(f"{hf}.weight", (dim,)),
        f"{ours}.bias": r.take(f"{hf}.bias", (dim,)),
    }
