"""EMA weights: the average itself, and the trainer keeping, checkpointing, resuming,
evaluating and exporting them (`vlmoe train` of a diffusion model, then `vlmoe generate`)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import InterruptError, Interrupting, _cfg
from toy_moe import ToyMoE, collate, dataset, objective

from vlmoe.cli.main import main
from vlmoe.io import CheckpointError
from vlmoe.recipes.run import load_trained
from vlmoe.train.checkpoint import checkpoint_dirs
from vlmoe.train.ema import EMA, EMA_WEIGHTS, ema_decay_at, read_weights_note
from vlmoe.train.trainer import Trainer


def test_ema_follows_the_polyak_average_with_warmup():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # warm-up decay min(0.9, 2/11)
    torch.testing.assert_close(ema.model.weight, torch.full((1, 2), 1 - 2 / 11))
    for _ in range(200):
        ema.update(model)
    torch.testing.assert_close(ema.model.weight, torch.ones(1, 2), atol=1e-6, rtol=0)
    state = ema.state_dict()
    other = EMA(torch.nn.Linear(2, 1, bias=False), decay=0.9)
    other.load_state_dict(state)
    assert torch.equal(other.model.weight, ema.model.weight) and other.num_updates == 201
    assert not any(p.requires_grad for p in ema.model.parameters())
    assert ema_decay_at(0.999, 1) == pytest.approx(2 / 11) and ema_decay_at(0.999, 10**6) == 0.999
    with pytest.raises(ValueError, match="EMA decay"):
        EMA(model, decay=1.0)


def _trainer(run_dir, *overrides, data=None, decay=0.9, evaluate=None):
    torch.manual_seed(0)
    return Trainer(
        ToyMoE(),
        objective,
        data or dataset(),
        collate,
        _cfg(*overrides),
        run_dir,
        arch="toy",
        ema_decay=decay,
        evaluate=evaluate,
    )


def test_trainer_updates_ema_after_each_step_and_evaluates_with_it(tmp_path):
    seen = []
    trainer = _trainer(tmp_path / "one", "train.steps=1", evaluate=lambda m: seen.append(m) or {})
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    assert seen == [trainer.ema.model] and trainer.sampling_model() is trainer.ema.model
    w = 1 - ema_decay_at(0.9, 1)
    for name, p in trainer.ema.model.state_dict().items():
        expected = initial[name].lerp(trainer.model.state_dict()[name], w)
        torch.testing.assert_close(p, expected, msg=name)
    assert trainer.ema.num_updates == 1
    plain = _trainer(tmp_path / "plain", "train.steps=1", decay=0.0)
    plain.fit()
    assert plain.ema is None and plain.sampling_model() is plain.model
    assert not (checkpoint_dirs(tmp_path / "plain")[-1] / EMA_WEIGHTS).exists()


def test_ema_is_checkpointed_and_resumed_exactly(tmp_path):
    opts = ("train.checkpoint_every=4", "train.keep_last=5")
    full = _trainer(tmp_path / "full", *opts)
    full.fit()
    ckpt = checkpoint_dirs(tmp_path / "full")[-1]
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["ema_updates"] == 12
    stored = load_file(str(ckpt / EMA_WEIGHTS))
    for name, p in full.ema.model.state_dict().items():
        assert torch.equal(stored[name], p), name
    with pytest.raises(InterruptError):  # dies in step 7, after the checkpoint at step 4
        _trainer(
            tmp_path / "cut", *opts, data=Interrupting(dataset().dataset, limit=6 * 8 + 3)
        ).fit()
    torch.manual_seed(123)
    resumed = _trainer(tmp_path / "cut", *opts)
    resumed.fit(resume=True)
    assert resumed.ema.num_updates == 12
    for (name, a), b in zip(
        full.ema.model.state_dict().items(), resumed.ema.model.state_dict().values()
    ):
        assert torch.equal(a, b), name
    # The raw weights moved on from the average: the two are different things.
    assert not torch.equal(full.model.head.weight, full.ema.model.head.weight)


def test_resuming_a_checkpoint_without_ema_fails_clearly(tmp_path):
    _trainer(tmp_path, "train.steps=4", decay=0.0).fit()
    with pytest.raises(CheckpointError, match="no EMA weights"):
        _trainer(tmp_path, "train.steps=8").fit(resume=True)


def test_vlmoe_train_exports_ema_weights_and_generate_samples_them(tmp_path):
    run = tmp_path / "run"
    argv = ["train", "--preset", "dit-debug", "--data", "mnist", "--task", "image-generation"]
    argv += ["--steps", "3", "--batch-size", "4", "--set", "data.num_eval=8", "-q"]
    argv += ["--set", "flow.ema_decay=0.5", "--out", str(run)]
    assert main(argv) == 0
    note = read_weights_note(run / "model")
    assert note["weights"] == "ema" and note["ema_updates"] == 3 and note["ema_decay"] == 0.5
    ckpt = checkpoint_dirs(run)[-1]
    exported = load_file(str(run / "model" / "model.safetensors"))
    ema = load_file(str(ckpt / EMA_WEIGHTS))
    raw = load_file(str(ckpt / "model.safetensors"))
    assert exported.keys() == ema.keys()
    assert all(torch.equal(exported[k], ema[k]) for k in ema)
    assert not all(torch.equal(raw[k], ema[k]) for k in ema)
    # A checkpoint used as a model directory gives its EMA weights too.
    model, task = load_trained(ckpt)
    assert task.name == "image-generation"
    for k, v in model.state_dict().items():
        assert torch.equal(v, ema[k]), k
    grid = tmp_path / "g.png"
    argv = ["generate", str(ckpt), "--label", "1", "--num", "2", "--steps", "2"]
    assert main([*argv, "--out", str(grid), "-q"]) == 0 and grid.is_file()
