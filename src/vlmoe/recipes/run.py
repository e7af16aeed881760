"""A training run from a `RunConfig`: data, tokenizer, task, model, evaluators, and `train`.

This is the library entry point behind `vlmoe train` and the demo:

    from vlmoe.recipes.run import train
    result = train(RunConfig().with_overrides(["model.preset=fusion-debug"]), "runs/x")

A run directory ends up holding `config.yaml`, `metrics.jsonl`, `checkpoints/step_*/`,
`eval.json`, and `model/` (the final model: `config.json`, `model.safetensors`,
`tokenizer.json`, and `task.json` with the task, label names and answer vocabulary that
`vlmoe predict` needs). Every checkpoint directory is a model directory too.

Everything task-specific comes from the run's `Task` object (`vlmoe.tasks`); nothing here
branches on a task or architecture name.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vlmoe.config import ConfigError
from vlmoe.data.registry import load_dataset
from vlmoe.data.tokenizer import Tokenizer
from vlmoe.distributed.runtime import Runtime
from vlmoe.eval.routing import RoutingEvaluator, moe_layer_names
from vlmoe.eval.runner import evaluate as run_evaluators
from vlmoe.io import CheckpointError
from vlmoe.models import load_model
from vlmoe.models.base import architectures, count_parameters
from vlmoe.models.checkpoint import read_config
from vlmoe.models.registry import get_preset, preset_config
from vlmoe.tasks import Task, TaskDataset, TaskInfo, eval_loader, resolve_task
from vlmoe.train.checkpoint import latest_checkpoint, load_model_weights
from vlmoe.train.config import DataSelection, ModelSelection, RunConfig
from vlmoe.train.ema import EMA_WEIGHTS, write_weights_note
from vlmoe.train.metrics import MetricsLogger, ProgressLoader
from vlmoe.train.trainer import Trainer, TrainResult

log = logging.getLogger(__name__)

MODEL_DIR = "model"


# ----------------------------------------------------------------------------- data


def load_datasets(data: DataSelection, image_size: int) -> tuple[Any, Any]:
    """(train, held-out) datasets of `vlmoe.data.Sample`s for a data selection."""
    if data.name == "shapes":
        world = data.world(image_size)
        return (
            load_dataset("shapes", "train", shapes=world, num=data.num_train),
            load_dataset("shapes", "test", shapes=world, num=data.num_eval),
        )
    if data.name in ("mnist", "digits", "photos"):
        return load_dataset(data.name, "train"), load_dataset(data.name, "test")
    train_set = _file_dataset(data, data.path)
    if data.eval_path:
        return train_set, _file_dataset(data, data.eval_path)
    return split_dataset(train_set, data.eval_fraction, data.seed)


def _file_dataset(data: DataSelection, path: str | None) -> Any:
    opts = {"on_error": data.on_error, "check": data.check, "max_pixels": data.max_pixels}
    if data.name == "coco":
        root = data.image_root or _coco_image_root(Path(str(path)))
        return load_dataset("coco", **{data.coco: path}, image_root=root, **opts)
    return load_dataset(str(path), **opts)


def _coco_image_root(annotations: Path) -> Path:
    """Where COCO images are when `data.image_root` is not set: the `images` folder beside the
    annotations file if there is one (as `vlmoe data --format coco` writes), else its folder."""
    beside = annotations.parent / "images"
    return beside if beside.is_dir() else annotations.parent


def split_dataset(dataset: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """(train, held-out): a seeded `fraction` of the samples held out."""
    n = len(dataset)
    n_eval = int(round(n * fraction))
    if n_eval == 0 or n_eval >= n:
        return dataset, dataset.subset([])
    perm = np.random.default_rng(seed).permutation(n).tolist()
    return dataset.subset(sorted(perm[n_eval:])), dataset.subset(sorted(perm[:n_eval]))


def train_tokenizer(dataset: Any, vocab_size: int) -> Tokenizer:
    """A BPE tokenizer trained on the training set's text (captions, questions, answers)."""
    texts = list(dataset.texts())
    if not texts:
        raise ValueError("the training data has no text to train a tokenizer on")
    return Tokenizer.train(texts, vocab_size=vocab_size)


