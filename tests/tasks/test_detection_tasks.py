"""The detection and grounding tasks: examples, collate (boxes follow the resize), loss,
evaluators and predict, end to end on tiny models."""

import numpy as np
import pytest
import torch

from vlmoe.data.locations import location_bins
from vlmoe.data.sample import Box, Sample
from vlmoe.data.shapes import ShapesConfig
from vlmoe.data.shapes_data import ShapesDataset
from vlmoe.data.tokenizer import Tokenizer
from vlmoe.eval.runner import run_evaluators
from vlmoe.models.registry import create_model
from vlmoe.tasks import TaskDataset, TaskInfo, build_task, eval_loader

SCENES = ShapesConfig(image_size=32, max_objects=4, occlusion=0.3, large_objects="any")


def test_detection_task_end_to_end():
    ds = ShapesDataset(SCENES, "test", 6)
    task = build_task(TaskInfo("detection", "detection", 16, 0, SCENES.box_label_names))
    data = TaskDataset(ds, task.examples(ds, "eval"), 16)
    batch = task.collate([data[i] for i in range(4)])
    # 32-pixel scenes resized to 16: normalized boxes are the same as before the resize.
    s = ds[0]
    assert batch["images"].shape == (4, 3, 16, 16)
    assert torch.allclose(batch["boxes"][0, 0], torch.tensor(s.boxes[0].xyxy) / 32)
    assert batch["box_labels"][0, 0] == SCENES.box_label_names.index(s.boxes[0].label)
    model = create_model("det-debug", **task.model_sizes())
    out = task.loss(model, batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    model.config.score_threshold = 0.0
    results = run_evaluators(model, task.evaluators(eval_loader(data, task.collate, 4)))
    assert 0 <= results["detection/mAP"] <= 1
    pred = task.predict(model, np.asarray(s.image), threshold=0.0)
    assert pred.kind == "boxes" and pred.extra["boxes"]
    x0, y0, x1, y1 = pred.extra["boxes"][0]["box"]
    assert 0 <= x0 <= x1 <= 32 and 0 <= y0 <= y1 <= 32  # pixels of the 32-pixel input


def test_detection_task_rejects_unknown_labels():
    task = build_task(TaskInfo("detection", "detection", 16, 0, ["red circle"]))
    with pytest.raises(ValueError, match="'blue star' is not one of the 1 classes"):
        task.examples(
            _Listed([Sample(np.zeros((8, 8, 3), np.uint8), boxes=[Box(0, 0, 4, 4, "blue star")])]),
            "train",
        )


class _Listed(list):
    def describe(self, i):
        return self[i]


def test_grounding_task_end_to_end():
    ds = ShapesDataset(SCENES, "test", 4)
    tok = Tokenizer.train(ShapesDataset(SCENES, "train", 30).texts(), vocab_size=200)
    task = build_task(TaskInfo("grounding", "decoder", 16, 40), tok)
    assert location_bins(tok) == 16
    data = TaskDataset(ds, task.examples(ds, "train"), 16)
    n_pairs = sum(
        len({b.label for b in ds.describe(i).boxes}) + len(ds.describe(i).refs) for i in range(4)
    )
    assert len(data) == n_pairs
    batch = task.collate([data[i] for i in range(3)])
    assert (batch["labels"] != -100).any(1).all()
    model = create_model("decoder-debug", vocab_size=tok.vocab_size, max_seq_len=40)
    out = task.loss(model, batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    evald = TaskDataset(ds, task.examples(ds, "eval"), 16)
    assert len(evald) == sum(len(ds.describe(i).refs) for i in range(4))
    results = run_evaluators(model, task.evaluators(eval_loader(evald, task.collate, 8)))
    assert 0 <= results["grounding/acc@0.5"] <= 1
    pred = task.predict(model, np.asarray(ds[0].image), "the red circle")
    assert pred.kind == "boxes"
