"""COCO metrics through pycocotools on hand-worked cases; grounding accuracy."""

import math

import pytest
import torch

from vlmoe.data.shapes import ShapesConfig
from vlmoe.data.shapes_data import ShapesDataset
from vlmoe.eval.detection import (
    COCO_STATS,
    DetectionEvaluator,
    ImageBoxes,
    coco_metrics,
    grounding_accuracy,
    per_class_table,
)
from vlmoe.models.detection import Detections
from vlmoe.tasks import TaskDataset, TaskInfo, eval_loader
from vlmoe.tasks.detection import Detection

NAMES = ["circle", "square", "star"]


def gt(*rows):
    return ImageBoxes(
        torch.tensor([r[:4] for r in rows], dtype=torch.float32), torch.tensor([r[4] for r in rows])
    )


def pred(*rows):
    return ImageBoxes(
        torch.tensor([r[:4] for r in rows], dtype=torch.float32),
        torch.tensor([r[4] for r in rows]),
        torch.tensor([r[5] for r in rows]),
    )


def test_perfect_predictions_score_one():
    g = [gt([0, 0, 10, 10, 0], [20, 20, 40, 40, 1]), gt([5, 5, 15, 25, 2])]
    p = [pred([0, 0, 10, 10, 0, 0.9], [20, 20, 40, 40, 1, 0.8]), pred([5, 5, 15, 25, 2, 0.7])]
    m = coco_metrics(p, g, [(64, 64)] * 2, NAMES)
    for k in ("mAP", "mAP50", "mAP75", "AP_small", "AR1", "AR10", "AR100"):
        assert m[k] == pytest.approx(1.0), k
    assert math.isnan(m["AP_medium"]) and math.isnan(m["AP_large"])  # no such objects
    assert m["AP/circle"] == m["AP/square"] == m["AP/star"] == pytest.approx(1.0)


def test_iou_0_64_counts_at_thresholds_up_to_0_60():
    # Predicted [0,0,8,8] vs gt [0,0,10,10]: IoU 64/100, matched at 0.50, 0.55 and 0.60 of the
    # 10 thresholds -> mAP 0.3, AP50 1, AP75 0.
    m = coco_metrics([pred([0, 0, 8, 8, 0, 0.9])], [gt([0, 0, 10, 10, 0])], [(64, 64)], NAMES)
    assert m["mAP"] == pytest.approx(0.3)
    assert m["mAP50"] == pytest.approx(1.0) and m["mAP75"] == pytest.approx(0.0)
    assert set(m) == set(COCO_STATS) | {"AP/circle"}


def test_wrong_class_and_ranking():
    # Class 0: a false positive (score 0.9) ranked above the true positive (0.5): precision at
    # recall 1 is 1/2; COCO's interpolated AP over 101 recall points is 0.5.
    g = [gt([0, 0, 10, 10, 0])]
    p = [pred([30, 30, 40, 40, 0, 0.9], [0, 0, 10, 10, 0, 0.5], [0, 0, 10, 10, 1, 0.95])]
    m = coco_metrics(p, g, [(64, 64)], NAMES)
    assert m["mAP"] == pytest.approx(0.5)
    assert "AP/square" not in m  # no ground truth of class 1: no AP
    assert per_class_table(m) == [("circle", pytest.approx(0.5))]


def test_no_predictions_and_bad_arguments():
    m = coco_metrics(
        [ImageBoxes(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0))],
        [gt([0, 0, 10, 10, 0])],
        [(64, 64)],
        NAMES,
    )
    assert m["mAP"] == 0.0
    with pytest.raises(ValueError, match="one of each per image"):
        coco_metrics([], [gt([0, 0, 1, 1, 0])], [(8, 8)], NAMES)
    with pytest.raises(ValueError, match="no scores"):
        coco_metrics([gt([0, 0, 1, 1, 0])], [gt([0, 0, 1, 1, 0])], [(8, 8)], NAMES)


def test_grounding_accuracy():
    p = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 5, 10]], dtype=torch.float32)
    t = torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=torch.float32)
    assert grounding_accuracy(p, t) == pytest.approx(2 / 3)  # IoU 1, 0, exactly 0.5


def test_evaluator_with_an_oracle_detector_scores_one():
    cfg = ShapesConfig(max_objects=6, occlusion=0.3, large_objects="any")
    ds = ShapesDataset(cfg, "test", 16)
    task = Detection(TaskInfo("detection", "detection", 64, 0, cfg.box_label_names))
    loader = eval_loader(TaskDataset(ds, task.examples(ds, "eval"), 64), task.collate, 8)
    batches = list(loader)
    it = iter(batches)

    def oracle(model, images):
        b = next(it)
        out = []
        for boxes, labels, mask in zip(b["boxes"], b["box_labels"], b["box_mask"]):
            out.append(Detections(boxes[mask] * 64, torch.ones(int(mask.sum())), labels[mask]))
        return out

    m = dict(
        DetectionEvaluator(batches, cfg.box_label_names, detect=oracle).run(torch.nn.Linear(1, 1))
    )
    assert m["mAP"] == pytest.approx(1.0)
    assert any(k.startswith("AP/") for k in m)


def test_object_patch_mask_and_expert_load():
    from types import SimpleNamespace

    from vlmoe.eval.detection import object_expert_load, object_patch_mask

    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.9, 0.9, 1.0, 1.0]]])
    m = object_patch_mask(boxes, torch.tensor([[True, False]]), (2, 2))
    assert m.tolist() == [[True, False, False, False]]  # the second box is padding
    # Object token 0 goes to expert 0, background tokens 1-3 to expert 1 (top-1).
    aux = SimpleNamespace(
        num_experts=3,
        expert_ids_TK=torch.tensor([[0], [1], [1], [2]]),
        kept_TK=torch.tensor([[True], [True], [True], [False]]),
    )
    load = object_expert_load(aux, m.flatten())
    assert load.tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