# ----------------------------------------------------------------------------- model


def model_image_size(config: Any) -> int:
    """The input image side of a model config (its own, or its vision tower's)."""
    vision = getattr(config, "vision", None)
    return vision.image_size if vision is not None else config.image_size


def _model_config(sel: ModelSelection) -> tuple[str, Any]:
    """(architecture, config) of the model a selection names, overrides applied."""
    if sel.init_from:
        return read_config(sel.init_from)
    config = preset_config(sel.preset)
    return get_preset(sel.preset).architecture, config.with_overrides(dict(sel.overrides))


def build_model(sel: ModelSelection, task: Task, vocab_size: int | None) -> nn.Module:
    """A model from a preset, with the sizes the task and tokenizer fix (the user's overrides
    win), or the model saved at `init_from`."""
    if sel.init_from:
        return load_model(sel.init_from)
    preset = get_preset(sel.preset)
    config = preset_config(sel.preset)
    auto: dict[str, Any] = {
        k: v for k, v in task.model_sizes().items() if config.find(k) is not None
    }
    if vocab_size is not None and config.find("vocab_size") is not None:
        auto["vocab_size"] = vocab_size
    if task.info.max_len and config.find("max_seq_len") is not None:
        auto["max_seq_len"] = task.info.max_len
    config = config.with_overrides(auto).with_overrides(dict(sel.overrides))
    return architectures()[preset.architecture](config)


# ----------------------------------------------------------------------------- a run


@dataclasses.dataclass
class Run:
    """Everything `train` / `evaluate` need, built from a RunConfig by `prepare`."""

    cfg: RunConfig
    model: nn.Module
    task: Task
    train_data: TaskDataset | None
    eval_data: TaskDataset | None

    @property
    def info(self) -> TaskInfo:
        return self.task.info

    @property
    def tokenizer(self) -> Any:
        return self.task.tokenizer


def prepare(cfg: RunConfig) -> Run:
    """Load data, train (or load) the tokenizer, build the task and the model."""
    sel = cfg.model
    architecture, model_cfg = _model_config(sel)
    task_cls = resolve_task(cfg.task, architecture)
    image_size = model_image_size(model_cfg)
    train_set, eval_set = load_datasets(cfg.data, image_size)
    tokenizer, max_len = None, 0
    if task_cls.needs_text:
        if sel.init_from:
            tokenizer = Tokenizer.load(sel.init_from)
        else:
            vocab = cfg.data.tokenizer_vocab or model_cfg.find("vocab_size") or 512
            tokenizer = train_tokenizer(train_set, vocab)
        max_len = model_cfg.find("max_seq_len") or 32
    info = TaskInfo(
        task_cls.name,
        architecture,
        image_size,
        max_len,
        list(getattr(train_set, task_cls.label_field)),
        list(train_set.answer_vocab),
    )
    options = {"config": getattr(cfg, task_cls.config_field)} if task_cls.config_field else {}
    task = task_cls(info, tokenizer, **options)
    task.max_new_tokens = cfg.eval.max_new_tokens
    task.label_smoothing = cfg.losses.label_smoothing
    task.flow = cfg.flow
    augment = cfg.data.augment if cfg.data.augment.active else None
    train_data = TaskDataset(
        train_set, task.examples(train_set, "train"), image_size, augment, cfg.train.seed
    )
    eval_data = None
    if eval_set is not None and len(eval_set):
        eval_data = TaskDataset(eval_set, task.examples(eval_set, "eval"), image_size)
    torch.manual_seed(cfg.train.seed)  # the initial weights depend on the seed alone
    model = build_model(sel, task, tokenizer.vocab_size if tokenizer is not None else None)
    if tokenizer is not None:
        model.tokenizer = tokenizer
    return Run(cfg, model, task, train_data, eval_data)


