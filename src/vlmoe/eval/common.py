"""Shared plumbing for the evaluators: batch forwarding, device moves, sync-free sums.

Every evaluator in `vlmoe.eval` is an object with `run(model) -> Iterator[(name, value)]`
(the big_vision pattern: one evaluator a file, each yielding named scalars). The helpers here
keep the drivers thin: `default_forward` calls a model with the batch entries its `forward`
accepts, and `TensorSum` adds per-batch counts on the device so that a whole evaluation costs
one host sync per metric rather than one per step.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch

BatchFn = Callable[[torch.nn.Module, dict], Any]


class Evaluator(Protocol):
    """What the runner needs from an evaluator."""

    def run(self, model: torch.nn.Module) -> Any:  # Iterator[tuple[str, float]]
        ...


@functools.lru_cache(maxsize=64)
def _forward_params(forward: Callable) -> tuple[frozenset[str], bool]:
    params = inspect.signature(forward).parameters.values()
    names = frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
    return names, takes_kwargs


def model_inputs(model: torch.nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
    """The batch entries that `model.forward` takes by name (all tensors if it takes **kwargs)."""
    names, takes_kwargs = _forward_params(type(model).forward)
    if takes_kwargs:
        return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    return {k: v for k, v in batch.items() if k in names}


def default_forward(model: torch.nn.Module, batch: Mapping[str, Any]) -> Any:
    """`model(**inputs)` with the batch entries the model's forward accepts."""
    return model(**model_inputs(model, batch))


def get_field(output: Any, name: str) -> Any:
    """`output.name`, or `output[name]` for a mapping; a clear error when absent."""
    if isinstance(output, Mapping):
        if name in output:
            return output[name]
    elif hasattr(output, name):
        return getattr(output, name)
    raise KeyError(f"model output {type(output).__name__} has no field {name!r}")


def batch_field(batch: Mapping[str, Any], key: str, evaluator: str) -> Any:
    """`batch[key]`, or a KeyError that names the evaluator, the key and the keys there are
    (e.g. a loader giving "labels" to an evaluator told to read "label")."""
    if key not in batch:
        raise KeyError(
            f"{evaluator}: the batch has no {key!r} entry (it has {sorted(batch)}); "
            f"pass the right key to {evaluator}(...)"
        )
    return batch[key]


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-free module)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors of a dict batch to `device` (non-tensors pass through)."""
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


class TensorSum:
    """A running sum kept on the device: `add` never syncs, `value` syncs once."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach()
        self.total = x.clone() if self.total is None else self.total + x

    def tensor(self) -> torch.Tensor | None:
        return self.total

    def value(self) -> float:
        if self.total is None:
            return 0.0
        return self.total.item() if self.total.numel() == 1 else self.total.tolist()


def encode_texts(
    model: torch.nn.Module, tokenizer: Any, texts: list[str], batch_size: int = 256
) -> torch.Tensor:
    """(N, D) embeddings of `texts` by `model.encode_text`, tokenized as training does.

    `tokenizer` is vlmoe's (`vlmoe.data.tokenizer.Tokenizer`: `encode_batch` adds <bos>/<eos>
    and pads); texts are cut at the model's `max_seq_len` when its config has one.
    """
    device = model_device(model)
    max_len = getattr(getattr(model, "config", None), "max_seq_len", None)
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer.encode_batch(texts[i : i + batch_size], add_special=True, max_len=max_len)
        ids = enc["input_ids"].to(device)
        mask = enc["attention_mask"].long().to(device)
        out.append(model.encode_text(ids, mask))
    return torch.cat(out)
