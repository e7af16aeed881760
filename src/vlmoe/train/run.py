"""A training run from a `RunConfig`: data, tokenizer, model, task, evaluators, and `train`.

This is the library entry point behind `vlmoe train` and the demo:

    from vlmoe.train import RunConfig, train
    result = train(RunConfig().with_overrides(["model.preset=fusion-debug"]), "runs/x")

A run directory ends up holding `config.yaml`, `metrics.jsonl`, `checkpoints/step_*/`,
`eval.json`, and `model/` (the final model: `config.json`, `model.safetensors`,
`tokenizer.json`, and `task.json` with the task, label names and answer vocabulary that
`vlmoe predict` needs). Every checkpoint directory is a model directory too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vlmoe.train.checkpoint import CheckpointError, latest_checkpoint
from vlmoe.train.config import DataSelection, ModelSelection, RunConfig
from vlmoe.train.metrics import MetricsLogger
from vlmoe.train.tasks import (
    Collator,
    Examples,
    batches,
    build_examples,
    caption_fn,
    iter_answers,
    make_objective,
    resolve_task,
)
from vlmoe.train.trainer import Trainer, TrainResult

log = logging.getLogger(__name__)

TASK_FILE = "task.json"
MODEL_DIR = "model"


@dataclasses.dataclass
class TaskInfo:
    """What a trained model needs besides its weights to be used: saved as `task.json`."""

    task: str
    architecture: str
    image_size: int
    max_len: int
    label_names: list[str] = dataclasses.field(default_factory=list)
    answer_vocab: list[str] = dataclasses.field(default_factory=list)

    def save(self, directory: str | Path) -> None:
        (Path(directory) / TASK_FILE).write_text(
            json.dumps(dataclasses.asdict(self), indent=2) + "\n"
        )

    @classmethod
    def load(cls, directory: str | Path) -> TaskInfo | None:
        path = Path(directory) / TASK_FILE
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as e:
            raise CheckpointError(f"{path}: corrupt task file ({e})") from None


# ----------------------------------------------------------------------------- data


def load_datasets(data: DataSelection, image_size: int) -> tuple[Any, Any]:
    """(train, held-out) datasets of `vlmoe.data.Sample`s for a data selection."""
    opts = dict(data.options)
    if data.name == "shapes":
        from vlmoe.data.shapes import ShapesConfig
        from vlmoe.data.shapes_data import ShapesDataset

        world = ShapesConfig(
            **{"image_size": max(16, data.image_size or image_size), "seed": data.seed, **opts}
        )
        return ShapesDataset(world, "train", data.num_train), ShapesDataset(
            world, "test", data.num_eval
        )
    if data.name in ("mnist", "digits"):
        from vlmoe.data.real import DigitsDataset, MnistDataset

        cls = MnistDataset if data.name == "mnist" else DigitsDataset
        return cls("train"), cls("test")
    if data.name == "jsonl":
        from vlmoe.data.manifest import ManifestDataset

        make = lambda p: ManifestDataset(p, **opts)  # noqa: E731
    elif data.name == "folder":
        from vlmoe.data.files import ImageFolderDataset

        make = lambda p: ImageFolderDataset(p, **opts)  # noqa: E731
    else:
        from vlmoe.data.coco import CocoDataset

        def make(p):
            return CocoDataset(data.image_root or Path(p).parent, captions=p, **opts)

    train_set = make(data.path)
    if data.eval_path:
        return train_set, make(data.eval_path)
    return _split(train_set, data.eval_fraction, data.seed)


class _Subset:
    def __init__(self, base: Any, indices: list[int]) -> None:
        self.base, self.indices = base, indices
        for name in ("label_names", "answer_vocab"):
            setattr(self, name, getattr(base, name, []))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.base[self.indices[i]]

    def texts(self):
        for i in self.indices:
            yield from self.base[i].texts()


def _split(dataset: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    n = len(dataset)
    n_eval = int(round(n * fraction))
    if n_eval == 0 or n_eval >= n:
        return dataset, _Subset(dataset, [])
    perm = np.random.default_rng(seed).permutation(n).tolist()
    return _Subset(dataset, sorted(perm[n_eval:])), _Subset(dataset, sorted(perm[:n_eval]))


def train_tokenizer(dataset: Any, vocab_size: int):
    """A BPE tokenizer trained on the training set's text (captions, questions, answers)."""
    from vlmoe.data.tokenizer import Tokenizer

    texts = (
        list(dataset.texts())
        if hasattr(dataset, "texts")
        else [t for s in dataset for t in s.texts()]
    )
    if not texts:
        raise ValueError("the training data has no text to train a tokenizer on")
    return Tokenizer.train(texts, vocab_size=vocab_size)


