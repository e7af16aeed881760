"""Detection and grounding metrics.

Detection is scored by the COCO protocol (Lin et al. 2014) computed by `pycocotools` itself,
the reference every detection paper reports against: mAP averaged over IoU 0.50:0.05:0.95,
AP at IoU 0.5 and 0.75, AP for small / medium / large objects (COCO's absolute areas: below
32², 32²-96², above 96² pixels, so on 64-pixel scenes every object is "small" and AP medium /
large are NaN), AR given 1, 10 and 100 detections per image, and AP per class. vlmoe has no
evaluator of its own to keep in step with it. Grounding (one box per referring expression) is
scored by accuracy at IoU >= 0.5, as in the RefCOCO papers.

`DetectionEvaluator` and `GroundingEvaluator` run a model over a DataLoader of task batches
(`vlmoe.tasks.detection`, `vlmoe.tasks.grounding`) and yield `(name, value)` pairs like every
evaluator here.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vlmoe.eval.common import batch_field, model_device, to_device
from vlmoe.nn.boxes import elementwise_iou

COCO_STATS = (
    "mAP",
    "mAP50",
    "mAP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)


@dataclass
class ImageBoxes:
    """Boxes of one image in pixels (xyxy): ``boxes`` (K, 4), ``labels`` (K,) class ids and,
    for predictions, ``scores`` (K,)."""

    boxes: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor | None = None


def _coco_gt(gts: Sequence[ImageBoxes], sizes: Sequence[tuple[int, int]], num_classes: int):
    from pycocotools.coco import COCO

    images, anns = [], []
    for i, (gt, (h, w)) in enumerate(zip(gts, sizes)):
        images.append({"id": i + 1, "height": int(h), "width": int(w)})
        for box, label in zip(gt.boxes.tolist(), gt.labels.tolist()):
            x0, y0, x1, y1 = box
            anns.append(
                {
                    "id": len(anns) + 1,  # COCOeval treats id 0 as "unmatched"
                    "image_id": i + 1,
                    "category_id": int(label) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_metrics(
    predictions: Sequence[ImageBoxes],
    ground_truth: Sequence[ImageBoxes],
    image_sizes: Sequence[tuple[int, int]],
    class_names: Sequence[str],
) -> dict[str, float]:
    """COCO box metrics by pycocotools: the 12 standard numbers (`COCO_STATS`, NaN where no
    ground truth falls in an area range) and ``AP/<class name>`` (mAP@[.5:.95] of each class that
    has ground truth).

    Args:
        predictions, ground_truth: one `ImageBoxes` per image, in the same order; predictions
            carry scores.
        image_sizes: (H, W) of each image.
        class_names: name of each class id.
    """
    from pycocotools.cocoeval import COCOeval

    if not (len(predictions) == len(ground_truth) == len(image_sizes)):
        raise ValueError(
            f"coco_metrics: {len(predictions)} predictions, {len(ground_truth)} ground truths "
            f"and {len(image_sizes)} image sizes; need one of each per image"
        )
    gt = _coco_gt(ground_truth, image_sizes, len(class_names))
    dets = []
    for i, p in enumerate(predictions):
        if p.scores is None:
            raise ValueError(f"coco_metrics: prediction {i} has no scores")
        for box, label, score in zip(p.boxes.tolist(), p.labels.tolist(), p.scores.tolist()):
            x0, y0, x1, y1 = box
            dets.append(
                {
                    "image_id": i + 1,
                    "category_id": int(label) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(score),
                }
            )
    out = {name: math.nan for name in COCO_STATS}
    if not gt.dataset["annotations"]:
        return out
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets) if dets else _empty_results(gt)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out = {name: (float(v) if v >= 0 else math.nan) for name, v in zip(COCO_STATS, ev.stats)}
    # precision: (IoU thresholds, recall points, classes, area ranges, max dets); area "all",
    # 100 detections; -1 marks classes without ground truth.
    precision = ev.eval["precision"][:, :, :, 0, -1]
    for k, cat in enumerate(ev.params.catIds):
        p = precision[:, :, k]
        if (p > -1).any():
            out[f"AP/{class_names[cat - 1]}"] = float(p[p > -1].mean())
    return out


def _empty_results(gt: Any) -> Any:
    from pycocotools.coco import COCO

    dt = COCO()
    dt.dataset = {
        "images": gt.dataset["images"],
        "annotations": [],
        "categories": gt.dataset["categories"],
    }
    dt.createIndex()
    return dt


def grounding_accuracy(pred_B4: torch.Tensor, target_B4: torch.Tensor, iou: float = 0.5) -> float:
    """Fraction of predicted boxes whose IoU with their target is >= ``iou``."""
    if len(pred_B4) == 0:
        return 0.0
    return float((elementwise_iou(pred_B4.float(), target_B4.float()) >= iou).float().mean())


DetectFn = Callable[[torch.nn.Module, torch.Tensor], list]


def _default_detect(model: torch.nn.Module, images: torch.Tensor) -> list:
    return model.detect(images)


class DetectionEvaluator:
    """COCO metrics of a detector over detection batches (``images``, ``boxes`` normalized,
    ``box_labels``, ``box_mask``; see `vlmoe.tasks.detection`), as ``<stat>`` (`COCO_STATS`)
    and ``AP/<class>``.

    Args:
        loader: iterable of batches.
        class_names: name of each class id.
        detect: ``(model, images) -> per-image objects with boxes (pixels), scores, labels``;
            default ``model.detect``.
    """

    def __init__(
        self,
        loader: Iterable[dict],
        class_names: Sequence[str],
        detect: DetectFn = _default_detect,
    ) -> None:
        self.loader, self.class_names, self.detect = loader, class_names, detect

    def compute(self, model: torch.nn.Module) -> dict[str, float]:
        device = model_device(model)
        preds, gts, sizes = [], [], []
        for batch in self.loader:
            images = batch_field(batch, "images", "DetectionEvaluator").to(device)
            H, W = images.shape[-2:]
            scale = torch.tensor([W, H, W, H], dtype=torch.float32)
            boxes = batch_field(batch, "boxes", "DetectionEvaluator").float()
            labels = batch_field(batch, "box_labels", "DetectionEvaluator")
            mask = batch_field(batch, "box_mask", "DetectionEvaluator") & (labels >= 0)
            for b, det in enumerate(self.detect(model, images)):
                preds.append(ImageBoxes(det.boxes.cpu(), det.labels.cpu(), det.scores.cpu()))
                gts.append(ImageBoxes(boxes[b][mask[b]] * scale, labels[b][mask[b]]))
                sizes.append((int(H), int(W)))
        return coco_metrics(preds, gts, sizes, self.class_names)

    def run(self, model: torch.nn.Module) -> Iterator[tuple[str, float]]:
        yield from self.compute(model).items()


class GroundingEvaluator:
    """Accuracy@IoU0.5 of one predicted box per referring expression over batches with
    ``target_boxes`` (B, 4) normalized; ``predict(model, batch) -> (B, 4)`` normalized boxes."""

    def __init__(
        self,
        loader: Iterable[dict],
        predict: Callable[[torch.nn.Module, dict], torch.Tensor],
    ) -> None:
        self.loader, self.predict = loader, predict

    def run(self, model: torch.nn.Module) -> Iterator[tuple[str, float]]:
        device = model_device(model)
        hits, n = 0.0, 0
        for batch in self.loader:
            target = batch_field(batch, "target_boxes", "GroundingEvaluator").float()
            pred = self.predict(model, to_device(batch, device)).float().cpu()
            hits += grounding_accuracy(pred, target) * len(target)
            n += len(target)
        yield "acc@0.5", hits / n if n else 0.0
        yield "num_examples", n


def object_patch_mask(boxes_BM4: torch.Tensor, mask_BM: torch.Tensor, grid: tuple[int, int]):
    """(B, N) bool: patches whose centre lies inside a ground-truth box (normalized xyxy)."""
    rows, cols = grid
    ys = (torch.arange(rows) + 0.5) / rows
    xs = (torch.arange(cols) + 0.5) / cols
    cy, cx = (t.flatten() for t in torch.meshgrid(ys, xs, indexing="ij"))  # (N,)
    b = boxes_BM4.float()[:, None]  # (B, 1, M, 4)
    inside_BNM = (
        (cx[None, :, None] > b[..., 0])
        & (cx[None, :, None] < b[..., 2])
        & (cy[None, :, None] > b[..., 1])
        & (cy[None, :, None] < b[..., 3])
    )
    return (inside_BNM & mask_BM[:, None, :]).any(-1)


def object_expert_load(aux: Any, object_T: torch.Tensor) -> torch.Tensor:
    """(2, E) fraction of the kept (token, expert) pairs of background (row 0) and object
    (row 1) patches that each expert computed, for one MoE layer of a detector's backbone."""
    E = aux.num_experts
    kept_TK = aux.kept_TK & (aux.expert_ids_TK >= 0)
    load = torch.zeros(2, E)
    for row, sel_T in enumerate((~object_T, object_T)):
        ids = aux.expert_ids_TK[kept_TK & sel_T[:, None].to(kept_TK.device)]
        load[row] = torch.bincount(ids.cpu(), minlength=E)[:E].float()
    return load / load.sum(1, keepdim=True).clamp(min=1)


