"""Built-in presets: a `debug` size (a forward + backward well under a second on CPU, used by
the tests) and a `small` size (the CPU demo: 64x64 images, patch 8, width 128, 4 blocks) for
every architecture, each dense and MoE.

Equal active parameters: an MoE twin keeps the dense model's FFN compute per token. With a
dense FFN of hidden width h, its experts have hidden width h / (top_k + num_shared_experts):
  - `*-moe` (ViT, text, contrastive, decoder LM): E=8 experts, top-2, experts of width h/2,
    MoE in every other block (V-MoE / MoE-LLaVA "sparse" placement).
  - `fusion-*-moe` (VL-MoE): modality groups of 3 image + 3 text experts, 2 cross-modal
    experts, 1 shared expert, top-2: experts (and the shared expert) of width h/3.
Detectors (`det-*`) put a per-patch head (`det-{size}`) or a DETR-style set head
(`det-{size}-set`) on the ViT of the same size, dense or MoE; the 24 classes are the scene
world's "colour shape" box labels.
Routing variants of the ViT (`vit-debug-soft`, `vit-debug-ec`) cover soft MoE and expert choice.
"""

from __future__ import annotations

from typing import Any

from vlmoe.config import MoEConfig
from vlmoe.models.config import (
    ContrastiveConfig,
    DecoderConfig,
    DetectionConfig,
    FusionConfig,
    TextConfig,
    TransformerConfig,
    ViTConfig,
)
from vlmoe.models.registry import register_preset

# (dim, num_layers, num_heads, dense FFN hidden)
SIZES = {"debug": (32, 2, 2, 96), "small": (128, 4, 4, 384)}
IMAGES = {"debug": (16, 4), "small": (64, 8)}  # (image_size, patch_size)
VOCAB = {"debug": 64, "small": 512}
TEXT_LEN = {"debug": 16, "small": 64}


def tower(size: str, moe: MoEConfig | None = None, **kw) -> TransformerConfig:
    dim, layers, heads, hidden = SIZES[size]
    return TransformerConfig(
        dim=dim, num_layers=layers, num_heads=heads, hidden_dim=hidden, moe=moe, **kw
    )


def twin_moe(
    dim: int, dense_hidden: int, num_experts: int = 8, top_k: int = 2, **kw: Any
) -> MoEConfig:
    """The MoE FFN with the active parameters of a dense FFN of width `dense_hidden`: each
    token runs `top_k` routed experts (and any shared experts), each `dense_hidden / (top_k +
    num_shared_experts)` wide. The one place twins are sized: presets, demos and the scaling
    study all call it."""
    per_token = top_k + kw.get("num_shared_experts", 0)
    return MoEConfig(
        dim=dim, hidden_dim=dense_hidden // per_token, num_experts=num_experts, top_k=top_k, **kw
    )


def _twin(size: str, **kw: Any) -> MoEConfig:
    dim, _, _, hidden = SIZES[size]
    return twin_moe(dim, hidden, **kw)


def vl_moe(size: str) -> MoEConfig:
    """VL-MoE routing: modality expert groups, cross-modal experts and a shared expert."""
    return _twin(
        size,
        num_experts=8,
        top_k=2,
        expert_groups="modality",
        num_cross_modal_experts=2,
        num_shared_experts=1,
    )


def _register() -> None:
    for size in ("debug", "small"):
        image_size, patch = IMAGES[size]
        img = {"image_size": image_size, "patch_size": patch}
        for variant, moe in (("", None), ("-moe", _twin(size))):
            register_preset(
                f"vit-{size}{variant}",
                "vit",
                ViTConfig(**img, num_classes=10, transformer=tower(size, moe)),
                f"ViT {size}{' with MoE (E=8, top-2) every other block' if moe else ' (dense)'}",
            )
            register_preset(
                f"text-{size}{variant}",
                "text",
                TextConfig(
                    vocab_size=VOCAB[size],
                    max_seq_len=TEXT_LEN[size],
                    transformer=tower(size, moe, norm="rmsnorm"),
                ),
                f"causal text LM {size}{' with MoE' if moe else ' (dense)'}",
            )
            register_preset(
                f"contrastive-{size}{variant}",
                "contrastive",
                ContrastiveConfig(
                    **img,
                    vocab_size=VOCAB[size],
                    max_seq_len=TEXT_LEN[size],
                    embed_dim=SIZES[size][0],
                    transformer=tower(size, moe),
                ),
                f"LIMoE-style contrastive {size}{' with MoE' if moe else ' (dense)'}",
            )
            register_preset(
                f"decoder-{size}{variant}",
                "decoder",
                DecoderConfig(
                    vision=ViTConfig(**img, num_classes=0, transformer=tower(size)),
                    text=TextConfig(
                        vocab_size=VOCAB[size],
                        max_seq_len=TEXT_LEN[size],
                        transformer=tower(size, moe, norm="rmsnorm"),
                    ),
                ),
                f"MoE-LLaVA-style decoder {size}{' with MoE LM' if moe else ' (dense)'}",
            )
        for variant, moe in (("", None), ("-moe", vl_moe(size))):
            register_preset(
                f"fusion-{size}{variant}",
                "fusion",
                FusionConfig(
                    **img,
                    vocab_size=VOCAB[size],
                    max_seq_len=TEXT_LEN[size],
                    num_classes=10,
                    num_answers=32,
                    transformer=tower(size, moe),
                ),
                f"VL-MoE-style fusion encoder {size}"
                f"{' with modality experts + shared expert' if moe else ' (dense)'}",
            )
    _register_detectors()
    img = {"image_size": IMAGES["debug"][0], "patch_size": IMAGES["debug"][1]}
    register_preset(
        "vit-debug-soft",
        "vit",
        ViTConfig(
            **img,
            pool="mean",
            num_classes=10,
            transformer=tower(
                "debug", MoEConfig(hidden_dim=96, num_experts=4, top_k=1, router="soft")
            ),
        ),
        "ViT debug with soft MoE (Puigcerver et al. 2023)",
    )
    register_preset(
        "vit-debug-ec",
        "vit",
        ViTConfig(
            **img,
            num_classes=10,
            transformer=tower(
                "debug", MoEConfig(hidden_dim=48, num_experts=4, top_k=2, router="expert_choice")
            ),
        ),
        "ViT debug with expert-choice routing (Zhou et al. 2022)",
    )


def _register_detectors() -> None:
    for size in ("debug", "small"):
        image_size, patch = IMAGES[size]
        dim, _, heads, _ = SIZES[size]
        for variant, moe in (("", None), ("-moe", _twin(size))):
            backbone = ViTConfig(
                image_size=image_size,
                patch_size=patch,
                pool="mean",
                num_classes=0,
                transformer=tower(size, moe),
            )
            what = "with MoE (E=8, top-2) every other block" if moe else "(dense)"
            for head, suffix in (("patch", ""), ("set", "-set")):
                register_preset(
                    f"det-{size}{suffix}{variant}",
                    "detection",
                    DetectionConfig(
                        num_classes=24,
                        backbone=backbone,
                        head=head,
                        head_dim=dim,
                        num_queries=8 if size == "debug" else 16,
                        decoder_layers=2 if size == "debug" else 3,
                        decoder_heads=heads,
                    ),
                    f"detector {size}, {'per-patch' if head == 'patch' else 'DETR-style set'} "
                    f"head on a ViT {what}",
                )


_register()