# ----------------------------------------------------------------------------- model


def _image_size(config: Any) -> int:
    vision = getattr(config, "vision", None)
    return vision.image_size if vision is not None else config.image_size


def _text_fields(architecture: str) -> bool:
    return architecture in ("fusion", "contrastive", "decoder", "text")


def build_model(
    sel: ModelSelection,
    *,
    vocab_size: int | None = None,
    num_classes: int | None = None,
    num_answers: int | None = None,
    max_len: int | None = None,
) -> nn.Module:
    """A model from a preset (with data-dependent sizes filled in) or from `init_from`."""
    if sel.init_from:
        from vlmoe.models import load_model

        return load_model(sel.init_from)
    from vlmoe.models.base import architectures
    from vlmoe.registry import get_preset, preset_config, resolve_overrides

    preset = get_preset(sel.preset)
    config = preset_config(sel.preset)
    auto: dict[str, Any] = {}
    if vocab_size is not None and _text_fields(preset.architecture):
        auto["vocab_size"] = vocab_size
    if max_len is not None and _text_fields(preset.architecture):
        auto["max_seq_len"] = max(max_len, 1)
    if num_classes and preset.architecture in ("vit", "fusion"):
        auto["num_classes"] = num_classes
    if num_answers and preset.architecture == "fusion":
        auto["num_answers"] = num_answers
    overrides = {
        **resolve_overrides(config, auto),
        **resolve_overrides(config, dict(sel.overrides)),
    }
    config = config.with_overrides(overrides)
    return architectures()[preset.architecture](config)


# ----------------------------------------------------------------------------- a run


@dataclasses.dataclass
class Run:
    """Everything `train` / `evaluate` need, built from a RunConfig by `prepare`."""

    cfg: RunConfig
    model: nn.Module
    info: TaskInfo
    tokenizer: Any
    train_examples: Examples | None
    eval_examples: Examples | None
    train_collate: Collator | None
    eval_collate: Collator | None


def prepare(cfg: RunConfig) -> Run:
    """Load data, train the tokenizer, build the model, and flatten the task's examples."""
    from vlmoe.registry import get_preset, preset_config

    sel = cfg.model
    if sel.init_from:
        from vlmoe.models.checkpoint import read_config

        architecture, model_cfg = read_config(sel.init_from)
    else:
        from vlmoe.registry import resolve_overrides

        architecture = get_preset(sel.preset).architecture
        model_cfg = preset_config(sel.preset)
        model_cfg = model_cfg.with_overrides(resolve_overrides(model_cfg, dict(sel.overrides)))
    task = resolve_task(cfg.task, architecture)
    image_size = _image_size(model_cfg)
    train_set, eval_set = load_datasets(cfg.data, image_size)
    label_names = list(getattr(train_set, "label_names", []))
    answer_vocab = list(getattr(train_set, "answer_vocab", []))
    needs_text = task != "classification"
    tokenizer, max_len = None, 0
    if needs_text:
        if sel.init_from:
            from vlmoe.data.tokenizer import Tokenizer

            tokenizer = Tokenizer.load(sel.init_from)
        else:
            vocab = cfg.data.tokenizer_vocab or _find(model_cfg, "vocab_size") or 512
            tokenizer = train_tokenizer(train_set, vocab)
        max_len = _find(model_cfg, "max_seq_len") or 32
    train_ex = build_examples(train_set, task, image_size, "train", answer_vocab, label_names)
    eval_ex = None
    if eval_set is not None and len(eval_set):
        eval_ex = build_examples(eval_set, task, image_size, "eval", answer_vocab, label_names)
    torch.manual_seed(cfg.train.seed)  # the initial weights depend on the seed alone
    model = build_model(
        sel,
        vocab_size=tokenizer.vocab_size if tokenizer is not None else None,
        num_classes=len(label_names) or None,
        num_answers=len(answer_vocab) or None if task.startswith("vqa") else None,
        max_len=max_len or None,
    )
    if tokenizer is not None:
        model.tokenizer = tokenizer
    info = TaskInfo(task, architecture, image_size, max_len, label_names, answer_vocab)
    return Run(
        cfg,
        model,
        info,
        tokenizer,
        train_ex,
        eval_ex,
        Collator(train_ex, tokenizer, max_len),
        Collator(eval_ex, tokenizer, max_len) if eval_ex is not None else None,
    )


