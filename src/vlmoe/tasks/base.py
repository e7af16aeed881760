"""The task protocol: what every task (classification, VQA, captioning, ...) gives the rest.

A task is an object, not a string. The trainer, evaluation, `predict`, `inspect` and the server
only call the methods below, so a new task is one new file that subclasses `Task` and registers
itself (`vlmoe.tasks.registry.register_task`):

- `model_sizes()`: sizes the task fixes in the model config (`num_classes`, `num_answers`);
- `examples(dataset, split)`: the task's examples over a dataset of `Sample`s, read from the
  samples' metadata (`VLDataset.describe`) so no image is decoded; one example per image for
  classification, per (image, question) for VQA, per (image, caption) when training captioning;
- `collate(items)`: a list of `(Sample, Example)` (images already pre-processed, per item, in
  the DataLoader) -> the dict batch every model and evaluator of the task reads;
- `loss(model, batch)`: the task loss as a `StepOutput` (the trainer adds the MoE losses);
- `evaluators(loader)`: the `vlmoe.eval` evaluators over held-out batches;
- `predict(model, image, text)`: one input -> a `Prediction`, used by `vlmoe predict`,
  `vlmoe inspect` (which draws the routing of `Prediction.output`) and the server.

One batch schema (keys present when the task has them): `images` (B, 3, S, S) float in [-1, 1];
`input_ids` (B, L) long and `attention_mask` (B, L) bool, right-padded, <bos> ... <eos>;
`label` (B,) long; `answer_id` (B,) long; `answer` list[str]; `question_type` list[str];
`captions` list[list[str]] (references). Missing targets are `IGNORE_INDEX` (-100).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from vlmoe.config import ConfigError
from vlmoe.data.collate import IGNORE_INDEX, stack_images
from vlmoe.data.sample import Sample
from vlmoe.data.transforms import preprocess_image
from vlmoe.io import CheckpointError, write_text_atomic

TASK_FILE = "task.json"
log = logging.getLogger(__name__)

__all__ = [
    "IGNORE_INDEX",
    "TASK_FILE",
    "Example",
    "Prediction",
    "StepOutput",
    "Task",
    "TaskInfo",
]


@dataclass
class TaskInfo:
    """What a trained model needs besides its weights to be used: saved as `task.json`."""

    task: str
    architecture: str
    image_size: int
    max_len: int
    label_names: list[str] = field(default_factory=list)
    answer_vocab: list[str] = field(default_factory=list)

    def save(self, directory: str | Path) -> None:
        text = json.dumps(dataclasses.asdict(self), indent=2) + "\n"
        write_text_atomic(Path(directory) / TASK_FILE, text)

    @classmethod
    def load(cls, directory: str | Path) -> TaskInfo | None:
        path = Path(directory) / TASK_FILE
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as e:
            raise CheckpointError(f"{path}: corrupt task file ({e})") from None


@dataclass(frozen=True)
class Example:
    """One example: sample `sample` of the dataset and which of its texts (`part`: the index of
    a question or caption; -1 = all of them, as evaluation references)."""

    sample: int
    part: int = 0


@dataclass
class StepOutput:
    """What a task's loss returns for one micro-batch."""

    loss: Tensor  # scalar task loss (MoE aux losses are added by the trainer)
    metrics: dict[str, Tensor] = field(default_factory=dict)  # extra scalars to log
    moe_aux: Sequence = ()  # the model's MoEAux list, one per MoE layer
    num_examples: int = 0


