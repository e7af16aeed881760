"""Classification accuracy, and zero-shot accuracy of a contrastive model from text prompts.

Zero-shot classification follows CLIP (Radford et al. 2021, "Learning Transferable Visual
Models From Natural Language Supervision") as used by LIMoE (Mustafa et al. 2022): each class
name is written into prompt templates, the text embeddings of a class are averaged and
L2-normalized, and an image is assigned the class whose prompt embedding is nearest in cosine
similarity.

Shapes: B batch, C classes, D embedding dim, P prompts.

The metric math is pure functions on tensors; `ClassificationEvaluator` and
`ZeroShotEvaluator` run a model over a DataLoader and yield `(name, value)` pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from vlmoe.eval.common import (
    BatchFn,
    TensorSum,
    batch_field,
    default_forward,
    encode_texts,
    get_field,
    model_device,
    to_device,
)

DEFAULT_PROMPTS: tuple[str, ...] = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.")


def topk_correct(logits_BC: torch.Tensor, labels_B: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Number of rows whose label is among the k highest logits, as a 0-d tensor (no host sync).

    Args:
        logits_BC: (B, C) scores.
        labels_B: (B,) integer labels; negative labels are ignored (not counted).
    """
    k = min(k, logits_BC.shape[-1])
    topk_BK = logits_BC.topk(k, dim=-1).indices
    hit_B = (topk_BK == labels_B[:, None]).any(dim=-1) & (labels_B >= 0)
    return hit_B.sum()


def accuracy(logits_BC: torch.Tensor, labels_B: torch.Tensor, k: int = 1) -> float:
    """Top-k accuracy in [0, 1] over rows with a non-negative label (0.0 when there are none)."""
    n = int((labels_B >= 0).sum())
    return float(topk_correct(logits_BC, labels_B, k)) / n if n else 0.0


def zero_shot_weights(prompt_embeds_CPD: torch.Tensor) -> torch.Tensor:
    """Class weights from prompt embeddings: normalize each, average over prompts, normalize.

    Args:
        prompt_embeds_CPD: (C, P, D) text embeddings of every (class, prompt) pair.
    Returns:
        (C, D) unit-norm class embeddings.
    """
    mean_CD = F.normalize(prompt_embeds_CPD.float(), dim=-1).mean(dim=1)
    return F.normalize(mean_CD, dim=-1)


def zero_shot_logits(image_embeds_BD: torch.Tensor, class_weights_CD: torch.Tensor) -> torch.Tensor:
    """(B, C) cosine similarities between images and class embeddings."""
    return F.normalize(image_embeds_BD.float(), dim=-1) @ class_weights_CD.float().T


def class_prompts(
    class_names: Sequence[str], templates: Sequence[str] = DEFAULT_PROMPTS
) -> list[str]:
    """Every (class, template) prompt, class-major: index c * P + p."""
    return [t.format(name) for name in class_names for t in templates]


def class_logits(output: Any, field: str | None = None) -> torch.Tensor:
    """The (B, C) class logits of a model output: `field`, else `class_logits` or `logits`."""
    if field is not None:
        return get_field(output, field)
    for name in ("class_logits", "logits"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor) and value.dim() == 2:
            return value
    raise KeyError(f"model output {type(output).__name__} has no 2-d class_logits or logits")


class ClassificationEvaluator:
    """Top-1 (and top-k) accuracy of a classifier head over a DataLoader.

    Args:
        loader: yields dict batches with the label under `label_key`.
        forward: `(model, batch) -> output`; defaults to `model(**inputs)` on the batch's
            tensor inputs (see `vlmoe.eval.common.default_forward`).
        logits_field: attribute (or key) of the output holding (B, C) logits; by default the
            first of `class_logits` (fusion) and `logits` (ViT) the output has.
        topk: extra k values to report as `top{k}` (k=1 is always reported as `accuracy`).
    """

    def __init__(
        self,
        loader: Iterable[dict],
        *,
        forward: BatchFn | None = None,
        logits_field: str | None = None,
        label_key: str = "label",
        topk: Sequence[int] = (),
    ) -> None:
        self.loader = loader
        self.forward = forward or default_forward
        self.logits_field = logits_field
        self.label_key = label_key
        self.topk = tuple(k for k in topk if k != 1)

    @torch.no_grad()
    def run(self, model: torch.nn.Module) -> Iterator[tuple[str, float]]:
        device = model_device(model)
        correct = {k: TensorSum() for k in (1, *self.topk)}
        count = TensorSum()
        for batch in self.loader:
            batch = to_device(batch, device)
            logits_BC = class_logits(self.forward(model, batch), self.logits_field)
            labels_B = batch_field(batch, self.label_key, "ClassificationEvaluator")
            for k, acc in correct.items():
                acc.add(topk_correct(logits_BC, labels_B, k))
            count.add((labels_B >= 0).sum())
        n = count.value()
        yield "accuracy", correct[1].value() / n if n else 0.0
        for k in self.topk:
            yield f"top{k}", correct[k].value() / n if n else 0.0
        yield "num_examples", n


class ZeroShotEvaluator:
    """Zero-shot accuracy of a contrastive model: images against class prompts.

    Args:
        loader: yields dict batches of images with labels under `label_key`.
        class_names: one name per class index.
        encode_text: `(model, prompts) -> (N, D)` text embeddings; default
            `model.encode_text` on the prompts tokenized by `tokenizer`.
        encode_image: `(model, batch) -> (B, D)` image embeddings; default
            `model.encode_image(batch["images"])`.
        tokenizer: vlmoe's tokenizer, for the default `encode_text`.
        templates: prompt templates with one `{}` for the class name.
    """

    def __init__(
        self,
        loader: Iterable[dict],
        class_names: Sequence[str],
        *,
        encode_text: Callable[[torch.nn.Module, list[str]], torch.Tensor] | None = None,
        encode_image: BatchFn | None = None,
        tokenizer: Any = None,
        templates: Sequence[str] = DEFAULT_PROMPTS,
        label_key: str = "label",
    ) -> None:
        self.loader = loader
        self.class_names = list(class_names)
        if encode_text is None and tokenizer is None:
            raise ValueError("ZeroShotEvaluator needs `encode_text` or a `tokenizer`")
        self.encode_text = encode_text or (lambda m, prompts: encode_texts(m, tokenizer, prompts))
        self.encode_image = encode_image or (lambda m, b: m.encode_image(b["images"]))
        self.templates = tuple(templates)
        self.label_key = label_key

    @torch.no_grad()
    def class_weights(self, model: torch.nn.Module) -> torch.Tensor:
        """(C, D) unit-norm class embeddings from the prompts."""
        prompts = class_prompts(self.class_names, self.templates)
        embeds_ND = self.encode_text(model, prompts)
        C, P = len(self.class_names), len(self.templates)
        return zero_shot_weights(embeds_ND.reshape(C, P, -1))

    @torch.no_grad()
    def run(self, model: torch.nn.Module) -> Iterator[tuple[str, float]]:
        device = model_device(model)
        weights_CD = self.class_weights(model).to(device)
        correct, count = TensorSum(), TensorSum()
        for batch in self.loader:
            batch = to_device(batch, device)
            logits_BC = zero_shot_logits(self.encode_image(model, batch), weights_CD)
            labels_B = batch_field(batch, self.label_key, "ZeroShotEvaluator")
            correct.add(topk_correct(logits_BC, labels_B, 1))
            count.add((labels_B >= 0).sum())
        n = count.value()
        yield "zero_shot_accuracy", correct.value() / n if n else 0.0
        yield "num_examples", n