def _find(config: Any, name: str) -> Any:
    """The value of field `name` anywhere in a nested config (first found)."""
    if hasattr(config, name):
        return getattr(config, name)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            found = _find(value, name)
            if found is not None:
                return found
    return None


def make_evaluators(
    run: Run,
    max_examples: int | None = None,
    batch_size: int = 64,
    max_new_tokens: int = 24,
    routing: bool = True,
) -> dict[str, Any]:
    """The evaluators of a run's task over its held-out examples (`vlmoe.eval`)."""
    if run.eval_examples is None:
        return {}
    from vlmoe.eval.classification import ClassificationEvaluator
    from vlmoe.eval.routing import RoutingEvaluator
    from vlmoe.eval.vqa import VQAEvaluator

    data = batches(run.eval_examples, run.eval_collate, batch_size, max_examples)
    task, out = run.info.task, {}
    if task in ("classification", "vqa+classification"):
        field = "logits" if run.info.architecture == "vit" else "class_logits"
        forward = (lambda m, b: m(images=b["images"])) if task == "classification" else None
        out["classification"] = ClassificationEvaluator(data, forward=forward, logits_field=field)
    if task in ("vqa", "vqa+classification"):
        vocab = run.info.answer_vocab
        out["vqa"] = VQAEvaluator(data, lambda m, b: list(iter_answers(m, b, vocab)))
    if task == "captioning":
        from vlmoe.eval.captioning import CaptioningEvaluator

        out["captioning"] = CaptioningEvaluator(data, caption_fn(run.tokenizer, max_new_tokens))
    if task == "contrastive":
        from vlmoe.eval.retrieval import RetrievalEvaluator

        if run.cfg.data.name == "shapes":  # every caption of an image, recall per caption kind
            from vlmoe.data.grammar import caption_kind

            out["retrieval"] = RetrievalEvaluator(
                data, tokenizer=run.tokenizer, text_kind=caption_kind
            )
        else:
            out["retrieval"] = RetrievalEvaluator(data, image_id_key=None)
    if routing and any(True for m in run.model.modules() if type(m).__name__ == "MoELayer"):
        out["routing"] = RoutingEvaluator(data)
    return out


def evaluate(run: Run, out_path: str | Path | None = None, **kwargs: Any) -> dict[str, Any]:
    """Evaluate the run's model on its held-out examples; write `eval.json` when asked."""
    from vlmoe.eval.runner import evaluate as run_evaluators

    evaluators = make_evaluators(run, **kwargs)
    return run_evaluators(run.model, evaluators, out_path) if evaluators else {}


def save_model(run: Run, directory: str | Path) -> Path:
    """The final model directory: config.json, model.safetensors, tokenizer.json, task.json."""
    directory = Path(directory)
    run.model.save_pretrained(directory)
    run.info.save(directory)
    return directory