def make_evaluators(
    run: Run, max_examples: int | None = None, batch_size: int = 64, routing: bool = True
) -> dict[str, Any]:
    """The task's evaluators over the run's held-out examples, plus routing statistics for an
    MoE model."""
    if run.eval_data is None:
        return {}
    loader = ProgressLoader(
        eval_loader(
            run.eval_data, run.task.collate, batch_size, run.cfg.data.num_workers, max_examples
        ),
        f"eval {run.task.name}",
        run.cfg.train.progress,
    )
    out = run.task.evaluators(loader)
    if routing and moe_layer_names(run.model) and "routing" not in out:  # a task may route its own
        out["routing"] = RoutingEvaluator(loader)
    return out


def evaluate(run: Run, out_path: str | Path | None = None, **kwargs: Any) -> dict[str, Any]:
    """Evaluate the run's model on its held-out examples; write `eval.json` when asked."""
    evaluators = make_evaluators(run, **kwargs)
    return run_evaluators(run.model, evaluators, out_path) if evaluators else {}


def save_model(run: Run, directory: str | Path) -> Path:
    """The final model directory: config.json, model.safetensors, tokenizer.json, task.json."""
    directory = Path(directory)
    run.model.save_pretrained(directory)
    run.info.save(directory)
    return directory


def make_trainer(run: Run, cfg: RunConfig, run_dir: str | Path, **kwargs: Any) -> Trainer:
    """A `Trainer` for a prepared run: its model, the task's loss and collate over its
    training examples; `kwargs` go to `Trainer` (evaluate, on_save, eval_at_end, ...)."""
    if run.train_data is None:
        raise ValueError("this run has no training data")
    return Trainer(
        run.model,
        run.task.loss,
        run.train_data,
        run.task.collate,
        cfg,
        Path(run_dir),
        arch=run.info.architecture,
        ema_decay=run.task.ema_decay,
        **kwargs,
    )


def start_run(
    cfg: RunConfig,
    run_dir: str | Path,
    resume: bool | str | Path = False,
    overwrite: bool = False,
    check_dir: bool = True,
) -> tuple[RunConfig, Run]:
    """Check the run directory (`check_run_dir`; one rank of a distributed run does, with
    `check_dir`), settle a resumed run's config (`resume_config`) and prepare the run;
    nothing is written yet."""
    if check_dir:
        check_run_dir(run_dir, bool(resume), overwrite)
    if resume:
        cfg = resume_config(RunConfig.from_yaml(Path(run_dir) / "config.yaml"), cfg)
    return cfg, prepare(cfg)


def describe_run(run: Run, run_dir: str | Path) -> list[str]:
    """The start-of-run summary: model, parameters, task, data and split sizes, steps,
    precision, threads, output directory."""
    cfg = run.cfg
    total, active = count_parameters(run.model)
    source = cfg.model.init_from or cfg.model.preset
    n_eval = len(run.eval_data) if run.eval_data is not None else 0
    data = cfg.data.name + (f" ({cfg.data.path})" if cfg.data.path else "")
    steps = cfg.train.total_steps
    return [
        f"model:  {source} ({run.info.architecture}), {total:,} parameters, {active:,} active",
        f"task:   {run.task.name}",
        f"data:   {data}: {len(run.train_data or [])} training / {n_eval} held-out examples",
        f"train:  {steps} steps of {cfg.train.batch_size} x {cfg.train.grad_accum}, "
        f"{cfg.train.precision}, {torch.get_num_threads()} threads",
        f"out:    {run_dir}",
    ]


def data_of_run(model_dir: str | Path) -> DataSelection | None:
    """The data selection of the run a model directory came from (its config.yaml), if any."""
    cfg = _run_config_near(resolve_model_dir(model_dir))
    return cfg.data if cfg is not None else None


RUN_ENTRIES = ("config.yaml", "metrics.jsonl", "checkpoints", MODEL_DIR, "eval.json")


