"""The training loop: AdamW, warm-up + cosine, clipping, accumulation, bf16, checkpoints, resume.

`Trainer` is task-agnostic: an *objective* turns `(model, batch)` into a `StepOutput` (task loss,
logged scalars, the model's `moe_aux` list), and the trainer adds the MoE auxiliary losses
(`vlmoe.train.moe_losses`), steps the optimizer, runs the aux-loss-free bias update when a layer
has it enabled, logs, evaluates and checkpoints. Staged training (MoE-LLaVA) switches the
trainable parameters and restarts the optimizer and schedule at each stage boundary.

Batches come through a `torch.utils.data.DataLoader` (`data.num_workers` worker processes, 0 by
default) whose batch sampler walks a `DataOrder`: `dataset[k]` is called with stream positions
`k = epoch * len(dataset) + index` (`vlmoe.tasks.TaskDataset` takes them as they are; wrap other
map-style datasets in `vlmoe.tasks.data.Cycle`).

Many processes (`torchrun`, `vlmoe train --nproc N`): a `vlmoe.distributed.Runtime` wraps the
model (expert parallel, DDP or FSDP2), gives each rank its share of every global batch, makes
the router losses global, reduces gradients, and saves checkpoints in the single-process layout
from rank 0, which alone logs and evaluates. With one process it is a no-op.

Exact resume: the data order's position, every RNG, the optimizer state and the step are
stored, and the learning rate is a pure function of the step, so a resumed run computes the same
losses as an uninterrupted one (same device and thread count).

EMA weights (`vlmoe.train.ema`): with `ema_decay` > 0 (a task's `ema_decay`, e.g. a diffusion
model's) the trainer keeps an average of the weights, updated after every optimizer step, saved
in each checkpoint as `ema.safetensors`, restored on resume, and handed to `evaluate`;
`sampling_model()` is the model to export.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vlmoe.data.order import DataOrder
from vlmoe.distributed.runtime import Runtime
from vlmoe.eval.routing import RoutingStats, starved_experts_warning
from vlmoe.io import write_text_atomic
from vlmoe.moe.layer import update_balance_bias
from vlmoe.nn.machine import resolve_precision
from vlmoe.tasks.base import StepOutput
from vlmoe.tasks.data import train_loader
from vlmoe.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_model_weights,
    read_trainer_state,
    save_checkpoint,
    save_weights_file,
)
from vlmoe.train.config import RunConfig, StageConfig
from vlmoe.train.ema import EMA, EMA_WEIGHTS
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


class StopRequest:
    """Ctrl-C (SIGINT) during training asks the loop to stop after the step in progress, so
    the checkpoint it then writes is consistent; a second Ctrl-C stops at once. Only in the
    main thread (elsewhere signals cannot be caught, and Ctrl-C works as usual)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stopping after this step to write a checkpoint (Ctrl-C again to stop now)")

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class _Window:
    """Running sums of one logging window. Throughput counts the optimizer steps' own time
    (batching included), so evaluations and checkpoints between steps never slow it down."""

    steps: int = 0
    examples: int = 0
    seconds: float = 0.0
    sums: dict[str, float] = field(default_factory=dict)

    def add(self, loss: float, terms: dict[str, float], examples: int, seconds: float) -> None:
        self.steps, self.examples, self.seconds = (
            self.steps + 1,
            self.examples + examples,
            self.seconds + seconds,
        )
        for k, v in {"loss": loss, **terms}.items():
            self.sums[k] = self.sums.get(k, 0.0) + v

    @property
    def rate(self) -> float:
        return self.examples / max(self.seconds, 1e-9)

    def means(self) -> dict[str, float]:
        return {k: v / self.steps for k, v in self.sums.items()}


