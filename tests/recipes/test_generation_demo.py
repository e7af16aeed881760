"""`vlmoe demo generation`: the MNIST generation recipe, the dense-vs-MoE run with its grid
and report (a tiny recipe here; the real `--quick` demo through the CLI is `slow`)."""

import json

import pytest
import torch
from PIL import Image

from vlmoe.cli.main import main
from vlmoe.recipes.demos.generation import (
    RECIPE,
    Recipe,
    mnist_generation_config,
    run,
    side_by_side,
)
from vlmoe.train.ema import read_weights_note


def test_recipe_config_is_the_measured_recipe():
    cfg = mnist_generation_config("dit-small-moe", seed=2)
    assert cfg.model.preset == "dit-small-moe" and cfg.task == "image-generation"
    assert cfg.data.name == "mnist" and cfg.train.seed == 2
    assert cfg.train.steps == RECIPE.steps and cfg.train.batch_size == RECIPE.batch_size
    assert cfg.flow.ema_decay == RECIPE.ema_decay and cfg.flow.cfg_scale == RECIPE.cfg_scale
    assert cfg.optim.lr == RECIPE.lr and cfg.optim.weight_decay == 0.0


def test_side_by_side_puts_dense_left_and_moe_right_per_class():
    dense = torch.arange(10).repeat_interleave(3).float()[:, None, None, None].expand(30, 1, 2, 2)
    moe = -dense
    grid, nrow = side_by_side(dense, moe, per_row=2)
    assert nrow == 5 and grid.shape == (50, 1, 2, 2)
    rows = grid.unflatten(0, (10, 5))[:, :, 0, 0, 0]  # (class, column)
    for c in range(10):
        assert rows[c].tolist() == [c, c, 0, -c, -c]


@pytest.mark.slow  # ~90 s on a busy 2-core CPU: two dit-small evaluations over 1,000 digits
def test_demo_run_writes_grid_report_and_results(tmp_path):
    tiny = Recipe(steps=2, batch_size=8, warmup_steps=1, sample_steps=2)
    results = run(tmp_path, recipe=tiny, num_per_class=2, judge_epochs=1)
    assert set(results["models"]) == {"dit-small", "dit-small-moe"}
    dense, moe = results["models"]["dit-small"], results["models"]["dit-small-moe"]
    assert abs(moe["params_active"] - dense["params_active"]) / dense["params_active"] < 0.02
    assert moe["params_total"] > 1.5 * dense["params_total"]
    for m in (dense, moe):
        assert 0.0 <= m["gen_accuracy"] <= 1.0 and m["gen_fd"] > 0
    assert 0 < results["fd_floor"] < results["fd_ceiling"]
    width, height = Image.open(tmp_path / "samples.png").size
    assert abs(width / height - 0.5) < 0.02  # 10 rows of 2 + 1 + 2 images
    report = (tmp_path / "report.md").read_text()
    assert "| dit-small-moe |" in report and "samples.png" in report
    assert json.loads((tmp_path / "results.json").read_text())["num_per_class"] == 2
    assert read_weights_note(tmp_path / "dit-small" / "model")["weights"] == "ema"


@pytest.mark.slow
def test_quick_generation_demo_through_the_cli(tmp_path, capsys):
    assert main(["demo", "generation", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "dit-small-moe" in out and "FD floor" in out
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "report.md").is_file()
