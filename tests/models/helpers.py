"""Inputs for any vlmoe model, built from its config."""

from __future__ import annotations

import torch

from vlmoe.models.registry import get_preset, list_presets

DEBUG_PRESETS = [n for n in list_presets() if "-debug" in n]


def architecture(name: str) -> str:
    return get_preset(name).architecture


def image_size(model) -> int:
    c = model.config
    if model.architecture == "detection":
        return c.backbone.image_size
    return c.vision.image_size if model.architecture == "decoder" else c.image_size


def vocab_size(model) -> int:
    c = model.config
    return c.text.vocab_size if model.architecture == "decoder" else c.vocab_size


def make_inputs(model, batch: int = 2, seq_len: int = 7, seed: int = 0) -> dict:
    """Images and/or right-padded token ids (the last row is padded) for `model`'s forward."""
    g = torch.Generator().manual_seed(seed)
    arch = model.architecture
    if arch == "dit":
        return dit_inputs(model, batch, seq_len, g)
    if arch in ("vit", "detection"):
        return {"images": torch.randn(batch, 3, image_size(model), image_size(model), generator=g)}
    ids = torch.randint(0, vocab_size(model), (batch, seq_len), generator=g)
    mask = torch.ones(batch, seq_len, dtype=torch.long)
    mask[-1, seq_len - 2 :] = 0
    if arch == "text":
        return {"input_ids": ids, "attention_mask": mask}
    images = torch.randn(batch, 3, image_size(model), image_size(model), generator=g)
    return {"images": images, "input_ids": ids, "attention_mask": mask}


def dit_inputs(model, batch: int, seq_len: int, g: torch.Generator) -> dict:
    """Noisy images, times and the conditions a DiT takes (class ids and/or padded captions)."""
    c = model.config
    inputs = {
        "x": torch.randn(batch, c.in_channels, c.image_size, c.image_size, generator=g),
        "t": torch.rand(batch, generator=g),
    }
    if c.num_classes:
        inputs["labels"] = torch.randint(0, c.num_classes, (batch,), generator=g)
    if c.text is not None:
        inputs["input_ids"] = torch.randint(0, c.text.vocab_size, (batch, seq_len), generator=g)
        mask = torch.ones(batch, seq_len, dtype=torch.long)
        mask[-1, seq_len - 2 :] = 0
        inputs["attention_mask"] = mask
    return inputs


def float_tensors(out) -> dict[str, torch.Tensor]:
    return {
        k: v for k, v in vars(out).items() if isinstance(v, torch.Tensor) and v.is_floating_point()
    }