class ObjectRoutingEvaluator:
    """How differently a detector's MoE layers route object and background patches: for each
    MoE layer, the total-variation distance between the two expert-load distributions
    (0 = routed alike, 1 = disjoint experts) as ``layer<i>/object_vs_background_tv``.
    `compute` gives the (2, E) loads themselves.
    """

    def __init__(self, loader: Iterable[dict]) -> None:
        self.loader = loader

    def compute(self, model: torch.nn.Module) -> list[torch.Tensor]:
        device = model_device(model)
        loads: list[torch.Tensor] = []
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for batch in self.loader:
                out = model(batch["images"].to(device))
                obj_BN = object_patch_mask(batch["boxes"], batch["box_mask"], out.patch_grid)
                for i, aux in enumerate(out.moe_aux):
                    counts = object_expert_load(aux, obj_BN.flatten())
                    # Re-weight to counts so batches add up: fractions x pairs per row.
                    n = torch.tensor([(~obj_BN).sum(), obj_BN.sum()], dtype=torch.float32)[:, None]
                    if len(loads) <= i:
                        loads.append(torch.zeros_like(counts))
                    loads[i] += counts * n
        model.train(was_training)
        return [x / x.sum(1, keepdim=True).clamp(min=1e-12) for x in loads]

    def run(self, model: torch.nn.Module) -> Iterator[tuple[str, float]]:
        for i, load in enumerate(self.compute(model)):
            yield (
                f"routing/layer{i}/object_vs_background_tv",
                float(0.5 * (load[0] - load[1]).abs().sum()),
            )


def per_class_table(metrics: dict[str, float]) -> list[tuple[str, float]]:
    """(class, AP) rows of a `coco_metrics` result, worst first."""
    rows = [(k.split("/", 1)[1], v) for k, v in metrics.items() if k.startswith("AP/")]
    return sorted(rows, key=lambda r: (np.nan_to_num(r[1], nan=-1.0), r[0]))
