"""EMA weights: an exponential moving average of a model's parameters kept beside training
(Polyak averaging), the weights a diffusion model samples with (DiT, Peebles & Xie 2023).

A task asks for it by its `ema_decay` (> 0); the trainer then updates the average after every
optimizer step, stores it in each checkpoint as `ema.safetensors` (the training weights stay in
`model.safetensors`, so resume is exact), evaluates with it, and exports it as the run's model.
`weights.json` in an exported model directory says which weights `model.safetensors` holds.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlmoe.io import CheckpointError, write_text_atomic

EMA_WEIGHTS = "ema.safetensors"  # in a training checkpoint, beside model.safetensors
WEIGHTS_NOTE = "weights.json"  # in an exported model directory


def ema_decay_at(decay: float, num_updates: int) -> float:
    """The decay of update number `num_updates` (from 1): min(decay, (1 + n) / (10 + n)).

    The warm-up (as in TensorFlow's ExponentialMovingAverage) keeps a short run's average from
    being dominated by the random initialization: with decay 0.999 and no warm-up, 1,000 steps
    leave 37% of the initial weights in the average.
    """
    return min(decay, (1 + num_updates) / (10 + num_updates))


class EMA:
    """ema = d * ema + (1 - d) * param after every optimizer step, d = `ema_decay_at`; buffers
    are copied. `model` is the averaged copy (eval mode, no gradients)."""

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        weight = 1.0 - ema_decay_at(self.decay, self.num_updates)
        ema_params = dict(self.model.named_parameters())
        for name, p in model.named_parameters():
            ema_params[name].lerp_(p.detach(), weight)
        ema_buffers = dict(self.model.named_buffers())
        for name, b in model.named_buffers():
            ema_buffers[name].copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.num_updates = int(state["num_updates"])


def write_weights_note(directory: str | Path, ema: EMA | None) -> None:
    """Record in a model directory which weights its `model.safetensors` holds."""
    if ema is None:
        note: dict[str, Any] = {"weights": "trained"}
    else:
        note = {
            "weights": "ema",
            "ema_decay": ema.decay,
            "ema_updates": ema.num_updates,
            "note": "model.safetensors holds the exponential moving average of the training "
            "weights (what sampling uses); the raw training weights are in the run's "
            "checkpoints (model.safetensors there, the average in ema.safetensors)",
        }
    write_text_atomic(Path(directory) / WEIGHTS_NOTE, json.dumps(note, indent=2) + "\n")


def read_weights_note(directory: str | Path) -> dict[str, Any] | None:
    path = Path(directory) / WEIGHTS_NOTE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupt ({e})") from None
