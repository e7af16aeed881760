import logging
import math

import pytest
import torch
from toy_moe import ToyMoE, collate, dataset, objective

from vlmoe.config import ConfigError, MoEConfig
from vlmoe.train.checkpoint import checkpoint_dirs
from vlmoe.train.config import RunConfig, ScheduleConfig
from vlmoe.train.metrics import read_metrics
from vlmoe.train.optim import build_optimizer, decay_groups, lr_factor
from vlmoe.train.trainer import NonFiniteError, Trainer


def _cfg(*overrides: str) -> RunConfig:
    base = ["train.steps=12", "train.batch_size=8", "train.log_every=2", "schedule.warmup_steps=2"]
    return RunConfig().with_overrides(base + list(overrides))


def _train(tmp_path, *overrides, model=None, resume=False, data=None, obj=objective):
    torch.manual_seed(0)
    model = model or ToyMoE()
    trainer = Trainer(
        model, obj, data or dataset(), collate, _cfg(*overrides), tmp_path, arch="toy"
    )
    return trainer.fit(resume=resume), model


def test_loss_goes_down_and_metrics_logged(tmp_path):
    result, _ = _train(tmp_path, "train.steps=30", "optim.lr=0.01")
    assert result.steps == 30 and len(result.losses) == 30
    assert sum(result.losses[-5:]) < sum(result.losses[:5])
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == list(range(2, 31, 2))
    for key in (
        "loss",
        "loss/task",
        "loss/moe/load_balance",
        "loss/moe/z_loss",
        "lr",
        "examples_per_s",
        "moe/max_load_ratio",
        "moe/effective_top_k",
    ):
        assert key in records[-1]
    assert all(1.0 <= r["moe/effective_top_k"] <= 2.0 + 1e-6 for r in records)  # top-2, dropless
    assert (tmp_path / "config.yaml").is_file()
    assert RunConfig.from_yaml(tmp_path / "config.yaml").train.steps == 30


def test_logged_throughput_counts_training_steps_only(tmp_path):
    """Evaluations and checkpoints between steps stay out of the logged examples/s: the logged
    windows add up to exactly the steps' own time, even with an evaluation inside a window."""
    import time

    def slow_eval(model):
        time.sleep(0.2)
        return {"score": 1.0}

    torch.manual_seed(0)
    cfg = _cfg("train.steps=9", "train.eval_every=3", "train.checkpoint_every=4")
    trainer = Trainer(
        ToyMoE(), objective, dataset(), collate, cfg, tmp_path, arch="toy", evaluate=slow_eval
    )
    result = trainer.fit()
    windows = [r for r in read_metrics(tmp_path) if r.get("split") == "train"]
    sizes = [2 * 8] * 4 + [8]  # log_every=2 of batch 8; the last window holds step 9 alone
    logged_seconds = sum(n / r["examples_per_s"] for n, r in zip(sizes, windows, strict=True))
    step_seconds = 9 * 8 / result.examples_per_s
    assert logged_seconds == pytest.approx(step_seconds, rel=1e-6)
    assert logged_seconds < 0.2  # none of the three 0.2 s evaluations is in there


class InterruptError(Exception):
    pass


class Interrupting(list):
    """A dataset that raises after `limit` item reads: a crash in the middle of a run."""

    def __init__(self, items, limit):
        super().__init__(items)
        self.reads, self.limit = 0, limit

    def __getitem__(self, i):
        self.reads += 1
        if self.reads > self.limit:
            raise InterruptError
        return super().__getitem__(i)


def test_resume_equals_uninterrupted(tmp_path):
    opts = ("train.checkpoint_every=4", "train.grad_accum=2", "train.keep_last=5")
    full, full_model = _train(tmp_path / "full", *opts)
    with pytest.raises(InterruptError):  # dies during step 7, after the checkpoint at step 4
        _train(tmp_path / "cut", *opts, data=Interrupting(dataset(), limit=6 * 2 * 8 + 3))
    assert [p.name for p in checkpoint_dirs(tmp_path / "cut")] == ["step_0000004"]
    torch.manual_seed(123)  # resume must not depend on the caller's RNG
    resumed, resumed_model = _train(tmp_path / "cut", *opts, resume=True)
    assert resumed.losses == full.losses  # bit-exact, including dropout and data order
    for (n, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), n
    cut = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "cut")]
    assert cut == [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "full")]


