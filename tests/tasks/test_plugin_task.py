"""A task defined outside vlmoe (here, in this test) trains, evaluates and predicts through the
`vlmoe` command line with no change to the package: the proof that a task is one file."""

import json
from collections.abc import Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlmoe.cli.main import main
from vlmoe.data.shapes import ShapesConfig
from vlmoe.data.shapes_data import make_sample
from vlmoe.eval.classification import ClassificationEvaluator
from vlmoe.tasks import Example, Prediction, StepOutput, Task, register_task
from vlmoe.tasks.base import top_scores

MAX_OBJECTS = 4


@register_task
class ObjectCount(Task):
    """How many objects a scene holds, as classification over 1..MAX_OBJECTS."""

    name = "object-count"
    architectures = ("vit",)
    headline = ("count/accuracy",)

    def model_sizes(self):
        return {"num_classes": MAX_OBJECTS}

    def examples(self, dataset, split):
        return [Example(i) for i in range(len(dataset)) if dataset.describe(i).boxes]

    def collate(self, items: Sequence):
        counts = [len(s.boxes) - 1 for s, _ in items]
        return {"images": self.images(items), "label": torch.tensor(counts)}

    def loss(self, model, batch):
        out = model(images=batch["images"])
        return StepOutput(F.cross_entropy(out.logits, batch["label"]), {}, out.moe_aux)

    def evaluators(self, loader):
        return {"count": ClassificationEvaluator(loader, forward=lambda m, b: m(b["images"]))}

    @torch.no_grad()
    def predict(self, model, image, text=None, *, top=3, **_):
        out = model(images=self.image_batch(image, model))
        names = [str(n) for n in range(1, MAX_OBJECTS + 1)]
        scores = top_scores(out.logits[0], names, top)
        return Prediction("label", scores[0][0], scores, output=out)


def test_outside_task_through_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--preset",
            "vit-debug-moe",
            "--task",
            "object-count",
            "--steps",
            "3",
            "--out",
            str(run),
            "--set",
            "data.num_train=32",
            "--set",
            "data.num_eval=16",
            "--set",
            "train.batch_size=8",
            "--set",
            "data.image_size=16",
        ]
    )
    assert code == 0, capsys.readouterr().err
    results = json.loads((run / "eval.json").read_text())
    assert results["count/num_examples"] == 16 and 0 <= results["count/accuracy"] <= 1
    assert json.loads((run / "model" / "task.json").read_text())["task"] == "object-count"
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    assert "count/accuracy" in capsys.readouterr().out
    image = tmp_path / "scene.png"
    Image.fromarray(make_sample(ShapesConfig(image_size=16), "test", 0).image).save(image)
    assert main(["predict", str(run), "--image", str(image)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("label: ") and out.split()[1] in {"1", "2", "3", "4"}


def test_a_task_that_does_not_fit_is_a_usage_error(tmp_path, capsys):
    code = main(
        ["train", "--preset", "fusion-debug", "--task", "object-count", "--out", str(tmp_path)]
    )
    assert code == 2
    assert "does not fit a fusion model" in capsys.readouterr().err
    assert not np.any([p.name == "config.yaml" for p in tmp_path.iterdir()])


@pytest.mark.parametrize("task", ["captionig"])
def test_unknown_task_suggests(task, tmp_path, capsys):
    assert main(["train", "--preset", "decoder-debug", "--task", task, "--out", str(tmp_path)]) == 2
    assert "did you mean 'captioning'" in capsys.readouterr().err
