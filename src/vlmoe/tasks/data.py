"""The one data path: a task's examples over a dataset, decoded and pre-processed per item, read
through `torch.utils.data.DataLoader` for training and evaluation.

`TaskDataset[k]` loads sample `examples[k % N].sample` (decoding its image only then), applies
the optional augmentation with a generator seeded by (seed, k), and pre-processes the image with
`vlmoe.data.transforms.preprocess_image`; the task's `collate` makes the batch. Training draws
batches from `OrderSampler`, which yields `epoch * N + index` from a `DataOrder`, so an item's
augmentation depends on its position in the stream alone: the same in any worker process and
after an exact resume.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vlmoe.data.order import DataOrder
from vlmoe.data.sample import Box, Sample
from vlmoe.data.transforms import preprocess_image
from vlmoe.tasks.base import Example

Augment = Callable[[Sample, torch.Generator], Sample]


class TaskDataset(Dataset):
    """`(Sample with a (3, S, S) image tensor, Example)` per item; see the module docstring."""

    def __init__(
        self,
        dataset: Any,
        examples: Sequence[Example],
        image_size: int,
        augment: Augment | None = None,
        seed: int = 0,
    ) -> None:
        if not len(examples):
            raise ValueError("no examples: the data has none of the fields the task needs")
        self.dataset, self.examples, self.image_size = dataset, list(examples), image_size
        self.augment, self.seed = augment, seed

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, k: int) -> tuple[Sample, Example]:
        example = self.examples[k % len(self.examples)]
        sample = self.dataset[example.sample]
        if self.augment is not None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
            sample = self.augment(sample, g)
        if not isinstance(sample.image, torch.Tensor):
            H, W = sample.image_hw
            sx, sy = self.image_size / max(W, 1), self.image_size / max(H, 1)
            sample = sample.replace(
                image=preprocess_image(np.asarray(sample.image), self.image_size),
                # Boxes follow the resize (detection and grounding read them in pixels).
                boxes=[
                    Box(b.x0 * sx, b.y0 * sy, b.x1 * sx, b.y1 * sy, b.label) for b in sample.boxes
                ],
            )
        return sample, example

    def __iter__(self) -> Iterator[tuple[Sample, Example]]:
        """One pass over the examples (indexing by stream position never ends)."""
        return (self[k] for k in range(len(self)))


class OrderSampler(Sampler[list[int]]):
    """Endless batches of stream positions from a copy of `order` (see the module docstring)."""

    def __init__(
        self, order: DataOrder, batch_size: int, take: Callable[[list], list] | None = None
    ) -> None:
        self.state, self.batch_size = order.state_dict(), batch_size
        self.take = take  # this rank's share of each global batch (None: all of it)

    def __iter__(self) -> Iterator[list[int]]:
        order = DataOrder.from_state(self.state)
        while True:
            epoch, cursor = order.epoch, order.cursor
            ids = order.next(self.batch_size)
            # The position of each item in the stream: items past the epoch end wrap over.
            pos = [(epoch + (cursor + j) // order.size) * order.size + i for j, i in enumerate(ids)]
            yield pos if self.take is None else self.take(pos)


def train_loader(
    data: TaskDataset,
    collate: Callable,
    order: DataOrder,
    batch_size: int,
    num_workers: int = 0,
    take: Callable[[list], list] | None = None,
) -> DataLoader:
    """Batches in `order`'s sequence, from its current position on, without end; `take` picks
    this rank's share of each (`vlmoe.distributed.Runtime.local_indices`)."""
    return DataLoader(
        data,
        batch_sampler=OrderSampler(order, batch_size, take),
        collate_fn=collate,
        num_workers=num_workers,
        persistent_workers=False,
        # Its own generator: starting an iterator must not draw from the global RNG, which a
        # resumed run has just restored (dropout would then differ from the uninterrupted run).
        generator=torch.Generator().manual_seed(order.seed),
    )


def eval_loader(
    data: TaskDataset,
    collate: Callable,
    batch_size: int,
    num_workers: int = 0,
    limit: int | None = None,
) -> DataLoader:
    """In-order batches over the first `limit` examples (all by default); iterable again."""
    subset: Dataset = data
    if limit is not None and limit < len(data):
        subset = torch.utils.data.Subset(data, range(limit))
    return DataLoader(subset, batch_size=batch_size, collate_fn=collate, num_workers=num_workers)


class Cycle(Dataset):
    """Any map-style dataset indexed by stream position: `Cycle(d)[k] == d[k % len(d)]`."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, k: int) -> Any:
        return self.dataset[k % len(self.dataset)]

    def __iter__(self) -> Iterator[Any]:
        """One pass over the items (indexing never ends, so `list()` must not rely on it)."""
        return (self.dataset[i] for i in range(len(self.dataset)))