def test_grad_accum_matches_big_batch(tmp_path):
    """Two micro-batches of 8 make the same optimizer step as one batch of 16: the parameters
    after the steps agree (MoE losses off: they are per micro-batch by design)."""
    no_drop = ToyMoE(dropout=0.0)
    twin = ToyMoE(dropout=0.0)
    twin.load_state_dict(no_drop.state_dict())
    initial = {k: v.clone() for k, v in no_drop.state_dict().items()}
    off = ("losses.load_balance=0", "losses.z_loss=0", "train.steps=2")
    a, _ = _train(tmp_path / "a", *off, "train.batch_size=16", model=no_drop)
    b, _ = _train(tmp_path / "b", *off, "train.batch_size=8", "train.grad_accum=2", model=twin)
    assert a.losses == pytest.approx(b.losses, rel=1e-6)
    moved = False
    for (name, p), q in zip(no_drop.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
        moved |= not torch.equal(p, initial[name])
    assert moved  # the steps changed the weights, so the comparison means something


def test_warns_once_when_top2_routing_acts_as_top1(tmp_path, caplog):
    """A top-2 router so sure of itself that the second weight is ~0 gets one warning naming
    the effective experts per token; a fresh (near-uniform) router gets none."""
    sure = ToyMoE()
    with torch.no_grad():
        sure.moe.router.gate.weight.mul_(1e4)
    with caplog.at_level(logging.WARNING, logger="vlmoe"):
        _train(tmp_path / "sure", "optim.lr=1e-9", model=sure)
    warnings = [r for r in caplog.records if "experts per token" in r.getMessage()]
    assert len(warnings) == 1 and "top-2" in warnings[0].getMessage()
    records = read_metrics(tmp_path / "sure")
    assert records[-1]["moe/effective_top_k"] < 1.1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vlmoe"):
        _train(tmp_path / "fresh", "optim.lr=1e-9")
    assert not any("experts per token" in r.getMessage() for r in caplog.records)


def test_nan_names_step_and_layer(tmp_path):
    model = ToyMoE()
    with torch.no_grad():
        model.moe.experts.parameters().__next__().fill_(float("nan"))
    with pytest.raises(NonFiniteError, match=r"step 1: .*moe"):
        _train(tmp_path, model=model)


def test_inf_gradient_named(tmp_path):
    model = ToyMoE()
    model.head.bias.register_hook(lambda g: g * float("inf"))
    with pytest.raises(NonFiniteError, match=r"step 1: gradient of head\.bias"):
        _train(tmp_path, model=model)


def test_warns_when_moe_losses_all_off(tmp_path, caplog):
    off = ("losses.load_balance=0", "losses.z_loss=0", "train.steps=1")
    with caplog.at_level(logging.WARNING):
        _train(tmp_path, *off)
    assert "every MoE loss coefficient is 0" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _train(
            tmp_path,
            *off,
            model=ToyMoE(MoEConfig(dim=16, hidden_dim=32, num_experts=4, balance_bias=True)),
        )
    assert "every MoE loss coefficient is 0" not in caplog.text


def test_balance_bias_updated_after_step(tmp_path):
    model = ToyMoE(
        MoEConfig(dim=16, hidden_dim=32, num_experts=4, balance_bias=True, balance_bias_rate=0.1)
    )
    biases = [b for n, b in model.named_buffers() if "bias" in n] + [
        p for n, p in model.moe.router.named_parameters() if "bias" in n
    ]
    before = [b.clone() for b in biases]
    _train(tmp_path, "train.steps=2", model=model)
    assert any(not torch.equal(a, b) for a, b in zip(before, biases))


def test_stages_freeze_by_name(tmp_path):
    model = ToyMoE()
    frozen_before = {n: p.clone() for n, p in model.named_parameters() if not n.startswith("head")}
    stages = (
        "train.stages=[{name: head, steps: 2, trainable: [head]}, "
        "{name: moe, steps: 2, trainable: [router, experts]}]"
    )
    result, _ = _train(tmp_path, stages, model=model)
    assert result.steps == 4
    assert torch.equal(model.embed.weight, frozen_before["embed.weight"])  # never trained
    assert not torch.equal(
        model.moe.experts.parameters().__next__(),
        next(v for n, v in frozen_before.items() if n.startswith("moe.experts")),
    )
    assert [r["stage"] for r in read_metrics(tmp_path)] == ["head", "moe"]
    with pytest.raises(ValueError, match="projector"):
        _train(
            tmp_path, "train.stages=[{name: a, steps: 1, trainable: [projector]}]", model=ToyMoE()
        )


def test_schedule_and_decay_groups():
    cfg = ScheduleConfig(kind="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(9, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(10, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(55, 100, cfg) == pytest.approx(0.55)
    assert lr_factor(100, 100, cfg) == pytest.approx(0.1)
    model = ToyMoE()
    decay, keep = decay_groups(model.named_parameters())
    assert all(p.ndim >= 2 for p in decay) and all(p.ndim < 2 for p in keep) and keep
    opt = build_optimizer(model, RunConfig().optim)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]


def test_config_errors_name_field_and_value():
    with pytest.raises(ConfigError, match=r"optim\.lr must be > 0, got -1"):
        RunConfig().with_overrides(["optim.lr=-1"])
    with pytest.raises(ConfigError, match="unknown key 'train.stepz'"):
        RunConfig().with_overrides(["train.stepz=3"])
    with pytest.raises(ConfigError, match=r"train\.precision"):
        RunConfig().with_overrides(["train.precision=fp8"])
    assert not math.isnan(RunConfig().losses.load_balance)
