"""The image-generation tasks: batches, flow loss, evaluators and predict on a DiT, and
`vlmoe train --task image-generation` then `vlmoe generate` end to end."""

import numpy as np
import pytest
import torch

from vlmoe.cli.main import main
from vlmoe.data import ShapesConfig, ShapesDataset
from vlmoe.data.tokenizer import Tokenizer
from vlmoe.models.registry import create_model
from vlmoe.tasks import TaskDataset, TaskInfo, build_task, default_task, eval_loader


@pytest.fixture(scope="module")
def world():
    return ShapesDataset(ShapesConfig(image_size=32), "train", 8)


def _batch(task, world, size, n=4):
    data = TaskDataset(world, task.examples(world, "train"), size)
    return task.collate([data[i] for i in range(n)]), data


def test_class_conditional_task_on_a_dit(world):
    assert default_task("dit").name == "image-generation"
    task = build_task(TaskInfo("image-generation", "dit", 8, 0, list(world.label_names)))
    assert task.model_sizes() == {"num_classes": len(world.label_names)}
    model = create_model("dit-debug-moe", num_classes=len(world.label_names))
    batch, data = _batch(task, world, 8)
    assert batch["images"].shape == (4, 3, 8, 8) and batch["label"].shape == (4,)
    out = task.loss(model, batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and len(out.moe_aux) == 2 and out.num_examples == 4
    results = {}
    for name, ev in task.evaluators(eval_loader(data, task.collate, 4)).items():
        results.update({f"{name}/{k}": v for k, v in ev.run(model)})
    assert results["flow/flow_loss"] > 0 and "routing/drop_rate" in results
    pred = task.predict(model, None, world.label_names[0], steps=2)
    assert pred.kind == "image" and pred.extra["image"].shape == (8, 8, 3)
    with pytest.raises(ValueError, match="one of"):
        task.predict(model, None, "no such class", steps=2)


def test_caption_task_on_a_dit(world):
    tok = Tokenizer.train(list(world.texts()), vocab_size=64)
    task = build_task(TaskInfo("text-to-image", "dit", 16, 16), tok)
    model = create_model("dit-debug-text-xattn", vocab_size=tok.vocab_size, max_seq_len=16)
    batch, _ = _batch(task, world, 16)
    assert batch["input_ids"].shape[0] == 4
    out = task.loss(model, batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    pred = task.predict(model, None, "a red circle", steps=2)
    assert pred.extra["image"].dtype == np.uint8


def test_train_then_generate_through_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--preset", "dit-debug-moe", "--data", "mnist", "--task", "image-generation"]
    argv += ["--steps", "2", "--batch-size", "4", "--set", "data.num_eval=8", "-q"]
    assert main([*argv, "--out", str(run)]) == 0
    assert "flow/flow_loss" in capsys.readouterr().out
    grid = tmp_path / "grid.png"
    assert (
        main(
            [
                "generate",
                str(run),
                "--label",
                "3",
                "--num",
                "2",
                "--steps",
                "2",
                "--out",
                str(grid),
                "-q",
            ]
        )
        == 0
    )
    assert grid.is_file()
