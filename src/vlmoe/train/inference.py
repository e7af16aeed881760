"""Using a trained model on one image: predict a label / an answer / a caption, or generate.

`predict` dispatches on the model's task (from `task.json`, see `vlmoe.train.run.TaskInfo`):
classification gives the top labels with probabilities, VQA the top answers, captioning a
generated caption, contrastive the best matching of the given texts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vlmoe.train.tasks import image_to_tensor


@dataclass
class Prediction:
    """What `predict` found. `kind` says which fields are set."""

    kind: str  # "label" | "answer" | "caption" | "match"
    text: str  # the top label / answer / caption / best text
    scores: list[tuple[str, float]] = field(default_factory=list)  # top candidates, best first
    extra: dict[str, Any] = field(default_factory=dict)


def load_image_array(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 from an image file; `vlmoe.data.errors.DataError` when it is not one."""
    from vlmoe.data.images import load_image

    return load_image(path)


def _tokens(tokenizer: Any, texts: list[str], max_len: int, device: torch.device) -> dict:
    if tokenizer is None:
        raise ValueError("this model has no tokenizer.json, so it cannot read text")
    enc = tokenizer.encode_batch(texts, max_len=max_len or None)
    return {
        "input_ids": enc["input_ids"].to(device),
        "attention_mask": enc["attention_mask"].long().to(device),
    }


def _top(logits: torch.Tensor, names: list[str], k: int) -> list[tuple[str, float]]:
    probs = logits.float().softmax(-1)
    values, ids = probs.topk(min(k, probs.shape[-1]))
    return [
        (names[i] if i < len(names) else str(i), float(v))
        for v, i in zip(values.tolist(), ids.tolist())
    ]


@torch.no_grad()
def predict(
    model: nn.Module,
    info: Any,
    tokenizer: Any,
    image: np.ndarray,
    text: str | None = None,
    candidates: list[str] | None = None,
    top: int = 3,
    max_new_tokens: int = 24,
) -> Prediction:
    """Run one image (+ question / texts) through a trained model. See the module docstring."""
    model.eval()
    device = next(model.parameters()).device
    images = image_to_tensor(image, info.image_size)[None].to(device)  # (1, 3, S, S)
    task = info.task
    if task == "captioning":
        caption = generate(
            model, tokenizer, image, info, prompt=text, max_new_tokens=max_new_tokens
        )
        return Prediction("caption", caption)
    if task == "contrastive":
        options = (
            candidates
            or ([text] if text else [])
            or [f"a photo of a {n}" for n in info.label_names]
        )
        if not options:
            raise ValueError("give the texts to match with --text (one or more, separated by '|')")
        out = model(images=images, **_tokens(tokenizer, options, info.max_len, device))
        scores = _top(out.logits_per_image[0], options, len(options))
        return Prediction("match", scores[0][0], scores)
    if task == "classification" or (task == "vqa+classification" and not text):
        if info.architecture == "vit":
            logits = model(images=images).logits
        else:
            logits = model(images=images).class_logits
        scores = _top(logits[0], info.label_names, top)
        return Prediction("label", scores[0][0], scores)
    if not text:
        raise ValueError("this is a VQA model: ask a question with --question")
    out = model(images=images, **_tokens(tokenizer, [text], info.max_len, device))
    scores = _top(out.vqa_logits[0], info.answer_vocab, top)
    extra = {}
    if out.class_logits is not None and info.label_names:
        extra["label"] = _top(out.class_logits[0], info.label_names, 1)[0]
    return Prediction("answer", scores[0][0], scores, extra)


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: Any,
    image: np.ndarray,
    info: Any,
    prompt: str | None = None,
    max_new_tokens: int = 24,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
) -> str:
    """Generate text after the image (a caption, or the continuation of `prompt`)."""
    if info.architecture != "decoder":
        raise ValueError(f"generate needs a decoder model; this one is a {info.architecture} model")
    if tokenizer is None:
        raise ValueError("this model has no tokenizer.json, so it cannot write text")
    model.eval()
    device = next(model.parameters()).device
    images = image_to_tensor(image, info.image_size)[None].to(device)
    ids = [tokenizer.bos_id] + (tokenizer.encode(prompt, add_special=False) if prompt else [])
    prompt_ids = torch.tensor([ids], dtype=torch.long, device=device)
    g = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
    out = model.generate(
        prompt_ids,
        images=images,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        stop_tokens=[tokenizer.eos_id],
        pad_token_id=tokenizer.pad_id,
        generator=g,
    )
    return tokenizer.decode(out[0].tolist()).strip()