def make_trainer(run: Run, cfg: RunConfig, run_dir: str | Path, **kwargs: Any) -> Trainer:
    """A `Trainer` for a prepared run: its model, the task's objective, its training examples
    and collator; `kwargs` go to `Trainer` (evaluate, on_save, eval_at_end, ...)."""
    return Trainer(
        run.model,
        make_objective(run.info.task, run.info.architecture, cfg.losses.label_smoothing),
        run.train_examples,
        run.train_collate,
        cfg,
        Path(run_dir),
        arch=run.info.architecture,
        **kwargs,
    )


def train(
    cfg: RunConfig, run_dir: str | Path, resume: bool | str | Path = False, run: Run | None = None
) -> TrainResult:
    """Prepare (unless `run` is given), train, evaluate, and save `run_dir/model` + eval.json."""
    run = run or prepare(cfg)
    run_dir = Path(run_dir)
    ev = cfg.eval

    def evaluate_fn(model: nn.Module) -> dict[str, Any]:
        return evaluate(
            run,
            None,
            max_examples=ev.max_examples,
            batch_size=ev.batch_size,
            max_new_tokens=ev.max_new_tokens,
            routing=False,
        )

    trainer = make_trainer(
        run,
        cfg,
        run_dir,
        evaluate=evaluate_fn if run.eval_examples is not None else None,
        on_save=run.info.save,
        eval_at_end=False,
    )
    result = trainer.fit(resume=resume)
    save_model(run, run_dir / MODEL_DIR)
    # The final evaluation uses every held-out example (periodic ones use eval.max_examples).
    final = evaluate(
        run, run_dir / "eval.json", batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens
    )
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


def load_trained(path: str | Path) -> tuple[nn.Module, TaskInfo, Any]:
    """(model in eval mode, TaskInfo, tokenizer or None) from a run / model / checkpoint dir."""
    from vlmoe.models import load_model

    directory = resolve_model_dir(path)
    model = load_model(directory)
    info = TaskInfo.load(directory)
    if info is None:
        arch = model.architecture
        info = TaskInfo(
            resolve_task("auto", arch) if arch != "text" else "text",
            arch,
            _image_size(model.config) if arch != "text" else 0,
            _find(model.config, "max_seq_len") or 0,
        )
    tokenizer = None
    if (directory / "tokenizer.json").is_file():
        from vlmoe.data.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(directory)
    model.eval()
    return model, info, tokenizer


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
    model, info, tokenizer = load_trained(path)
    directory = resolve_model_dir(path)
    cfg = _run_config_near(directory) or RunConfig()
    if data is not None:
        cfg = cfg.replace(data=data)
    _, eval_set = load_datasets(cfg.data, info.image_size)
    if eval_set is None or not len(eval_set):
        raise ValueError(f"no held-out data to evaluate on (data.name={cfg.data.name!r})")
    eval_ex = build_examples(
        eval_set, info.task, info.image_size, "eval", info.answer_vocab, info.label_names
    )
    return Run(
        cfg, model, info, tokenizer, None, eval_ex, None, Collator(eval_ex, tokenizer, info.max_len)
    )


def prepare_twin(run: Run, cfg: RunConfig) -> Run:
    """A Run for another model over the same data, tokenizer and examples as `run` (e.g. the
    MoE twin of a dense model): only the model is built anew, from `cfg.model`."""
    info = run.info
    torch.manual_seed(cfg.train.seed)
    model = build_model(
        cfg.model,
        vocab_size=run.tokenizer.vocab_size if run.tokenizer is not None else None,
        num_classes=len(info.label_names) or None,
        num_answers=len(info.answer_vocab) or None if info.task.startswith("vqa") else None,
        max_len=info.max_len or None,
    )
    if run.tokenizer is not None:
        model.tokenizer = run.tokenizer
    return dataclasses.replace(run, cfg=cfg, model=model)
