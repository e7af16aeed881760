"""Contrastive image-text training (CLIP / LIMoE): the symmetric InfoNCE loss over the batch.

Training has one example per (image, caption); evaluation one per image. Held-out: image-text
retrieval recall@K both ways and, when the data has class labels, zero-shot classification by
text prompts. `predict` ranks candidate texts (or class prompts) for one image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlmoe.data.sample import Sample
from vlmoe.eval.classification import ZeroShotEvaluator
from vlmoe.eval.retrieval import RetrievalEvaluator
from vlmoe.tasks.base import Example, Prediction, StepOutput, Task, accuracy, top_scores
from vlmoe.tasks.captioning import caption_examples, caption_text
from vlmoe.tasks.registry import register_task


@register_task
class Contrastive(Task):
    name = "contrastive"
    architectures = ("contrastive",)
    default_for = ("contrastive",)
    needs_text = True
    headline = ("retrieval/i2t_r@1", "retrieval/t2i_r@1")

    def examples(self, dataset: Any, split: str) -> list[Example]:
        return caption_examples(dataset, split)

    def collate(self, items: Sequence[tuple[Sample, Example]]) -> dict[str, Any]:
        return {
            "images": self.images(items),
            **self.encode([caption_text(s, e) for s, e in items]),
            "captions": [list(s.captions) for s, _ in items],
            "label": self.labels(items),
        }

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        out = model(
            images=batch["images"],
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
        )
        logits = out.logits_per_image.float()  # (B, B)
        target = torch.arange(logits.shape[0], device=logits.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        return StepOutput(loss, {"acc/train_i2t": accuracy(logits.detach(), target)}, out.moe_aux)

    def evaluators(self, loader: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"retrieval": RetrievalEvaluator(loader, image_id_key=None)}
        if self.info.label_names:
            out["zero_shot"] = ZeroShotEvaluator(
                loader, self.info.label_names, tokenizer=self.tokenizer
            )
        return out

    @torch.no_grad()
    def predict(
        self,
        model: nn.Module,
        image: np.ndarray,
        text: str | None = None,
        *,
        candidates: Sequence[str] | None = None,
        **_: Any,
    ) -> Prediction:
        options = (
            list(candidates or [])
            or ([text] if text else [])
            or [f"a photo of a {n}" for n in self.info.label_names]
        )
        if not options:
            raise ValueError("give the texts to match with --text (one or more, separated by '|')")
        enc = self.encode(options, next(model.parameters()).device)
        out = model(images=self.image_batch(image, model), **enc)
        scores = top_scores(out.logits_per_image[0], options, len(options))
        tokens = self.token_strings(enc["input_ids"][0].tolist()) if len(options) == 1 else []
        return Prediction("match", scores[0][0], scores, output=out, tokens=tokens)
