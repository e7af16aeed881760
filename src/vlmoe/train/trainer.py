"""The training loop: AdamW, warm-up + cosine, clipping, accumulation, bf16, checkpoints, resume.

`Trainer` is task-agnostic: an *objective* turns `(model, batch)` into a `StepOutput` (task loss,
logged scalars, the model's `moe_aux` list), and the trainer adds the MoE auxiliary losses
(`vlmoe.train.moe_losses`), steps the optimizer, runs the aux-loss-free bias update when a layer
has it enabled, logs, evaluates and checkpoints. Staged training (MoE-LLaVA) switches the
trainable parameters and restarts the optimizer and schedule at each stage boundary.

Exact resume: the data order (`DataOrder`), every RNG, the optimizer state and the step are
stored, and the learning rate is a pure function of the step, so a resumed run computes the same
losses as an uninterrupted one (same device and thread count).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vlmoe.nn.machine import resolve_precision
from vlmoe.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    read_trainer_state,
    save_checkpoint,
)
from vlmoe.train.config import RunConfig, StageConfig
from vlmoe.train.data_order import DataOrder
from vlmoe.train.metrics import MetricsLogger, Progress
from vlmoe.train.moe_losses import (
    max_top_k,
    moe_aux_losses,
    routing_summary,
    uses_balance_bias,
    warn_if_top1_in_effect,
    warn_if_unbalanced,
)
from vlmoe.train.optim import build_optimizer, lr_factor, set_lr
from vlmoe.train.seed import resolve_device, seed_everything
from vlmoe.train.stages import set_trainable

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """The run cannot go on (bad setup, non-finite values); the message says why and where."""


class NonFiniteError(TrainingError):
    """NaN or Inf in the loss or the gradients; the message names the step and the layer."""


@dataclass
class StepOutput:
    """What an objective returns for one micro-batch."""

    loss: Tensor  # scalar task loss (MoE aux losses are added by the trainer)
    metrics: dict[str, Tensor] = field(default_factory=dict)  # extra scalars to log
    moe_aux: Sequence = ()  # the model's MoEAux list, one per MoE layer
    num_examples: int = 0


Objective = Callable[[nn.Module, dict], StepOutput]
EvalFn = Callable[[nn.Module], dict[str, Any]]


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    losses: list[float]  # total loss of every optimizer step (from step 1)
    eval: dict[str, Any]  # the final evaluation (empty without an eval function)
    seconds: float  # wall time of this call of `fit` (evaluations and checkpoints included)
    examples_per_s: float  # training throughput of this call (optimizer steps only)
    checkpoint: Path | None


def _stages(cfg: RunConfig) -> list[StageConfig]:
    return list(cfg.train.stages) or [
        StageConfig(name="train", steps=cfg.train.steps, trainable=["*"])
    ]


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


def _batch_size(batch: dict) -> int:
    for v in batch.values():
        if isinstance(v, Tensor) and v.ndim > 0:
            return v.shape[0]
    return 0


def locate_nonfinite_forward(model: nn.Module, run_forward: Callable[[], Any]) -> str | None:
    """Re-run a forward with hooks; name the first module whose output holds NaN/Inf."""
    found: list[str] = []

    def hook(name: str):
        def fn(module, inputs, output):
            if found:
                return
            tensors = output if isinstance(output, tuple | list) else (output,)
            for t in tensors:
                if isinstance(t, Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
                    found.append(f"{name} ({type(module).__name__})")
                    return

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            run_forward()
    except Exception:  # the diagnosis must not hide the original error
        pass
    finally:
        for h in handles:
            h.remove()
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            return f"{name} (parameter holds NaN/Inf)"
    return found[0] if found else None


class Trainer:
    """Train `model` on `dataset` with `objective`, as configured by `cfg.train` & co.

    Args:
        model: any nn.Module; moved to the configured device.
        objective: `(model, batch) -> StepOutput`.
        dataset: indexable, `len()`-able; `collate_fn(list_of_items) -> dict batch`.
        cfg: the run config (optim, schedule, losses, train).
        run_dir: where metrics.jsonl, config.yaml and checkpoints/ go.
        arch: the model family ("fusion", "contrastive", "decoder", ...) for the entropy losses.
        evaluate: `model -> {name: value}`, called every `train.eval_every` steps and at the end.
        on_save: called with each checkpoint's (temporary) directory to add files to it.
        eval_at_end: also evaluate after the last step (off when the caller does a fuller one).
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        dataset: Any,
        collate_fn: Callable[[list], dict],
        cfg: RunConfig,
        run_dir: str | Path,
        arch: str = "",
        evaluate: EvalFn | None = None,
        on_save: Callable[[Path], None] | None = None,
        eval_at_end: bool = True,
    ) -> None:
        self.model, self.objective, self.dataset, self.collate_fn = (
            model,
            objective,
            dataset,
            collate_fn,
        )
        self.cfg, self.run_dir, self.arch, self.evaluate = cfg, Path(run_dir), arch, evaluate
        self.device = resolve_device(cfg.train.device)
        self.use_entropy = arch in cfg.losses.entropy_for
        self.on_save, self.eval_at_end = on_save, eval_at_end
        self.optimizer: torch.optim.Optimizer | None = None
        self._stage_index = -1

    # ------------------------------------------------------------------ setup

    def _enter_stage(self, index: int, stages: list[StageConfig]) -> None:
        stage = stages[index]
        if len(stages) > 1 or stage.trainable != ["*"]:
            set_trainable(self.model, stage.trainable)
        self.optimizer = build_optimizer(self.model, self.cfg.optim, lr=stage.lr)
        self._stage_index = index
        if len(stages) > 1:
            log.info(
                "stage %d/%d %r: %d steps, trainable %s",
                index + 1,
                len(stages),
                stage.name,
                stage.steps,
                stage.trainable,
            )

    def _autocast(self):
        if resolve_precision(self.cfg.train.precision, self.device) == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _next_batch(self, order: DataOrder) -> dict:
        items = [self.dataset[i] for i in order.next(self.cfg.train.batch_size)]
        return _to_device(self.collate_fn(items), self.device)

    # ------------------------------------------------------------------ one optimizer step

    def _forward_loss(self, batch: dict) -> tuple[Tensor, dict[str, Tensor], Sequence]:
        with self._autocast():
            out = self.objective(self.model, batch)
        aux_total, aux_terms = moe_aux_losses(out.moe_aux, self.cfg.losses, self.use_entropy)
        loss = out.loss.float() if aux_total is None else out.loss.float() + aux_total
        terms = {"loss/task": out.loss.detach(), **{f"loss/{k}": v for k, v in aux_terms.items()}}
        terms.update(out.metrics)
        return loss, terms, out.moe_aux

    def _step(self, step: int, order: DataOrder) -> tuple[float, dict[str, float], int]:
        assert self.optimizer is not None
        accum = self.cfg.train.grad_accum
        totals: dict[str, float] = {}
        loss_sum, n_examples, last_aux = 0.0, 0, ()
        for _ in range(accum):
            batch = self._next_batch(order)
            loss, terms, last_aux = self._forward_loss(batch)
            value = loss.item()
            if not math.isfinite(value):
                where = locate_nonfinite_forward(
                    self.model, lambda b=batch: self.objective(self.model, b)
                )
                raise NonFiniteError(
                    f"step {step + 1}: loss is {value}"
                    + (f"; first non-finite value in layer {where}" if where else "")
                )
            (loss / accum).backward()
            loss_sum += value / accum
            n_examples += _batch_size(batch)
            for k, v in terms.items():
                totals[k] = totals.get(k, 0.0) + float(v) / accum
        self._check_grads(step)
        if self.cfg.optim.grad_clip is not None:
            params = [p for p in self.model.parameters() if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip)
            totals["grad_norm"] = float(norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if last_aux and uses_balance_bias(self.model):
            from vlmoe.moe.layer import update_balance_bias

            # Aux-loss-free balancing (DeepSeek-V3): after the step, from the last micro-batch.
            update_balance_bias(self.model, list(last_aux))
        totals.update(routing_summary(last_aux))
        return loss_sum, totals, n_examples

    def _check_grads(self, step: int) -> None:
        named = [(n, p.grad) for n, p in self.model.named_parameters() if p.grad is not None]
        if not named:
            raise TrainingError(f"step {step + 1}: no parameter received a gradient")
        ok = torch.stack([torch.isfinite(g).all() for _, g in named]).all()
        if not bool(ok):
            name = next(n for n, g in named if not torch.isfinite(g).all())
            layer = name.rsplit(".", 1)[0]
            raise NonFiniteError(
                f"step {step + 1}: gradient of {name} holds NaN/Inf (layer {layer})"
            )

    # ------------------------------------------------------------------ the loop

    def _resume_state(self, resume: bool | str | Path) -> tuple[Path | None, dict | None]:
        if resume is False or resume is None:
            return None, None
        path = latest_checkpoint(self.run_dir) if resume is True else Path(resume)
        if path is None:
            raise CheckpointError(
                f"{self.run_dir}: nothing to resume (no checkpoints/step_* directory)"
            )
        return path, read_trainer_state(path)

    def fit(self, resume: bool | str | Path = False) -> TrainResult:
        """Train to `cfg.train.total_steps`; `resume=True` continues from the latest checkpoint."""
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cfg.to_yaml(self.run_dir / "config.yaml")
        seed_everything(cfg.train.seed, cfg.train.deterministic)
        if cfg.train.num_threads is not None:
            torch.set_num_threads(cfg.train.num_threads)
        self.model.to(self.device).train()
        warn_if_unbalanced(self.model, cfg.losses, self.use_entropy)
        top_k, warned_top1 = max_top_k(self.model), False
        stages = _stages(cfg)
        bounds = [sum(s.steps for s in stages[: i + 1]) for i in range(len(stages))]
        total = bounds[-1]

        ckpt_path, state = self._resume_state(resume)
        start = 0 if state is None else int(state["step"])
        stage_of = lambda s: next(i for i, b in enumerate(bounds) if s < b)  # noqa: E731
        self._enter_stage(stage_of(min(start, total - 1)), stages)
        order = DataOrder(size=len(self.dataset), seed=cfg.train.seed)
        losses: list[float] = []
        if state is not None:
            load_checkpoint(ckpt_path, self.model, self.optimizer)
            order = DataOrder.from_state(state["data_order"])
            losses = list(state.get("losses", []))
            log.info("resumed from %s at step %d", ckpt_path, start)
        metrics = MetricsLogger(
            self.run_dir, resume_step=start if state else None, tensorboard=cfg.train.tensorboard
        )
        progress = Progress(total, initial=start, mode=cfg.train.progress)
        t0 = time.perf_counter()
        window: dict[str, float] = {}
        # Throughput counts the optimizer steps' own time (batching included), so evaluations
        # and checkpoints between steps never slow the logged rate down.
        window_n, window_ex, window_s = 0, 0, 0.0
        run_ex, ckpt, final_eval, step_seconds = 0, None, {}, 0.0
        try:
            for step in range(start, total):
                index = stage_of(step)
                if index != self._stage_index:
                    self._enter_stage(index, stages)
                stage = stages[index]
                stage_start = bounds[index] - stage.steps
                base = stage.lr if stage.lr is not None else cfg.optim.lr
                lr = base * lr_factor(step - stage_start, stage.steps, cfg.schedule)
                set_lr(self.optimizer, lr)
                t_step = time.perf_counter()
                loss, terms, n_ex = self._step(step, order)
                t_step = time.perf_counter() - t_step
                step_seconds += t_step
                losses.append(loss)
                run_ex += n_ex
                window_n, window_ex, window_s = window_n + 1, window_ex + n_ex, window_s + t_step
                window["loss"] = window.get("loss", 0.0) + loss
                for k, v in terms.items():
                    window[k] = window.get(k, 0.0) + v
                done = step + 1
                rate = window_ex / max(window_s, 1e-9)
                progress.update(loss, rate)
                if done % cfg.train.log_every == 0 or done == total:
                    record = {k: v / window_n for k, v in window.items()}
                    record.update(lr=lr, examples_per_s=rate, stage=stage.name)
                    metrics.log(done, "train", record)
                    eff = record.get("moe/effective_top_k")
                    if eff is not None and not warned_top1 and done > cfg.schedule.warmup_steps:
                        warned_top1 = warn_if_top1_in_effect(eff, top_k, done)
                    # With a progress bar on screen the bar shows this; keep the log quiet.
                    log.log(
                        logging.DEBUG if progress.active else logging.INFO,
                        "step %d/%d loss %.4f (%.0f ex/s)",
                        done,
                        total,
                        record["loss"],
                        rate,
                    )
                    window, window_n, window_ex, window_s = {}, 0, 0, 0.0
                if self.evaluate is not None and (
                    (done == total and self.eval_at_end)
                    or (cfg.train.eval_every and done % cfg.train.eval_every == 0 and done != total)
                ):
                    results = self.evaluate(self.model)
                    self.model.train()
                    metrics.log(done, "eval", results)
                    final_eval = results
                if done == total or (
                    cfg.train.checkpoint_every and done % cfg.train.checkpoint_every == 0
                ):
                    ckpt = save_checkpoint(
                        self.run_dir,
                        done,
                        self.model,
                        self.optimizer,
                        {
                            "data_order": order.state_dict(),
                            "losses": losses,
                            "stage": stage.name,
                            "arch": self.arch,
                            "task": cfg.task,
                        },
                        keep_last=cfg.train.keep_last,
                        extra=self.on_save,
                    )
        finally:
            progress.close()
            metrics.close()
        seconds = time.perf_counter() - t0
        if self.evaluate is not None and self.eval_at_end and not final_eval and start >= total:
            final_eval = self.evaluate(self.model)
        return TrainResult(
            run_dir=self.run_dir,
            steps=total,
            losses=losses,
            eval=final_eval,
            seconds=seconds,
            examples_per_s=run_ex / max(step_seconds, 1e-9),
            checkpoint=ckpt or latest_checkpoint(self.run_dir),
        )
