"""`train.precision=auto` times the model itself where the machine's bf16 matmuls are fast."""

import logging

import pytest
import torch
from toy_moe import ToyMoE, collate, dataset, objective

import vlmoe.train.trainer as trainer_mod
from vlmoe.train.config import RunConfig
from vlmoe.train.trainer import Trainer


def _trainer(tmp_path, precision: str) -> Trainer:
    torch.manual_seed(0)
    cfg = RunConfig().with_overrides(
        ["train.steps=2", "train.batch_size=8", f"train.precision={precision}"]
    )
    model = ToyMoE()
    model.register_buffer("running", torch.zeros(3))  # as a batch norm's statistics would be
    return Trainer(model, objective, dataset(), collate, cfg, tmp_path, arch="toy")


@pytest.mark.parametrize("faster", ["fp32", "bf16"])
def test_auto_keeps_the_faster_precision_for_this_model(tmp_path, monkeypatch, caplog, faster):
    monkeypatch.setattr(trainer_mod, "resolve_precision", lambda requested, device: "bf16")
    timed = {"fp32": 2.0, "bf16": 1.0} if faster == "bf16" else {"fp32": 1.0, "bf16": 2.0}
    trainer = _trainer(tmp_path, "auto")
    monkeypatch.setattr(trainer, "_time_precisions", lambda: timed)
    with caplog.at_level(logging.INFO, logger="vlmoe.train.trainer"):
        assert trainer._settle_precision() == faster
    assert f"precision auto: {faster} for this model" in caplog.text
    assert trainer._precision == faster


@pytest.mark.parametrize("machine", ["fp32", "bf16"])
def test_explicit_precision_or_slow_bf16_machine_is_not_timed(tmp_path, monkeypatch, machine):
    monkeypatch.setattr(trainer_mod, "resolve_precision", lambda requested, device: machine)
    trainer = _trainer(tmp_path, "auto" if machine == "fp32" else "bf16")
    monkeypatch.setattr(trainer, "_time_precisions", lambda: pytest.fail("timed"))
    assert trainer._settle_precision() == machine


def test_timing_leaves_no_trace(tmp_path):
    trainer = _trainer(tmp_path, "auto")
    model = trainer.model
    params = {k: v.clone() for k, v in model.named_parameters()}
    model.running.add_(1.5)
    torch.manual_seed(7)
    rng = torch.get_rng_state()
    seconds = trainer._time_precisions()
    assert set(seconds) == {"fp32", "bf16"} and all(0 < s < 60 for s in seconds.values())
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(model.running, torch.full((3,), 1.5))
    for k, v in model.named_parameters():
        assert torch.equal(v, params[k]) and v.grad is None


def test_a_resumed_run_keeps_its_precision(tmp_path, monkeypatch):
    """The choice is saved with each checkpoint: a resume does not time again (exact resume)."""
    monkeypatch.setattr(trainer_mod, "resolve_precision", lambda requested, device: "bf16")
    monkeypatch.setattr(Trainer, "_time_precisions", lambda self: {"fp32": 2.0, "bf16": 1.0})
    first = _trainer(tmp_path, "auto")
    first.fit()
    assert first._precision == "bf16"
    monkeypatch.setattr(Trainer, "_time_precisions", lambda self: pytest.fail("timed again"))
    cfg = first.cfg.with_overrides(["train.steps=3"])
    again = Trainer(first.model, objective, dataset(), collate, cfg, tmp_path, arch="toy")
    again.fit(resume=True)
    assert again._precision == "bf16"
