"""Tiny random Hugging Face models built from transformers' config classes (nothing is
downloaded), and the relative error the tests compare with."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

transformers = pytest.importorskip("transformers")

LM = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
)

# family -> (config class, model class, extra config fields)
LM_FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=2)),
    "llama-bias-tied": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(attention_bias=True, tie_word_embeddings=True, rope_theta=5e5),
    ),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(num_key_value_heads=1)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=2)),
    "mixtral": (
        "MixtralConfig",
        "MixtralForCausalLM",
        dict(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2),
    ),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        dict(
            num_key_value_heads=2,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=24,
            norm_topk_prob=True,
            mlp_only_layers=[0],
        ),
    ),
    "phi": ("PhiConfig", "PhiForCausalLM", dict(partial_rotary_factor=0.5)),
}


def build_hf_lm(family: str, seed: int = 0):
    cfg_name, model_name, extra = LM_FAMILIES[family]
    torch.manual_seed(seed)
    config = getattr(transformers, cfg_name)(**{**LM, **extra})
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():  # HF inits norms to 1 and biases to 0: randomize them so maps are tested
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


VISION = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    image_size=16,
    patch_size=4,
)
VISION_FAMILIES = {
    "clip": ("CLIPVisionConfig", "CLIPVisionModel", {}),
    "siglip": ("SiglipVisionConfig", "SiglipVisionModel", {}),
    "vit": ("ViTConfig", "ViTModel", {}),
}
BERT = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=40,
)


def _randomize(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower() or name.endswith("bias") or "token" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def build_hf_vision(family: str, seed: int = 0):
    cfg_name, model_name, extra = VISION_FAMILIES[family]
    torch.manual_seed(seed)
    config = getattr(transformers, cfg_name)(**{**VISION, **extra})
    return _randomize(getattr(transformers, model_name)(config).eval())


def build_hf_bert(seed: int = 0):
    torch.manual_seed(seed)
    return _randomize(transformers.BertModel(transformers.BertConfig(**BERT)).eval())