@dataclass
class Prediction:
    """What `Task.predict` found for one input.

    `kind` says what `text` is ("label", "answer", "caption", "match"); `scores` are the top
    candidates, best first; `extra` holds secondary results (e.g. a fusion model's label);
    `output` is the model output of the forward pass over this input (its `moe_aux` is the
    routing `inspect` draws) and `tokens` the text tokens that pass saw, in order.
    """

    kind: str
    text: str
    scores: list[tuple[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    output: Any = None
    tokens: list[str] = field(default_factory=list)


def top_scores(logits: Tensor, names: Sequence[str], k: int) -> list[tuple[str, float]]:
    """The `k` most probable of `names` under softmax(`logits`), best first."""
    probs = logits.float().softmax(-1)
    values, ids = probs.topk(min(k, probs.shape[-1]))
    return [
        (names[i] if i < len(names) else str(i), float(v))
        for v, i in zip(values.tolist(), ids.tolist())
    ]


def accuracy(logits: Tensor, target: Tensor) -> Tensor:
    """Fraction of non-ignored targets predicted right (a tensor: no host sync)."""
    valid = target != IGNORE_INDEX
    return ((logits.argmax(-1) == target) & valid).sum() / valid.sum().clamp_min(1)


class Task:
    """Base class of every task; see the module docstring for the protocol.

    Subclasses set `name`, `architectures` (the model families it trains), `default_for` (the
    families whose default task it is), `needs_text` (a tokenizer is required) and `headline`
    (the result keys a summary shows), and
    implement `examples`, `collate`, `loss`, `evaluators` and `predict`.
    """

    name: ClassVar[str] = ""
    architectures: ClassVar[tuple[str, ...]] = ()
    default_for: ClassVar[tuple[str, ...]] = ()
    needs_text: ClassVar[bool] = False
    headline: ClassVar[tuple[str, ...]] = ()  # the evaluation results a summary shows first
    predicts: ClassVar[tuple[str, ...]] = ()  # the `Prediction.kind`s its `predict` gives
    label_smoothing: float = 0.0  # of class / answer losses (a run sets losses.label_smoothing)
    # The dataset attribute whose names become `TaskInfo.label_names` (detection: the box labels).
    label_field: ClassVar[str] = "label_names"
    # The run config field (`vlmoe.train.RunConfig`) holding the task's own options, passed to
    # its constructor as `config` ("": none).
    config_field: ClassVar[str] = ""

    def __init__(self, info: TaskInfo, tokenizer: Any = None) -> None:
        if self.needs_text and tokenizer is None:
            raise ConfigError(f"task {self.name!r} needs a tokenizer (tokenizer.json) to read text")
        self.info, self.tokenizer = info, tokenizer
        self._answer_index = {a: i for i, a in enumerate(info.answer_vocab)}

    # ------------------------------------------------------------------ the protocol

    def model_sizes(self) -> dict[str, int]:
        """Config fields the task fixes from the data (bare field names)."""
        return {}

    def examples(self, dataset: Any, split: str) -> list[Example]:
        raise NotImplementedError

    def collate(self, items: Sequence[tuple[Sample, Example]]) -> dict[str, Any]:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        raise NotImplementedError

    def evaluators(self, loader: Any) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def ema_decay(self) -> float:
        """Keep EMA weights with this decay in training, and evaluate, export and sample with
        them (0 = none; a diffusion task asks for them)."""
        return 0.0

    def predict(
        self, model: nn.Module, image: np.ndarray, text: str | None = None, **options: Any
    ) -> Prediction:
        raise NotImplementedError

    # ------------------------------------------------------------------ shared helpers

    def image_batch(self, image: np.ndarray, model: nn.Module) -> Tensor:
        """(1, 3, S, S) on the model's device: the one pre-processing of `preprocess_image`."""
        device = next(model.parameters()).device
        return preprocess_image(image, self.info.image_size)[None].to(device)

    def encode(self, texts: Sequence[str], device: torch.device | str = "cpu") -> dict[str, Tensor]:
        """`input_ids` and `attention_mask` of `texts` as training encodes them (<bos> ... <eos>,
        cut at the model's `max_len`, right-padded)."""
        if self.tokenizer is None:
            raise ConfigError("this model has no tokenizer.json, so it cannot read text")
        enc = self.tokenizer.encode_batch(list(texts), max_len=self.info.max_len or None)
        return {k: enc[k].to(device) for k in ("input_ids", "attention_mask")}

    def encode_input(self, text: str, device: torch.device | str) -> dict[str, Tensor]:
        """`encode` for a user's text at prediction time; a text longer than the model reads
        is cut as in training, and the user is told."""
        n = len(self.tokenizer.encode(text)) if self.tokenizer is not None else 0
        if self.info.max_len and n > self.info.max_len:
            log.warning(
                "the text is %d tokens (with <bos> and <eos>); this model reads %d, so it was "
                "cut to its first %d tokens",
                n,
                self.info.max_len,
                self.info.max_len - 1,
            )
        return self.encode([text], device)

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        return [self.tokenizer.token_string(int(i)) for i in ids]

    def answer_id(self, answer: str) -> int:
        return self._answer_index.get(answer, IGNORE_INDEX)

    @staticmethod
    def images(items: Sequence[tuple[Sample, Example]]) -> Tensor:
        return stack_images([s for s, _ in items])  # (B, 3, S, S)

    @staticmethod
    def labels(items: Sequence[tuple[Sample, Example]]) -> Tensor:
        return torch.tensor(
            [IGNORE_INDEX if s.label is None else int(s.label) for s, _ in items], dtype=torch.long
        )
