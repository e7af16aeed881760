"""Object detection: a `DetectionModel` (per-patch or DETR-style set head on the (MoE) ViT,
`vlmoe.models.detection`) trained on every labelled box of each image; scored by the COCO
metrics of `vlmoe.eval.detection` (pycocotools), plus how differently the backbone's MoE layers
route object and background patches.

One example per image (images without boxes are background-only training examples). The class
names are the dataset's `box_label_names`, saved in `task.json` as `label_names`; a box whose
label is not among them is one error naming the sample and the label.

Batch: `images` (B, 3, S, S); `boxes` (B, M, 4) normalized xyxy, `box_labels` (B, M) class ids,
`box_mask` (B, M) True on real boxes (M = most boxes of an image in the batch, at least 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from vlmoe.data.sample import Sample
from vlmoe.eval.detection import DetectionEvaluator, ObjectRoutingEvaluator
from vlmoe.models.detection import targets_from_batch
from vlmoe.models.detection_loss import detection_loss
from vlmoe.tasks.base import IGNORE_INDEX, Example, Prediction, StepOutput, Task
from vlmoe.tasks.registry import register_task


def box_batch(samples: Sequence[Sample], names: dict[str, int]) -> dict[str, torch.Tensor]:
    """`boxes`, `box_labels`, `box_mask` of samples whose boxes are in pixels of their image."""
    M = max([len(s.boxes) for s in samples] + [1])
    boxes = torch.zeros((len(samples), M, 4), dtype=torch.float32)  # (B, M, 4)
    labels = torch.full((len(samples), M), IGNORE_INDEX, dtype=torch.long)  # (B, M)
    mask = torch.zeros((len(samples), M), dtype=torch.bool)  # (B, M)
    for b, s in enumerate(samples):
        H, W = s.image_hw
        for k, box in enumerate(s.boxes):
            boxes[b, k] = torch.tensor([box.x0 / W, box.y0 / H, box.x1 / W, box.y1 / H])
            labels[b, k] = names.get(box.label, IGNORE_INDEX)
            mask[b, k] = True
    return {"boxes": boxes, "box_labels": labels, "box_mask": mask}


@register_task
class Detection(Task):
    name = "detection"
    architectures = ("detection",)
    default_for = ("detection",)
    headline = ("detection/mAP", "detection/mAP50", "detection/mAP75")
    predicts = ("boxes",)
    label_field = "box_label_names"

    def __init__(self, info: Any, tokenizer: Any = None) -> None:
        super().__init__(info, tokenizer)
        self._class_index = {n: i for i, n in enumerate(info.label_names)}

    def model_sizes(self) -> dict[str, int]:
        return {"num_classes": len(self.info.label_names)} if self.info.label_names else {}

    def examples(self, dataset: Any, split: str) -> list[Example]:
        out = []
        for i in range(len(dataset)):
            s = dataset.describe(i)
            for box in s.boxes:
                if box.label not in self._class_index:
                    where = s.meta.get("file") or s.meta.get("image") or f"sample {i}"
                    raise ValueError(
                        f"{where}: box label {box.label!r} is not one of the "
                        f"{len(self._class_index)} classes (box_label_names)"
                    )
            if s.boxes or split == "train":
                out.append(Example(i))
        return out

    def collate(self, items: Sequence[tuple[Sample, Example]]) -> dict[str, Any]:
        return {"images": self.images(items), **box_batch([s for s, _ in items], self._class_index)}

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        targets = targets_from_batch(batch)
        out = model(batch["images"], targets)
        loss, parts = detection_loss(out, targets, model.config)
        return StepOutput(loss, parts, out.moe_aux, len(batch["images"]))

    def evaluators(self, loader: Any) -> dict[str, Any]:
        return {
            "detection": DetectionEvaluator(loader, self.info.label_names),
            "object_routing": ObjectRoutingEvaluator(loader),
        }

    @torch.no_grad()
    def predict(
        self,
        model: nn.Module,
        image: np.ndarray,
        text: str | None = None,
        *,
        threshold: float = 0.3,
        **_: Any,
    ) -> Prediction:
        """Boxes in pixels of `image` scoring at least `threshold`, best first, in
        `extra["boxes"]` (label, score, box); `text` lists them."""
        images = self.image_batch(image, model)
        out = model(images)
        (det,) = model.decode(out, images.shape[-2], images.shape[-1])
        H, W = np.asarray(image).shape[:2]
        sx, sy = W / images.shape[-1], H / images.shape[-2]
        found = []
        for box, score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()):
            if score >= threshold:
                x0, y0, x1, y1 = box
                found.append(
                    {
                        "label": self.info.label_names[label],
                        "score": score,
                        "box": [x0 * sx, y0 * sy, x1 * sx, y1 * sy],
                    }
                )
        text_out = "; ".join(f"{b['label']} {b['score']:.2f}" for b in found) or "no objects"
        scores = [(b["label"], b["score"]) for b in found]
        return Prediction("boxes", text_out, scores, extra={"boxes": found}, output=out)
