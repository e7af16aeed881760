"""A few training steps of every architecture through `vlmoe.recipes.run.train`, in-process."""

import json
import shutil

import pytest
import torch

from vlmoe.train.config import RunConfig, apply_overrides
from vlmoe.train.metrics import read_metrics
from vlmoe.recipes.run import load_trained, prepare, train

TINY = [
    "data.num_train=16",
    "data.num_eval=4",
    "train.batch_size=4",
    "train.steps=2",
    "train.log_every=1",
    "eval.max_new_tokens=3",
    "train.progress=none",
]


@pytest.mark.parametrize(
    "preset, data, headline",
    [
        ("vit-debug-moe", "digits", "classification/accuracy"),
        ("fusion-debug-moe", "shapes", "vqa/accuracy"),
        ("fusion-debug", "shapes", "classification/accuracy"),
        ("contrastive-debug-moe", "shapes", "retrieval/i2t_r@1"),
        ("decoder-debug-moe", "shapes", "captioning/bleu4"),
    ],
)
def test_few_steps(tmp_path, preset, data, headline):
    cfg = apply_overrides(RunConfig(), TINY + [f"model.preset={preset}", f"data.name={data}"])
    result = train(cfg, tmp_path)
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    assert headline in result.eval
    assert headline in json.loads((tmp_path / "eval.json").read_text())
    record = read_metrics(tmp_path)[0]
    if preset.endswith("moe"):
        assert "loss/moe/load_balance" in record and "loss/moe/z_loss" in record
        entropy = any(k.startswith("loss/moe/local_entropy") for k in record)
        assert entropy == preset.startswith(
            ("fusion", "contrastive")
        )  # LIMoE losses where they belong
    model, task = load_trained(tmp_path)
    assert task.info.architecture == preset.split("-")[0] and not model.training


def test_bf16_autocast_trains(tmp_path):
    cfg = apply_overrides(
        RunConfig(), TINY + ["model.preset=fusion-debug-moe", "train.precision=bf16"]
    )
    result = train(cfg, tmp_path)
    assert all(torch.isfinite(torch.tensor(result.losses)))


def test_resume_bit_exact_through_the_pipeline(tmp_path):
    cfg = apply_overrides(
        RunConfig(),
        TINY
        + [
            "model.preset=decoder-debug-moe",
            "train.steps=4",
            "train.checkpoint_every=2",
            "train.keep_last=3",
        ],
    )
    full = train(cfg, tmp_path / "full")
    # A run that died after its step-2 checkpoint: the same directory without step 4.
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_0000004")
    resumed = train(cfg, tmp_path / "cut", resume=True)
    assert resumed.losses == full.losses


def test_moe_llava_stages(tmp_path):
    stages = (
        "train.stages=[{name: projector, steps: 1, trainable: [projector]}, "
        "{name: all, steps: 1, trainable: ['*']}, {name: moe, steps: 1, trainable: [moe]}]"
    )
    cfg = apply_overrides(RunConfig(), TINY + ["model.preset=decoder-debug-moe", stages])
    result = train(cfg, tmp_path)
    assert result.steps == 3
    assert [r["stage"] for r in read_metrics(tmp_path) if r["split"] == "train"] == [
        "projector",
        "all",
        "moe",
    ]


def test_same_config_same_losses(tmp_path):
    """Model init, data order and every RNG follow train.seed: two runs in one process agree."""
    cfg = apply_overrides(RunConfig(), [*TINY, "model.preset=fusion-debug", "train.steps=3"])
    a = train(cfg, tmp_path / "a")
    torch.randn(100)  # disturb the global RNG between runs
    b = train(cfg, tmp_path / "b")
    assert a.losses == b.losses


def test_model_overrides_reach_the_data(tmp_path):
    """Image size and text length overridden on the command line size the data as well as the
    model (the scenes are rendered at the overridden size, captions cut at the new length)."""
    cfg = apply_overrides(
        RunConfig(),
        TINY
        + [
            "model.preset=decoder-debug-moe",
            "data.name=shapes",
            "model.vision.image_size=24",
            "model.vision.patch_size=8",
            "model.text.max_seq_len=20",
        ],
    )
    run = prepare(cfg)
    assert run.info.image_size == 24 and run.info.max_len == 20
    assert run.model.config.vision.image_size == 24
    batch = run.task.collate([run.train_data[i] for i in range(2)])
    assert tuple(batch["images"].shape[-2:]) == (24, 24)
    result = train(cfg, tmp_path)
    assert len(result.losses) == 2
