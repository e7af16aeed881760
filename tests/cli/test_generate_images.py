"""`vlmoe generate` on diffusion transformers: a grid of images for a label or a caption."""

import numpy as np
import pytest
import torch
from PIL import Image

import vlmoe
from vlmoe.cli.main import main
from vlmoe.data.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def dit_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("dit") / "model"
    vlmoe.create_model("dit-debug-moe").save_pretrained(path)
    return path


def test_generate_a_grid_for_a_label(dit_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    args = ["generate", str(dit_dir), "--label", "7", "--num", "4", "--steps", "2"]
    assert main([*args, "--cfg", "2", "--out", str(out), "-q"]) == 0
    grid = np.asarray(Image.open(out))
    # 2 x 2 images of 8 px with 2 px padding, upscaled twice.
    assert grid.shape == (2 * (2 * 10 + 2), 2 * (2 * 10 + 2), 3)
    assert "wrote 4 images" in capsys.readouterr().out


def test_generate_from_a_caption(tmp_path):
    texts = ["a red circle at the top left", "a blue square", "two green triangles"] * 5
    tokenizer = Tokenizer.train(texts, vocab_size=48)
    model = vlmoe.create_model("dit-debug-text-xattn")
    model.save_pretrained(tmp_path / "m", tokenizer=tokenizer)
    out = tmp_path / "scenes.png"
    argv = ["generate", str(tmp_path / "m"), "--prompt", "a red circle", "--num", "2"]
    assert main([*argv, "--steps", "2", "--sampler", "heun", "--out", str(out), "-q"]) == 0
    assert out.is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "--label"),
        (["--label", "12"], "out of range"),
        (["--label", "1", "--prompt", "a cat"], "no caption"),
        (["--label", "1", "--num", "0"], "--num"),
        (["--label", "1", "--out", "grid.jpg"], ".png"),
    ],
)
def test_usage_errors_exit_2_with_one_line(dit_dir, tmp_path, capsys, extra, message):
    argv = ["generate", str(dit_dir), "--steps", "1", *extra]
    if "--out" not in extra:
        argv += ["--out", str(tmp_path / "g.png")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_inspect_plots_routing_by_time_position_and_class(dit_dir, tmp_path, capsys):
    import json

    out = tmp_path / "inspect"
    assert main(["inspect", str(dit_dir), "--num", "2", "--steps", "3", "--out", str(out)]) == 0
    data = json.loads((out / "routing_factors.json").read_text())
    assert (out / "routing_factors.png").is_file()
    # dit-debug-moe: 2 MoE blocks, 8 experts, 4x4 patches, 10 classes, top-2 of every patch.
    assert np.asarray(data["time_LTE"]).shape == (2, 3, 8)
    assert np.asarray(data["position_LNE"]).shape == (2, 16, 8)
    assert np.asarray(data["class_LCE"]).sum() == 2 * 10 * 2 * 16 * 3 * 2
    assert all(0 <= v <= 1 for vs in data["nmi"].values() for v in vs)
    assert "NMI(expert; time)" in capsys.readouterr().out


def test_a_run_samples_with_its_own_flow_settings(tmp_path, capsys):
    """Inside a run directory, `load_trained` gives the task the run's flow settings and
    `vlmoe generate` samples with them unless told otherwise."""
    from vlmoe.recipes.run import load_trained
    from vlmoe.train.config import RunConfig, apply_overrides

    run_dir = tmp_path / "run"
    vlmoe.create_model("dit-debug").save_pretrained(run_dir / "model")
    cfg = apply_overrides(RunConfig(), ["flow.steps=3", "flow.sampler=heun", "flow.cfg_scale=1.5"])
    cfg.to_yaml(run_dir / "config.yaml")
    _, task = load_trained(run_dir / "model")
    assert (task.flow.steps, task.flow.sampler, task.flow.cfg_scale) == (3, "heun", 1.5)
    argv = ["generate", str(run_dir / "model"), "--label", "1", "--num", "1"]
    assert main([*argv, "--out", str(tmp_path / "a.png"), "-q"]) == 0
    assert "(3 heun steps, guidance 1.5)" in capsys.readouterr().out
    assert main([*argv, "--steps", "2", "--cfg", "1", "--out", str(tmp_path / "b.png"), "-q"]) == 0
    assert "(2 heun steps, guidance 1)" in capsys.readouterr().out