def check_run_dir(run_dir: str | Path, resume: bool, overwrite: bool = False) -> None:
    """A run directory never mixes two runs' histories: a new run refuses a directory that
    holds a run unless `overwrite` (which clears it first); `resume` needs a run to resume."""
    run_dir = Path(run_dir)
    held = [e for e in RUN_ENTRIES if (run_dir / e).exists()]
    if resume:
        if not (run_dir / "config.yaml").is_file() or latest_checkpoint(run_dir) is None:
            raise CheckpointError(
                f"{run_dir}: nothing to resume (no config.yaml and checkpoints/step_* there)"
            )
        return
    if not held:
        return
    if not overwrite:
        last = latest_checkpoint(run_dir)
        at = f", last checkpoint {last.name}" if last is not None else ""
        raise ConfigError(
            f"{run_dir} already holds a run ({', '.join(held)}{at}); pass --resume to continue "
            "it, --overwrite to delete it and start over, or choose another --out"
        )
    for entry in held:
        path = run_dir / entry
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    log.warning("--overwrite: deleted the run in %s (%s)", run_dir, ", ".join(held))


RESUMABLE_CHANGES = ("train.steps",)  # settings a resumed run may change (longer training)


def resume_config(saved: RunConfig, requested: RunConfig) -> RunConfig:
    """The config a resumed run continues with: the saved one, with only the changes in
    `RESUMABLE_CHANGES` (e.g. more steps) taken from `requested`; any other difference is a
    ConfigError that names each changed setting."""
    old, new = _flat(saved.to_dict()), _flat(requested.to_dict())
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    refused = [k for k in changed if k not in RESUMABLE_CHANGES]
    if refused:
        diff = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in refused)
        raise ConfigError(
            f"--resume continues the run with its saved config.yaml, but these settings differ: "
            f"{diff}. Resume without them, or start a new run (--out elsewhere)"
        )
    if requested.train.steps < saved.train.steps:
        raise ConfigError(
            f"--resume: train.steps={requested.train.steps} is fewer than the run's "
            f"{saved.train.steps}; a resumed run can only train longer"
        )
    for k in changed:
        log.warning("resume: %s changed from %r to %r", k, old.get(k), new.get(k))
    return requested


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict) and v and k != "overrides":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    resume: bool | str | Path = False,
    run: Run | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Prepare (unless `run` is given), train, evaluate, and save `run_dir/model` + eval.json.

    `resume=True` continues the run in `run_dir` (its saved config wins, see `resume_config`);
    a new run refuses a directory that holds one unless `overwrite` (`check_run_dir`).

    Under torchrun every rank calls it (`cfg.parallel` says how the model is spread); rank 0
    alone evaluates and writes the model, from a single-process copy with every expert.
    """
    if run is None:
        cfg, run = start_run(cfg, run_dir, resume, overwrite)
    run_dir = Path(run_dir)
    ev = cfg.eval
    runtime = Runtime.start(cfg.parallel, run.model)

    def evaluate_fn(model: nn.Module) -> dict[str, Any]:
        return evaluate(
            dataclasses.replace(run, model=model),
            None,
            max_examples=ev.max_examples,
            batch_size=ev.batch_size,
            routing=False,
        )

    trainer = make_trainer(
        run,
        cfg,
        run_dir,
        evaluate=evaluate_fn if run.eval_data is not None else None,
        on_save=run.info.save,
        eval_at_end=False,
        runtime=runtime,
    )
    try:
        result = trainer.fit(resume=resume)
        # The EMA weights when the task keeps them (one process), else every rank's shards.
        trained = trainer.ema.model if trainer.ema is not None else runtime.full_model()
        final_run = dataclasses.replace(run, model=trained)
        if not runtime.is_rank0:  # nothing left to do together: rank 0 evaluates alone
            return result
        save_model(final_run, run_dir / MODEL_DIR)
        write_weights_note(run_dir / MODEL_DIR, trainer.ema)
        # The final evaluation uses every held-out example (periodic ones use max_examples).
        final = evaluate(final_run, run_dir / "eval.json", batch_size=ev.batch_size)
    finally:
        runtime.close()
    if final:
        metrics = MetricsLogger(run_dir, resume_step=result.steps, tensorboard="none")
        metrics.log(
            result.steps,
            "eval",
            {
                k: v
                for k, v in final.items()
                if isinstance(v, int | float) and not k.startswith("routing/")
            },
        )
        metrics.close()
    result.eval = final
    return result


# ----------------------------------------------------------------------------- loading for use


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory from a run directory (its `model/`, else its latest checkpoint), a
    checkpoint directory, or a model directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such run or model directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: expected a run or model directory, got a file")
    if (path / "config.json").is_file():
        return path
    if (path / MODEL_DIR / "config.json").is_file():
        return path / MODEL_DIR
    ckpt = latest_checkpoint(path)
    if ckpt is not None and (ckpt / "config.json").is_file():
        return ckpt
    raise CheckpointError(
        f"{path}: not a model directory (no config.json) nor a run directory (no model/)"
    )


def load_trained(path: str | Path) -> tuple[nn.Module, Task]:
    """(model in eval mode, its task) from a run / model / checkpoint directory. A model
    without `task.json` gets its architecture's default task. A checkpoint of a run that kept
    EMA weights gives them (what sampling uses), not the raw training weights. Inside a run
    directory the task gets the run's settings (`config.yaml`): an image generator samples
    with the steps, sampler and guidance it was trained and scored with."""
    directory = resolve_model_dir(path)
    model = load_model(directory)
    if (directory / EMA_WEIGHTS).is_file():  # a training checkpoint of a run that keeps EMA
        load_model_weights(model, directory, EMA_WEIGHTS)
        log.info("%s: using the EMA weights (%s)", directory, EMA_WEIGHTS)
    info = TaskInfo.load(directory)
    if info is None:
        arch = model.architecture
        info = TaskInfo(
            resolve_task("auto", arch).name,
            arch,
            model_image_size(model.config),
            model.config.find("max_seq_len") or 0,
        )
    tokenizer = None
    if (directory / "tokenizer.json").is_file():
        tokenizer = Tokenizer.load(directory)
    task_cls = resolve_task(info.task, info.architecture)
    if task_cls.needs_text and tokenizer is None:
        raise CheckpointError(
            f"{directory}: no tokenizer.json, but this {info.architecture} model ({info.task}) "
            "reads text: copy in the tokenizer.json it was trained with"
        )
    task = task_cls(info, tokenizer)
    run_cfg = _run_config_near(directory)
    if run_cfg is not None:
        task.flow = run_cfg.flow
    model.eval()
    return model, task


def _run_config_near(directory: Path) -> RunConfig | None:
    """The config.yaml of the run a model / checkpoint directory belongs to, if any."""
    for candidate in (directory, directory.parent, directory.parent.parent):
        path = candidate / "config.yaml"
        if path.is_file():
            return RunConfig.from_yaml(path)
    return None


def prepare_eval(path: str | Path, data: DataSelection | None = None) -> Run:
    """A Run for evaluating a saved model: its held-out data is `data`, else the data of the
    run it came from (its config.yaml), else the scene world's test split."""
    model, task = load_trained(path)
    cfg = _run_config_near(resolve_model_dir(path)) or RunConfig()
    if data is not None:
        cfg = cfg.replace(data=data)
    _, eval_set = load_datasets(cfg.data, task.info.image_size)
    if eval_set is None or not len(eval_set):
        raise ValueError(f"no held-out data to evaluate on (data.name={cfg.data.name!r})")
    task.max_new_tokens = cfg.eval.max_new_tokens
    eval_data = TaskDataset(eval_set, task.examples(eval_set, "eval"), task.info.image_size)
    return Run(cfg, model, task, None, eval_data)


def prepare_twin(run: Run, cfg: RunConfig) -> Run:
    """A Run for another model over the same data, tokenizer and task as `run` (e.g. the MoE
    twin of a dense model): only the model is built anew, from `cfg.model`."""
    torch.manual_seed(cfg.train.seed)
    tokenizer = run.tokenizer
    model = build_model(cfg.model, run.task, tokenizer.vocab_size if tokenizer else None)
    if tokenizer is not None:
        model.tokenizer = tokenizer
    return dataclasses.replace(run, cfg=cfg, model=model)
