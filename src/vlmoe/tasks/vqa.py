"""VQA as answer classification over the dataset's answer vocabulary (VL-MoE / VLMo style).

The fusion model reads [image patches ; question tokens] and its VQA head scores every answer;
one example per (image, question). `vqa+classification` trains the class head on the same
forward pass as well (the fusion model's default task).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlmoe.config import ConfigError
from vlmoe.data.sample import Sample
from vlmoe.eval.classification import ClassificationEvaluator, class_logits
from vlmoe.eval.vqa import VQAEvaluator, answers_from_logits
from vlmoe.tasks.base import (
    IGNORE_INDEX,
    Example,
    Prediction,
    StepOutput,
    Task,
    accuracy,
    top_scores,
)
from vlmoe.tasks.classification import label_prediction
from vlmoe.tasks.registry import register_task


@register_task
class VQA(Task):
    name = "vqa"
    architectures = ("fusion",)
    needs_text = True
    headline = ("vqa/accuracy",)
    predicts = ("answer",)

    def model_sizes(self) -> dict[str, int]:
        return {"num_answers": len(self.info.answer_vocab)} if self.info.answer_vocab else {}

    def examples(self, dataset: Any, split: str) -> list[Example]:
        return [
            Example(i, q) for i in range(len(dataset)) for q in range(len(dataset.describe(i).qa))
        ]

    def collate(self, items: Sequence[tuple[Sample, Example]]) -> dict[str, Any]:
        qas = [s.qa[e.part] for s, e in items]
        return {
            "images": self.images(items),
            **self.encode([qa.question for qa in qas]),
            "answer_id": torch.tensor([self.answer_id(qa.answer) for qa in qas], dtype=torch.long),
            "answer": [qa.answer for qa in qas],
            "question_type": [qa.kind for qa in qas],
            "label": self.labels(items),
        }

    def _forward(self, model: nn.Module, batch: dict[str, Any]) -> Any:
        return model(
            images=batch["images"],
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
        )

    def _vqa_loss(self, out: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        if out.vqa_logits is None:
            raise ValueError("the model has no VQA head; set num_answers in its config")
        logits = out.vqa_logits
        loss = F.cross_entropy(
            logits.float(),
            batch["answer_id"],
            ignore_index=IGNORE_INDEX,
            label_smoothing=self.label_smoothing,
        )
        acc = accuracy(logits.detach(), batch["answer_id"])
        return loss, {"loss/vqa": loss.detach(), "acc/train_vqa": acc}

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        out = self._forward(model, batch)
        loss, metrics = self._vqa_loss(out, batch)
        return StepOutput(loss, metrics, out.moe_aux)

    def evaluators(self, loader: Any) -> dict[str, Any]:
        return {"vqa": VQAEvaluator(loader, answers_from_logits(self.info.answer_vocab))}

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
        if not text or not text.strip():
            raise ConfigError("this is a VQA model: ask a question (--question)")
        enc = self.encode_input(text, next(model.parameters()).device)
        out = model(images=self.image_batch(image, model), **enc)
        scores = top_scores(out.vqa_logits[0], self.info.answer_vocab, top)
        tokens = self.token_strings(enc["input_ids"][0].tolist())
        return Prediction("answer", scores[0][0], scores, output=out, tokens=tokens)


@register_task
class VQAClassification(VQA):
    """VQA plus scene classification from one forward pass; without a question, `predict`
    gives the label."""

    name = "vqa+classification"
    default_for = ("fusion",)
    headline = ("vqa/accuracy", "classification/accuracy")
    predicts = ("answer", "label")

    def model_sizes(self) -> dict[str, int]:
        sizes = super().model_sizes()
        if self.info.label_names:
            sizes["num_classes"] = len(self.info.label_names)
        return sizes

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        out = self._forward(model, batch)
        vqa, metrics = self._vqa_loss(out, batch)
        logits = class_logits(out)
        cls = F.cross_entropy(
            logits.float(),
            batch["label"],
            ignore_index=IGNORE_INDEX,
            label_smoothing=self.label_smoothing,
        )
        metrics["loss/classification"] = cls.detach()
        metrics["acc/train_cls"] = accuracy(logits.detach(), batch["label"])
        return StepOutput(vqa + cls, metrics, out.moe_aux)

    def evaluators(self, loader: Any) -> dict[str, Any]:
        return {"classification": ClassificationEvaluator(loader), **super().evaluators(loader)}

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
        if not text or not text.strip():
            return label_prediction(self, model, image, top)
        p = super().predict(model, image, text, top=top)
        p.extra["label"] = top_scores(class_logits(p.output)[0], self.info.label_names, 1)[0]
        return p
