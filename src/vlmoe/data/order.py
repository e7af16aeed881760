"""The order in which training examples are visited, as a small resumable state.

Each epoch is a fresh permutation drawn from a generator seeded by (seed, epoch), so the order
depends on nothing but the seed and the position `(epoch, cursor)`; a checkpoint stores those
two integers and resume continues with exactly the batches the uninterrupted run would have
seen. Batches run across epoch boundaries, so every batch is full.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DataOrder:
    size: int
    seed: int = 0
    epoch: int = 0
    cursor: int = 0

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"the training set is empty (size={self.size})")
        self._perm = self._permutation(self.epoch)

    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=g)

    def next(self, batch_size: int) -> list[int]:
        """The next `batch_size` example indices, moving to a new epoch when one runs out."""
        out: list[int] = []
        while len(out) < batch_size:
            if self.cursor >= self.size:
                self.epoch, self.cursor = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
            take = min(batch_size - len(out), self.size - self.cursor)
            out.extend(self._perm[self.cursor : self.cursor + take].tolist())
            self.cursor += take
        return out

    def state_dict(self) -> dict[str, int]:
        return {"size": self.size, "seed": self.seed, "epoch": self.epoch, "cursor": self.cursor}

    @classmethod
    def from_state(cls, state: dict[str, int]) -> DataOrder:
        return cls(
            size=state["size"], seed=state["seed"], epoch=state["epoch"], cursor=state["cursor"]
        )
