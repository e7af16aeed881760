"""Image classification: cross-entropy on the class head (ViT `logits`, fusion `class_logits`).

One example per image that has a label; accuracy over held-out images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlmoe.data.sample import Sample
from vlmoe.eval.classification import ClassificationEvaluator, class_logits
from vlmoe.tasks.base import (
    IGNORE_INDEX,
    Example,
    Prediction,
    StepOutput,
    Task,
    accuracy,
    top_scores,
)
from vlmoe.tasks.registry import register_task


def classification_loss(
    model: nn.Module, batch: dict[str, Any], smoothing: float = 0.0
) -> tuple[Any, torch.Tensor, dict]:
    """(output, loss, metrics) of the class head on `batch["images"]`."""
    out = model(images=batch["images"])
    logits = class_logits(out)
    if logits is None:
        raise ValueError("the model has no classification head; set num_classes in its config")
    loss = F.cross_entropy(
        logits.float(), batch["label"], ignore_index=IGNORE_INDEX, label_smoothing=smoothing
    )
    return out, loss, {"acc/train_cls": accuracy(logits.detach(), batch["label"])}


def label_prediction(task: Task, model: nn.Module, image: np.ndarray, top: int) -> Prediction:
    """The top labels of the class head for one image (classification, and a fusion model
    asked no question)."""
    out = model(images=task.image_batch(image, model))
    scores = top_scores(class_logits(out)[0], task.info.label_names, top)
    return Prediction("label", scores[0][0], scores, output=out)


@register_task
class Classification(Task):
    name = "classification"
    architectures = ("vit", "fusion")
    default_for = ("vit",)
    headline = ("classification/accuracy",)
    predicts = ("label",)

    def model_sizes(self) -> dict[str, int]:
        return {"num_classes": len(self.info.label_names)} if self.info.label_names else {}

    def examples(self, dataset: Any, split: str) -> list[Example]:
        return [Example(i) for i in range(len(dataset)) if dataset.describe(i).label is not None]

    def collate(self, items: Sequence[tuple[Sample, Example]]) -> dict[str, Any]:
        return {"images": self.images(items), "label": self.labels(items)}

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        out, loss, metrics = classification_loss(model, batch, self.label_smoothing)
        return StepOutput(loss, metrics, out.moe_aux)

    def evaluators(self, loader: Any) -> dict[str, Any]:
        forward = lambda m, b: m(images=b["images"])  # noqa: E731  (no text: a class head only)
        return {"classification": ClassificationEvaluator(loader, forward=forward)}

    @torch.no_grad()
    def predict(
        self,
        model: nn.Module,
        image: np.ndarray,
        text: str | None = None,
        *,
        top: int = 3,
        **_: Any,
    ) -> Prediction:
        return label_prediction(self, model, image, top)
