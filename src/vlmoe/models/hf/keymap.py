"""Explicit key maps between a Hugging Face state dict and a vlmoe model.

A family's importer asks a `StateReader` for each Hugging Face tensor it needs, with the shape
its config implies. The reader records every missing and mis-shaped key and, at `finish`, every
key nobody asked for (unless the family names it as unused, e.g. a pooler vlmoe does not build),
and raises one `HFImportError` listing all of them. Nothing is ever loaded with `strict=False`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vlmoe.models.hf.files import HFImportError


def _listing(keys: Sequence[str], limit: int = 12) -> str:
    more = f" ... ({len(keys)} in all)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


class StateReader:
    """Hands out Hugging Face tensors by name, recording what is missing, mis-shaped, or left."""

    def __init__(self, tensors: dict[str, Tensor], source: str, prefix: str = "") -> None:
        self.tensors, self.source, self.prefix = tensors, source, prefix
        self.used: set[str] = set()
        self.missing: list[str] = []
        self.misshaped: list[str] = []

    def has(self, key: str) -> bool:
        return self.prefix + key in self.tensors

    def take(self, key: str, shape: Sequence[int]) -> Tensor:
        """The tensor `prefix + key`, expected to have `shape`. A missing or mis-shaped one is
        recorded and stands in as zeros, so that every problem is found before `finish`."""
        full = self.prefix + key
        shape = tuple(int(s) for s in shape)
        t = self.tensors.get(full)
        if t is None:
            self.missing.append(full)
            return torch.zeros(shape)
        self.used.add(full)
        if tuple(t.shape) != shape:
            self.misshaped.append(f"{full} {tuple(t.shape)} (expected {shape})")
            return torch.zeros(shape)
        return t.float() if t.is_floating_point() else t

    def finish(self, unused: Sequence[str] = ()) -> None:
        """Raise one error listing missing, mis-shaped and unexpected keys, if any. `unused`
        are regular expressions of keys the checkpoint may hold that vlmoe does not need."""
        patterns = [re.compile(p) for p in unused]
        unexpected = sorted(
            k for k in set(self.tensors) - self.used if not any(p.fullmatch(k) for p in patterns)
        )
        problems = []
        if self.missing:
            problems.append(f"missing keys: {_listing(self.missing)}")
        if self.misshaped:
            problems.append(f"mis-shaped keys: {_listing(self.misshaped)}")
        if unexpected:
            problems.append(f"unexpected keys: {_listing(unexpected)}")
        if problems:
            raise HFImportError(f"{self.source}: " + "; ".join(problems))


def load_exact(module: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Load `state` into `module`, whose every tensor it must cover with the same shape."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = [k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or bad:
        raise HFImportError(
            f"{source}: the key map does not fit the model (missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}, mis-shaped {bad[:8]})"
        )
    module.load_state_dict(
        {k: v.to(own[k].dtype).contiguous() for k, v in state.items()}, strict=True
    )