@dataclass
class _Loop:
    """The state of one `fit` call."""

    stages: list[StageConfig]
    bounds: list[int]  # cumulative step count at the end of each stage
    start: int
    order: DataOrder  # advanced with every batch taken: what a checkpoint stores
    batches: Any  # iterator over the DataLoader's batches
    losses: list[float]
    metrics: MetricsLogger
    progress: Progress
    window: _Window = field(default_factory=_Window)
    examples: int = 0
    step_seconds: float = 0.0
    checkpoint: Path | None = None
    final_eval: dict[str, Any] = field(default_factory=dict)
    warned_top1: bool = False
    routing: RoutingStats = field(default_factory=RoutingStats)

    @property
    def total(self) -> int:
        return self.bounds[-1]

    def stage_of(self, step: int) -> int:
        return next(i for i, b in enumerate(self.bounds) if step < b)


class _NoMetrics:
    """What ranks other than 0 log to: nothing."""

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


class Trainer:
    """Train `model` on `dataset` with `objective`, as configured by `cfg.train` & co.

    Args:
        model: any nn.Module; moved to the configured device.
        objective: `(model, batch) -> StepOutput` (a task's `loss`).
        dataset: map-style, indexed by stream position (see the module docstring);
            `collate_fn(list_of_items) -> dict batch`.
        cfg: the run config (optim, schedule, losses, train, data.num_workers).
        run_dir: where metrics.jsonl, config.yaml and checkpoints/ go.
        arch: the model family ("fusion", "contrastive", "decoder", ...) for the entropy losses.
        evaluate: `model -> {name: value}`, called every `train.eval_every` steps and at the end.
        on_save: called with each checkpoint's (temporary) directory to add files to it.
        eval_at_end: also evaluate after the last step (off when the caller does a fuller one).
        runtime: the distributed runtime (`vlmoe.distributed.Runtime.start`); one process if None.
        ema_decay: keep EMA weights with this decay (0 = none); see the module docstring.
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
        runtime: Runtime | None = None,
        ema_decay: float = 0.0,
    ) -> None:
        self.model, self.objective = model, objective
        self.dataset, self.collate_fn = dataset, collate_fn
        self.cfg, self.run_dir, self.arch, self.evaluate = cfg, Path(run_dir), arch, evaluate
        self.device = resolve_device(cfg.train.device)
        if runtime is not None and runtime.distributed:
            self.device = runtime.mesh.device  # this rank's GPU under torchrun
        self.runtime = runtime or Runtime.single(self.device)
        self.forward_model = model  # what the objective calls: the DDP wrapper, if any
        self.use_entropy = arch in cfg.losses.entropy_for
        self.on_save, self.eval_at_end = on_save, eval_at_end
        self.optimizer: torch.optim.Optimizer | None = None
        self._last_aux: Sequence = ()
        self._stage_index = -1
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        self.ema_decay = ema_decay
        self.ema: EMA | None = None
        self._precision: str | None = None  # fp32 / bf16, settled in `_setup`

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

    def _autocast(self, precision: str | None = None):
        precision = precision or self._precision
        if precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _settle_precision(self) -> str:
        """The training precision, decided once. `auto` on a CPU whose bf16 matmuls are fast
        (`resolve_precision`) still times this model: a fast bf16 GEMM does not make a small
        model's step faster, where autocast's casts and per-op costs outweigh it (a 1.7M DiT
        step: 731 ms of CPU in bf16 against 422 ms in fp32 on a CPU whose bf16 matmul is 3.4x
        fp32's). One process only; distributed runs keep the machine's rule, the same on every
        rank."""
        choice = resolve_precision(self.cfg.train.precision, self.device)
        if (
            self.cfg.train.precision == "auto"
            and choice == "bf16"
            and self.device.type == "cpu"
            and not self.runtime.distributed
        ):
            seconds = self._time_precisions()
            choice = min(seconds, key=seconds.get)
            log.info(
                "precision auto: %s for this model (a training step's forward and backward took "
                "%.1f ms in fp32, %.1f ms under bf16 autocast)",
                choice,
                1e3 * seconds["fp32"],
                1e3 * seconds["bf16"],
            )
        self._precision = choice
        return choice

    def _time_precisions(self, repeats: int = 2) -> dict[str, float]:
        """Best time of the forward and backward of one training batch in fp32 and under bf16
        autocast, interleaved after a warm-up of each. Leaves no trace: gradients, buffers
        (e.g. batch-norm statistics) and the RNG state are put back as they were."""
        rng = torch.get_rng_state()
        n = min(len(self.dataset), self.cfg.train.batch_size)
        batch = _to_device(self.collate_fn([self.dataset[i] for i in range(n)]), self.device)
        buffers = {k: v.clone() for k, v in self.model.named_buffers()}
        best = {"fp32": math.inf, "bf16": math.inf}
        for rep in range(repeats + 1):
            for precision in best:
                start = time.perf_counter()
                with self._autocast(precision):
                    out = self.objective(self.forward_model, batch)
                out.loss.float().backward()
                if rep:  # the first round warms up
                    best[precision] = min(best[precision], time.perf_counter() - start)
                self.model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, value in self.model.named_buffers():
                value.copy_(buffers[name])
        torch.set_rng_state(rng)
        return best

    def _resume_state(self, resume: bool | str | Path) -> tuple[Path | None, dict | None]:
        if resume is False or resume is None:
            return None, None
        path = latest_checkpoint(self.run_dir) if resume is True else Path(resume)
        if path is None:
            raise CheckpointError(
                f"{self.run_dir}: nothing to resume (no checkpoints/step_* directory)"
            )
        return path, read_trainer_state(path)

    def _setup(self, resume: bool | str | Path) -> _Loop:
        """Seed, place the model, restore a checkpoint, open the data, metrics and progress."""
        cfg = self.cfg
        seed_everything(cfg.train.seed, cfg.train.deterministic)
        if cfg.train.num_threads is not None:
            torch.set_num_threads(cfg.train.num_threads)
        self.model.to(self.device).train()
        if self.ema_decay and self.runtime.distributed:
            raise TrainingError(
                f"EMA weights (ema_decay={self.ema_decay}) are kept by single-process training "
                "only; train on one process, or turn EMA off (flow.ema_decay=0)"
            )
        if self.runtime.module is None:  # expert parallel, DDP/FSDP2; before the optimizer
            self.forward_model = self.runtime.wrap(self.model)
        warn_if_unbalanced(self.model, cfg.losses, self.use_entropy)
        stages = _stages(cfg)
        bounds = [sum(s.steps for s in stages[: i + 1]) for i in range(len(stages))]
        ckpt_path, state = self._resume_state(resume)
        start = 0 if state is None else int(state["step"])
        order = DataOrder(size=len(self.dataset), seed=cfg.train.seed)
        losses: list[float] = []
        index = next(i for i, b in enumerate(bounds) if min(start, bounds[-1] - 1) < b)
        self._enter_stage(index, stages)
        if state is not None:
            # A checkpoint from the stage before a boundary holds that stage's optimizer state;
            # the uninterrupted run starts the new stage with a fresh optimizer, and so does this.
            same_stage = state.get("stage_index", index) == index
            # Checkpoints hold the single-process layout: load into a plain model, then shard.
            plain = self.runtime.plain_model()
            opt = self.runtime.optimizer_for_loading(self.optimizer) if same_stage else None
            load_checkpoint(ckpt_path, plain, opt)
            self.runtime.load_full_state_dict(plain.state_dict())
            order = DataOrder.from_state(state["data_order"])
            losses = list(state.get("losses", []))
            log.info("resumed from %s at step %d", ckpt_path, start)
        self.model.to(self.device)
        self._setup_ema(ckpt_path, state)
        # A resumed run keeps the precision it ran in (exact resume), whatever a new timing says.
        self._precision = (state or {}).get("precision") or self._settle_precision()
        loader = train_loader(
            self.dataset,
            self.collate_fn,
            order,
            cfg.train.batch_size,
            cfg.data.num_workers,
            take=self.runtime.local_indices,
        )
        rank0 = self.runtime.is_rank0
        return _Loop(
            stages=stages,
            bounds=bounds,
            start=start,
            order=order,
            batches=iter(loader),
            losses=losses,
            metrics=MetricsLogger(
                self.run_dir,
                resume_step=start if state else None,
                tensorboard=cfg.train.tensorboard,
            )
            if rank0
            else _NoMetrics(),
            progress=Progress(
                bounds[-1], initial=start, mode=cfg.train.progress if rank0 else "none"
            ),
        )

    def _setup_ema(self, ckpt_path: Path | None, state: dict | None) -> None:
        """Start the EMA weights from the model, or restore them from the checkpoint."""
        if not self.ema_decay:
            return
        self.ema = EMA(self.model, self.ema_decay)
        if state is None:
            return
        if "ema_updates" not in state or not (ckpt_path / EMA_WEIGHTS).is_file():
            raise CheckpointError(
                f"{ckpt_path}: no EMA weights ({EMA_WEIGHTS}) in this checkpoint, but the run "
                f"keeps them (ema_decay={self.ema_decay})"
            )
        load_model_weights(self.ema.model, ckpt_path, EMA_WEIGHTS)
        self.ema.num_updates = int(state["ema_updates"])

    def sampling_model(self) -> nn.Module:
        """The model to evaluate and export: the EMA weights when kept, else the model."""
        return self.ema.model if self.ema is not None else self.model

    # ------------------------------------------------------------------ one optimizer step

    def _next_batch(self, loop: _Loop) -> dict:
        loop.order.next(self.cfg.train.batch_size)  # keep the checkpointed position in step
        return _to_device(next(loop.batches), self.device)

    def _forward_loss(self, batch: dict) -> tuple[Tensor, dict[str, Tensor], Sequence]:
        with self._autocast():
            out = self.objective(self.forward_model, batch)
        # Router losses over the global batch (each rank's own batch on one process).
        auxes = self.runtime.global_aux(out.moe_aux)
        aux_total, aux_terms = moe_aux_losses(auxes, self.cfg.losses, self.use_entropy)
        loss = out.loss.float() if aux_total is None else out.loss.float() + aux_total
        terms = {"loss/task": out.loss.detach(), **{f"loss/{k}": v for k, v in aux_terms.items()}}
        terms.update(out.metrics)
        return loss, terms, auxes

    def _micro_batch(self, step: int, batch: dict, accum: int) -> tuple[float, dict, Sequence]:
        """Forward and backward of one micro-batch; stops on a non-finite loss."""
        loss, terms, aux = self._forward_loss(batch)
        value = loss.item()
        if not self.runtime.all_finite(math.isfinite(value)):  # every rank stops together
            where = locate_nonfinite_forward(self.model, lambda: self.objective(self.model, batch))
            raise NonFiniteError(
                f"step {step + 1}: loss is {value}"
                + (f"; first non-finite value in layer {where}" if where else "")
            )
        (loss / accum).backward()
        return value, terms, aux

    def _step(self, step: int, loop: _Loop) -> tuple[float, dict[str, float], int]:
        assert self.optimizer is not None
        accum = self.cfg.train.grad_accum
        totals: dict[str, float] = {}
        loss_sum, n_examples, last_aux = 0.0, 0, ()
        for _ in range(accum):
            batch = self._next_batch(loop)
            value, terms, last_aux = self._micro_batch(step, batch, accum)
            loss_sum += value / accum
            n_examples += _batch_size(batch)
            for k, v in terms.items():
                totals[k] = totals.get(k, 0.0) + float(v) / accum
        self.runtime.finish_backward()
        self._check_grads(step)
        if self.cfg.optim.grad_clip is not None:
            totals["grad_norm"] = self.runtime.clip_grad_norm(self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        if last_aux and uses_balance_bias(self.model):
            # Aux-loss-free balancing (DeepSeek-V3): after the step, from the last micro-batch.
            update_balance_bias(self.model, list(last_aux))
        totals.update(routing_summary(last_aux))
        self._last_aux = last_aux
        if self.runtime.distributed:  # the global batch's numbers, the same on every rank
            totals = self.runtime.mean_metrics({"loss": loss_sum, **totals})
            loss_sum = totals.pop("loss")
            n_examples *= self.runtime.world_size
        return loss_sum, totals, n_examples

    def _check_grads(self, step: int) -> None:
        # FSDP2 gradients are DTensors: check this rank's shard (the ranks then agree).
        named = [
            (n, getattr(p.grad, "to_local", lambda g=p.grad: g)())
            for n, p in self.model.named_parameters()
            if p.grad is not None
        ]
        if not named:
            raise TrainingError(f"step {step + 1}: no parameter received a gradient")
        ok = torch.stack([torch.isfinite(g).all() for _, g in named]).all()
        if not self.runtime.all_finite(bool(ok)):
            name = next((n for n, g in named if not torch.isfinite(g).all()), "on another rank")
            layer = name.rsplit(".", 1)[0]
            raise NonFiniteError(
                f"step {step + 1}: gradient of {name} holds NaN/Inf (layer {layer})"
            )

    # ------------------------------------------------------------------ the loop

    def _lr(self, step: int, loop: _Loop) -> float:
        """The learning rate of `step`: a pure function of the step and the stage."""
        index = loop.stage_of(step)
        stage = loop.stages[index]
        base = stage.lr if stage.lr is not None else self.cfg.optim.lr
        return base * lr_factor(
            step - (loop.bounds[index] - stage.steps), stage.steps, self.cfg.schedule
        )

    def _train_step(self, loop: _Loop, step: int) -> None:
        index = loop.stage_of(step)
        if index != self._stage_index:
            self._enter_stage(index, loop.stages)
        set_lr(self.optimizer, self._lr(step, loop))
        t = time.perf_counter()
        loss, terms, n_examples = self._step(step, loop)
        t = time.perf_counter() - t
        loop.step_seconds += t
        loop.examples += n_examples
        loop.losses.append(loss)
        loop.window.add(loss, terms, n_examples, t)
        loop.progress.update(loss, loop.window.rate)

    def _log_window(self, loop: _Loop, done: int) -> None:
        """Write the window's means to metrics.jsonl; warn once if top-k routing collapsed."""
        record = loop.window.means()
        record.update(
            lr=self._lr(done - 1, loop),
            examples_per_s=loop.window.rate,
            stage=loop.stages[loop.stage_of(done - 1)].name,
        )
        loop.metrics.log(done, "train", record)
        if self._last_aux:  # expert loads, sampled once a window, for the starved-expert check
            loop.routing.update(list(self._last_aux))
        eff = record.get("moe/effective_top_k")
        if eff is not None and not loop.warned_top1 and done > self.cfg.schedule.warmup_steps:
            loop.warned_top1 = warn_if_top1_in_effect(eff, max_top_k(self.model), done)
        # With a progress bar on screen the bar shows this; keep the log quiet (and one rank's).
        log.log(
            logging.DEBUG if loop.progress.active or not self.runtime.is_rank0 else logging.INFO,
            "step %d/%d loss %.4f (%.0f ex/s)",
            done,
            loop.total,
            record["loss"],
            loop.window.rate,
        )
        loop.window = _Window()

    def _maybe_evaluate(self, loop: _Loop, done: int) -> None:
        every = self.cfg.train.eval_every
        at_end = done == loop.total and self.eval_at_end
        periodic = every and done % every == 0 and done != loop.total
        if self.evaluate is None or not (at_end or periodic):
            return
        loop.final_eval = self._evaluate()
        loop.metrics.log(done, "eval", loop.final_eval)

    def _evaluate(self) -> dict[str, Any]:
        """Evaluate on rank 0, on a single-process copy (EP off: no collectives to hang on)."""
        # Collective under torchrun; the EMA weights (single process only) when kept.
        model = self.ema.model if self.ema is not None else self.runtime.eval_model()
        results = self.evaluate(model) if self.runtime.is_rank0 else {}
        self.model.train()
        return results

    def _maybe_checkpoint(self, loop: _Loop, done: int, now: bool = False) -> None:
        every = self.cfg.train.checkpoint_every
        if every is None:  # periodic checkpoints sized to the run
            every = max(1, math.ceil(loop.total / 10))
        if not now and done != loop.total and not (every and done % every == 0):
            return
        index = loop.stage_of(done - 1)
        # Gathered on every rank (experts, FSDP shards, optimizer moments); rank 0 writes.
        model = self.runtime.full_model()
        optimizer = self.runtime.optimizer_for_saving(self.optimizer)
        if not self.runtime.is_rank0:
            loop.checkpoint = self.run_dir / "checkpoints" / f"step_{done:07d}"
            self.runtime.barrier()
            return
        loop.checkpoint = save_checkpoint(
            self.run_dir,
            done,
            model,
            optimizer,
            {
                "data_order": loop.order.state_dict(),
                "losses": loop.losses,
                "stage": loop.stages[index].name,
                "stage_index": index,
                "arch": self.arch,
                "task": self.cfg.task,
                "precision": self._precision,
                **({"ema_updates": self.ema.num_updates} if self.ema is not None else {}),
            },
            keep_last=self.cfg.train.keep_last,
            extra=self._save_extra,
        )
        self.runtime.barrier()

    def _save_extra(self, directory: Path) -> None:
        """Files a checkpoint holds besides weights, optimizer and RNG: EMA weights, on_save's."""
        if self.ema is not None:
            save_weights_file(self.ema.model, directory / EMA_WEIGHTS)
        if self.on_save is not None:
            self.on_save(directory)

    def fit(self, resume: bool | str | Path = False) -> TrainResult:
        """Train to `cfg.train.total_steps`; `resume=True` continues from the latest checkpoint."""
        loop = self._setup(resume)  # a failed resume stops here, before anything is written
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.runtime.is_rank0:
            write_text_atomic(self.run_dir / "config.yaml", self.cfg.to_yaml())
        t0 = time.perf_counter()
        try:
            with StopRequest() as stop:
                for step in range(loop.start, loop.total):
                    self._train_step(loop, step)
                    done = step + 1
                    if done % self.cfg.train.log_every == 0 or done == loop.total:
                        self._log_window(loop, done)
                    self._maybe_evaluate(loop, done)
                    # A stop asked on any rank stops every rank, after one checkpoint.
                    stopping = self.runtime.any_rank(stop.requested)
                    self._maybe_checkpoint(loop, done, now=stopping)
                    if stopping:
                        raise KeyboardInterrupt(
                            f"interrupted after step {done}; checkpoint {loop.checkpoint} "
                            "written: continue with --resume"
                        )
        finally:
            loop.progress.close()
            loop.metrics.close()
        starved = starved_experts_warning(loop.routing.summaries()) if loop.routing.sums else None
        if starved:
            log.warning("%s", starved)
        if self.evaluate is not None and self.eval_at_end and loop.start >= loop.total:
            loop.final_eval = self._evaluate()
        return TrainResult(
            run_dir=self.run_dir,
            steps=loop.total,
            losses=loop.losses,
            eval=loop.final_eval,
            seconds=time.perf_counter() - t0,
            examples_per_s=loop.examples / max(loop.step_seconds, 1e-9),
            checkpoint=loop.checkpoint or latest_checkpoint(self.run_dir),
        )
