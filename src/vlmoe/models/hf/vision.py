"""Vision towers from Hugging Face as a vlmoe `ViT`: CLIP (Radford et al. 2021), SigLIP (Zhai
et al. 2023) and ViT (Dosovitskiy et al. 2021), from a vision-only checkpoint or the vision half
of a full CLIP / SigLIP one.

`feature_layer` picks the features as LLaVA / MoE-LLaVA do (`mm_vision_select_layer`): None
gives the tower's `last_hidden_state`; a negative n gives `hidden_states[n]`, the output of
block L + n before any final norm (LLaVA uses -2). The tower is built that deep: later blocks
would be computed for nothing, so their weights are left out. Patch tokens only
(`select_feature='patch'`) is the decoder's `vision_feature="patch"`.

Folded without changing the result: the class token's position embedding into the class token
(vlmoe adds positions to patches only) and CLIP's bias-free patch projection into a zero bias.
Unused: CLIP's `post_layernorm` and SigLIP's attention-pooling head (pooled outputs vlmoe does
not build), a ViT's pooler and classifier.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

from vlmoe.models.config import TransformerConfig, ViTConfig
from vlmoe.models.hf.files import HFImportError
from vlmoe.models.hf.keymap import StateReader, load_exact
from vlmoe.models.vit import ViT

MODEL_TYPES = ("clip", "clip_vision_model", "siglip", "siglip_vision_model", "vit")
_ACT = {"quick_gelu": "quick_gelu", "gelu": "gelu_erf", "gelu_pytorch_tanh": "gelu"}


def family(model_type: str) -> str:
    return model_type.split("_")[0]  # clip, siglip, vit


def vision_config(cfg: dict[str, Any], source: str, feature_layer: int | None) -> ViTConfig:
    """The vlmoe `ViTConfig` of a Hugging Face vision config (the vision part of CLIP/SigLIP)."""
    fam = family(cfg["model_type"])
    act = cfg.get("hidden_act", "gelu")
    if act not in _ACT:
        raise HFImportError(f"{source}: hidden_act {act!r} is not supported")
    if fam == "vit" and not cfg.get("qkv_bias", True):
        raise HFImportError(f"{source}: a ViT without qkv_bias is not supported")
    L = int(cfg["num_hidden_layers"])
    if feature_layer is not None and not -L <= feature_layer <= -1:
        raise HFImportError(
            f"{source}: feature_layer={feature_layer} must be in [-{L}, -1] (hidden_states[n])"
        )
    transformer = TransformerConfig(
        dim=int(cfg["hidden_size"]),
        num_layers=L if feature_layer is None else L + 1 + feature_layer,
        num_heads=int(cfg["num_attention_heads"]),
        hidden_dim=int(cfg["intermediate_size"]),
        activation=_ACT[act],
        norm="layernorm",
        norm_eps=float(cfg.get("layer_norm_eps", 1e-5)),
        attn_bias="all",
        mlp_bias=True,
        input_norm=fam == "clip",
        final_norm=fam != "clip" and feature_layer is None,
    )
    return ViTConfig(
        image_size=int(cfg["image_size"]),
        patch_size=int(cfg["patch_size"]),
        in_channels=int(cfg.get("num_channels", 3)),
        pos_embed="learned",
        pool="mean" if fam == "siglip" else "cls",
        num_classes=0,
        transformer=transformer,
    )


def _prefix(tensors: dict[str, Tensor], fam: str) -> str:
    for prefix in ("vision_model.", "vit.", ""):
        first = "embeddings.cls_token" if fam == "vit" else "embeddings.patch_embedding.weight"
        if prefix + first in tensors:
            return prefix
    return ""


def _block_names(fam: str) -> dict[str, str]:
    if fam == "vit":
        return {
            "layer": "encoder.layer.{i}.",
            "q": "attention.attention.query",
            "k": "attention.attention.key",
            "v": "attention.attention.value",
            "o": "attention.output.dense",
            "norm1": "layernorm_before",
            "norm2": "layernorm_after",
            "fc_in": "intermediate.dense",
            "fc_out": "output.dense",
        }
    return {
        "layer": "encoder.layers.{i}.",
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "o": "self_attn.out_proj",
        "norm1": "layer_norm1",
        "norm2": "layer_norm2",
        "fc_in": "mlp.fc1",
        "fc_out": "mlp.fc2",
    }


def import_vision(
    cfg: dict[str, Any], tensors: dict[str, Tensor], source: str, feature_layer: int | None
) -> ViT:
    """Build the vlmoe ViT of a Hugging Face vision config and load its weights."""
    full = cfg["model_type"] in ("clip", "siglip")
    vcfg = {**cfg["vision_config"], "model_type": cfg["model_type"]} if full else cfg
    fam = family(cfg["model_type"])
    config = vision_config(vcfg, source, feature_layer)
    model = ViT(config)
    t = config.transformer
    D, I, N = t.dim, t.hidden_dim, model.embed.num_patches
    C, P = config.in_channels, config.patch_size
    prefix = _prefix(tensors, fam)
    r = StateReader(tensors, source, prefix)
    ours: dict[str, Tensor] = {}
    if fam == "vit":
        pos = r.take("embeddings.position_embeddings", (1, N + 1, D))[0]
        cls = r.take("embeddings.cls_token", (1, 1, D))[0, 0]
        conv = "embeddings.patch_embeddings.projection"
    else:
        pos = r.take("embeddings.position_embedding.weight", (N + int(fam == "clip"), D))
        cls = r.take("embeddings.class_embedding", (D,)) if fam == "clip" else None
        conv = "embeddings.patch_embedding"
    ours["embed.patch.proj.weight"] = r.take(f"{conv}.weight", (D, C, P, P))
    ours["embed.patch.proj.bias"] = (
        torch.zeros(D) if fam == "clip" else r.take(f"{conv}.bias", (D,))
    )
    if cls is not None:  # the class token's own position folded into it
        ours["embed.cls_token"] = (cls + pos[0])[None, None]
        pos = pos[1:]
    ours["embed.pos.weight"] = pos
    if fam == "clip":
        ours.update(_ln(r, "pre_layrnorm", "transformer.input_norm", D))
    names = _block_names(fam)
    for i in range(t.num_layers):
        p, b = names["layer"].format(i=i), f"transformer.blocks.{i}."
        qkv = [r.take(f"{p}{names[n]}.weight", (D, D)) for n in "qkv"]
        ours[f"{b}attn.qkv.weight"] = torch.cat(qkv)
        ours[f"{b}attn.qkv.bias"] = torch.cat([r.take(f"{p}{names[n]}.bias", (D,)) for n in "qkv"])
        ours[f"{b}attn.proj.weight"] = r.take(f"{p}{names['o']}.weight", (D, D))
        ours[f"{b}attn.proj.bias"] = r.take(f"{p}{names['o']}.bias", (D,))
        ours.update(_ln(r, f"{p}{names['norm1']}", f"{b}norm1", D))
        ours.update(_ln(r, f"{p}{names['norm2']}", f"{b}norm2", D))
        ours[f"{b}ffn.fc_in.weight"] = r.take(f"{p}{names['fc_in']}.weight", (I, D))
        ours[f"{b}ffn.fc_in.bias"] = r.take(f"{p}{names['fc_in']}.bias", (I,))
        ours[f"{b}ffn.fc_out.weight"] = r.take(f"{p}{names['fc_out']}.weight", (D, I))
        ours[f"{b}ffn.fc_out.bias"] = r.take(f"{p}{names['fc_out']}.bias", (D,))
    final = "layernorm" if fam == "vit" else "post_layernorm"
    if t.final_norm:
        ours.update(_ln(r, final, "transformer.norm", D))
    r.finish(_unused(prefix, range(t.num_layers, int(vcfg["num_hidden_layers"])), full, final))
    load_exact(model, ours, source)
    return model


def _ln(r: StateReader, hf: str, ours: str, dim: int) -> dict[str, Tensor]:
    return {
        f"{ours}.weight": r.take(f"{hf}.weight", (dim,)),
        f"{ours}.bias": r.take(f"{hf}.bias", (dim,)),
    }


def _unused(prefix: str, dropped: range, full: bool, final: str) -> list[str]:
    """Regexes of checkpoint keys vlmoe does not need (see the module docstring)."""
    p = re.escape(prefix)
    later = "|".join(str(i) for i in dropped) or "x"  # blocks past feature_layer
    unused = [
        rf"{p}encoder\.layers?\.(?:{later})\..*",
        f"{p}{final}\\..*",
        f"{p}embeddings\\.position_ids",
        f"{p}head\\..*",
        f"{p}pooler\\..*",
        r"classifier\..*",
    ]
    if full:  # the text half and the joint projections of a full CLIP / SigLIP checkpoint
        unused += [r"text_model\..*", r"(visual|text)_projection\..*", r"logit_(scale|bias)"]
    return unused
