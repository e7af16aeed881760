"""Built-in presets: a `debug` size (a forward + backward well under a second on CPU, used by
the tests) and a `small` size (the CPU demo: 64x64 images, patch 8, width 128, 4 blocks) for
every architecture, each dense and MoE.

Equal active parameters: an MoE twin keeps the dense model's FFN compute per token. With a
dense FFN of hidden width h, its experts have hidden width h / (top_k + num_shared_experts):
  - `*-moe` (ViT, text, contrastive, decoder LM): E=8 experts, top-2, experts of width h/2,
    MoE in every other block (V-MoE / MoE-LLaVA "sparse" placement).
  - `fusion-*-moe` (VL-MoE): modality groups of 3 image + 3 text experts, 2 cross-modal
    experts, 1 shared expert, top-2: experts (and the shared expert) of width h/3.
Routing variants of the ViT (`vit-debug-soft`, `vit-debug-ec`) cover soft MoE and expert choice.

Diffusion transformers (`dit-*`, `vlmoe.models.dit`): `dit-small` is class-conditional on 28x28
grey digits (patch 4, width 128, 6 blocks, GELU FFN of width 384); `dit-small-moe` is its DiT-MoE
twin (every FFN an MoE of 8 routed experts, top-2, plus 1 shared expert, all of width 128);
`dit-small-ec` the EC-DiT one (expert choice, 8 experts of width 192, capacity 2).
`dit-small-text` takes captions of 32x32 colour scenes instead of classes.
"""

from __future__ import annotations

from typing import Any

from vlmoe.config import MoEConfig
from vlmoe.models.config import (
    ContrastiveConfig,
    DecoderConfig,
    FusionConfig,
    TextConfig,
    TransformerConfig,
    ViTConfig,
)
from vlmoe.models.dit import DiTConfig
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


DIT_SIZES = {"debug": (32, 2, 2, 96), "small": (128, 6, 4, 384)}
DIT_IMAGES = {"debug": (8, 2, 1), "small": (28, 4, 1)}  # (image_size, patch_size, channels)
DIT_TEXT_IMAGES = {"debug": (16, 4), "small": (32, 4)}  # colour scenes: (image_size, patch_size)


def dit_tower(size: str, variant: str) -> TransformerConfig:
    """The DiT's transformer slice: dense, DiT-MoE (shared + routed) or EC-DiT (expert choice),
    with MoE in every block and equal active FFN parameters."""
    dim, layers, heads, hidden = DIT_SIZES[size]
    moe = None
    if variant == "-moe":
        moe = MoEConfig(
            dim=dim,
            hidden_dim=hidden // 3,
            num_experts=8,
            top_k=2,
            num_shared_experts=1,
            activation="gelu",
        )
    elif variant == "-ec":
        moe = MoEConfig(
            dim=dim,
            hidden_dim=hidden // 2,
            num_experts=8,
            top_k=2,
            router="expert_choice",
            expert_choice_capacity=2.0,
            activation="gelu",
        )
    return TransformerConfig(
        dim=dim,
        num_layers=layers,
        num_heads=heads,
        hidden_dim=hidden,
        activation="gelu",
        moe=moe,
        moe_every=1,
    )


def _register_dit() -> None:
    what = {
        "": "(dense)",
        "-moe": "with DiT-MoE FFNs (8 experts top-2 + 1 shared)",
        "-ec": "with EC-DiT FFNs (8 experts, expert choice)",
    }
    for size in ("debug", "small"):
        image_size, patch, channels = DIT_IMAGES[size]
        for variant in ("", "-moe", "-ec"):
            register_preset(
                f"dit-{size}{variant}",
                "dit",
                DiTConfig(
                    image_size=image_size,
                    patch_size=patch,
                    in_channels=channels,
                    num_classes=10,
                    transformer=dit_tower(size, variant),
                ),
                f"class-conditional diffusion transformer {size} {what[variant]}",
            )
        for variant in ("", "-moe"):
            for mode, suffix in (("pooled", ""), ("cross_attention", "-xattn")):
                register_preset(
                    f"dit-{size}-text{suffix}{variant}",
                    "dit",
                    DiTConfig(
                        image_size=DIT_TEXT_IMAGES[size][0],
                        patch_size=DIT_TEXT_IMAGES[size][1],
                        in_channels=3,
                        num_classes=0,
                        text=TextConfig(
                            vocab_size=VOCAB[size],
                            max_seq_len=TEXT_LEN[size] // 2,
                            attention="bidirectional",
                            positions="learned",
                            transformer=tower(size),
                        ),
                        text_conditioning=mode,
                        transformer=dit_tower(size, variant),
                    ),
                    f"caption-conditioned diffusion transformer {size} ({mode}) {what[variant]}",
                )


_register()
_register_dit()
