"""A run directory never loses or mixes history, and resume is exact everywhere: at stage
boundaries, with gradient accumulation, in bf16, and after kill -9 at random moments."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlmoe.config import ConfigError
from vlmoe.models.checkpoint import CheckpointError
from vlmoe.recipes.run import train
from vlmoe.train.config import RunConfig, apply_overrides

TINY = [
    "data.name=shapes",
    "data.num_train=24",
    "data.num_eval=8",
    "train.batch_size=4",
    "train.log_every=1",
    "train.checkpoint_every=1",
    "train.keep_last=20",
    "eval.max_new_tokens=3",
]
STAGES = (
    "train.stages=[{name: projector, steps: 2, trainable: [projector]}, "
    "{name: all, steps: 2, trainable: ['*']}, {name: moe, steps: 2, trainable: [moe]}]"
)


def cfg_of(*extra: str) -> RunConfig:
    return apply_overrides(RunConfig(), [*TINY, "model.preset=decoder-debug-moe", *extra])


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def assert_same_run(a: Path, b: Path, losses_a, losses_b) -> None:
    assert losses_a == losses_b
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_new_run_refuses_an_existing_one(tmp_path):
    cfg = cfg_of("train.steps=2")
    train(cfg, tmp_path / "run")
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="already holds a run.*--resume.*--overwrite"):
        train(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before  # nothing touched
    result = train(cfg_of("train.steps=1"), tmp_path / "run", overwrite=True)
    assert result.steps == 1
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["step_0000001"]  # the old run's later steps are gone, not mixed in


def test_a_failed_resume_writes_nothing(tmp_path):
    run = tmp_path / "run"
    train(cfg_of("train.steps=2"), run)
    saved = (run / "config.yaml").read_text()
    wrong = apply_overrides(RunConfig.from_yaml(run / "config.yaml"), ["model.preset=fusion-debug"])
    with pytest.raises(ConfigError, match="model.preset: 'decoder-debug-moe' -> 'fusion-debug'"):
        train(wrong, run, resume=True)
    assert (run / "config.yaml").read_text() == saved
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(cfg_of(), tmp_path / "missing", resume=True)
    assert not (tmp_path / "missing").exists()


def test_resume_extends_steps_and_keeps_history(tmp_path):
    run = tmp_path / "run"
    train(cfg_of("train.steps=2"), run)
    saved = RunConfig.from_yaml(run / "config.yaml")
    longer = saved.with_overrides({"train.steps": 4})
    result = train(longer, run, resume=True)
    assert result.steps == 4 and len(result.losses) == 4
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[:2] == [1, 2] and 4 in steps
    assert RunConfig.from_yaml(run / "config.yaml").train.steps == 4


@pytest.mark.parametrize(
    "extra,cut",
    [
        ((STAGES,), 2),  # resume exactly at the first stage boundary
        ((STAGES,), 4),  # and at the second
        ((STAGES, "train.grad_accum=2"), 3),
        (("train.steps=4", "train.precision=bf16"), 2),
    ],
)
def test_resume_is_exact(tmp_path, extra, cut):
    cfg = cfg_of(*extra)
    full = train(cfg, tmp_path / "full")
    cut_dir = tmp_path / "cut"
    cut_dir.mkdir()
    for name in ("config.yaml", "metrics.jsonl"):
        (cut_dir / name).write_bytes((tmp_path / "full" / name).read_bytes())
    (cut_dir / "checkpoints").mkdir()
    src = tmp_path / "full" / "checkpoints" / f"step_{cut:07d}"
    os.rename(src, cut_dir / "checkpoints" / src.name)  # the run died right after this step
    resumed = train(cfg, cut_dir, resume=True)
    # the rename took the checkpoint from the full run; its weights are in full/model anyway
    assert_same_run(tmp_path / "full", cut_dir, full.losses, resumed.losses)


def test_ctrl_c_writes_a_checkpoint_and_resume_finishes(tmp_path):
    """SIGINT stops after the step in progress with a checkpoint; resume ends as the
    uninterrupted run does."""
    cfg = cfg_of("train.steps=6", "train.checkpoint_every=0")
    full = train(cfg, tmp_path / "full")
    from vlmoe.train import trainer as trainer_mod

    original = trainer_mod.Trainer._train_step
    calls = []

    def interrupt_at_third(self, loop, step):
        original(self, loop, step)
        calls.append(step)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)

    trainer_mod.Trainer._train_step = interrupt_at_third
    try:
        with pytest.raises(KeyboardInterrupt, match="after step 3"):
            train(cfg, tmp_path / "cut")
    finally:
        trainer_mod.Trainer._train_step = original
    assert [p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()] == ["step_0000003"]
    resumed = train(cfg, tmp_path / "cut", resume=True)
    assert_same_run(tmp_path / "full", tmp_path / "cut", full.losses, resumed.losses)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vlmoe", "train", *args, "-q"]


def test_kill_9_at_random_moments_then_resume_is_bit_identical(tmp_path):
    """Fault injection: a staged run is killed (SIGKILL) at random moments, including during
    checkpoint writes and stage boundaries, and resumed each time; the end equals one
    uninterrupted run."""
    sets = [x for s in TINY + ["model.preset=decoder-debug-moe", STAGES] for x in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    t0 = time.perf_counter()
    subprocess.run(_cli(*sets, "--out", str(tmp_path / "full")), check=True, env=env)
    full_seconds = time.perf_counter() - t0  # kill moments are fractions of one whole run
    run = tmp_path / "run"
    rng = random.Random(0)
    kills, first, scale = 0, True, 1.0
    while True:
        args = (*sets, "--out", str(run)) if first else ("--out", str(run), "--resume")
        proc = subprocess.Popen(_cli(*args), env=env, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.4, 0.9) * full_seconds * scale)
        if proc.poll() is None and kills < 3:
            proc.kill()
            proc.wait()
            kills += 1
            ckpts = list((run / "checkpoints").glob("step_*")) if run.exists() else []
            first = first and not ckpts  # killed before any checkpoint: start over
            if first and run.exists():
                subprocess.run(["rm", "-rf", str(run)], check=True)
            continue
        assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()
        if kills == 0:  # the run beat the first kill (a busy machine timed the full run slow)
            subprocess.run(["rm", "-rf", str(run)], check=True)
            first, scale = True, scale / 2
            continue
        break
    assert kills >= 1
    full = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    ours = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    loss = lambda rs: {r["step"]: r["loss"] for r in rs if r["split"] == "train"}  # noqa: E731
    assert loss(ours) == loss(full)
    wa, wb = weights(tmp_path / "full"), weights(run)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
