"""The one sample type every vlmoe dataset returns, and the dataset base class.

A :class:`Sample` carries everything any task needs from one image: captions (captioning,
retrieval, contrastive training), question-answer pairs (VQA as answer classification or by
generation), a class label (classification), labelled boxes (detection) and referring
expressions pointing at those boxes (grounding). A dataset fills what it has and leaves the
rest empty, so every task can run on every dataset that has the fields it needs.

Images are ``uint8`` arrays of shape (H, W, 3) until a transform turns them into float tensors
of shape (3, H, W); boxes are ``[x0, y0, x1, y1]`` in pixels of the current image, with
``x1``/``y1`` exclusive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vlmoe.data.errors import ErrorReport
from vlmoe.nn.modality import MODALITY_IMAGE, MODALITY_TEXT

__all__ = ["MODALITY_IMAGE", "MODALITY_TEXT", "QA", "Box", "RefExp", "Sample", "VLDataset"]


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels, ``x1``/``y1`` exclusive, with a text label."""

    x0: float
    y0: float
    x1: float
    y1: float
    label: str

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)

    @property
    def area(self) -> float:
        return max(0.0, self.x1 - self.x0) * max(0.0, self.y1 - self.y0)


@dataclass(frozen=True)
class QA:
    """A question, its short answer ("red", "3", "yes") and the question type."""

    question: str
    answer: str
    kind: str = "other"


@dataclass(frozen=True)
class RefExp:
    """A referring expression ("the red circle") and the index of its box in ``Sample.boxes``."""

    text: str
    box: int


@dataclass
class Sample:
    """One image and everything known about it.

    Attributes:
        image: (H, W, 3) uint8 array, or a (3, H, W) float tensor after a transform.
        captions: zero or more descriptions of the image.
        qa: question-answer pairs.
        label: class id into the dataset's ``label_names``, or None.
        boxes: labelled boxes in pixels of ``image``.
        refs: referring expressions, each pointing at one of ``boxes``.
        meta: free-form provenance (source, index, split, file, scene, ...).
    """

    image: np.ndarray | torch.Tensor
    captions: list[str] = field(default_factory=list)
    qa: list[QA] = field(default_factory=list)
    label: int | None = None
    boxes: list[Box] = field(default_factory=list)
    refs: list[RefExp] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> Sample:
        return dataclasses.replace(self, **changes)

    @property
    def image_hw(self) -> tuple[int, int]:
        """(H, W) of the image in either layout."""
        if isinstance(self.image, torch.Tensor):
            return int(self.image.shape[-2]), int(self.image.shape[-1])
        return int(self.image.shape[0]), int(self.image.shape[1])

    def texts(self) -> Iterator[str]:
        """Every piece of text in the sample, for tokenizer training."""
        yield from self.captions
        for qa in self.qa:
            yield qa.question
            yield qa.answer
        for ref in self.refs:
            yield ref.text
        for box in self.boxes:
            yield box.label


Transform = Callable[[Sample], Sample]


class VLDataset(Dataset[Sample]):
    """Base class of every vlmoe dataset: a map-style torch Dataset of :class:`Sample`.

    Subclasses implement ``__len__`` and ``get(index)``; ``__getitem__`` applies the optional
    ``transform``. They set ``label_names`` (class names, index = label id), ``answer_vocab``
    (every answer a question may have, index = answer id) and ``box_label_names`` where they
    apply, and ``errors`` (an :class:`ErrorReport`) when they read users' files.
    """

    label_names: list[str]
    answer_vocab: list[str]
    box_label_names: list[str]

    def __init__(self, transform: Transform | None = None) -> None:
        self.transform = transform
        self.label_names = []
        self.answer_vocab = []
        self.box_label_names = []
        self.errors = ErrorReport()

    def __len__(self) -> int:
        raise NotImplementedError

    def get(self, index: int) -> Sample:
        """The untransformed sample at ``index``."""
        raise NotImplementedError

    def describe(self, index: int) -> Sample:
        """Sample ``index`` with everything but its image, which may be left empty: what a task
        reads to list its examples without decoding images. Defaults to ``get``; datasets
        whose images are costly override it."""
        return self.get(index)

    def __getitem__(self, index: int) -> Sample:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for dataset of length {n}")
        sample = self.get(index % n)
        return self.transform(sample) if self.transform is not None else sample

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def texts(self) -> Iterator[str]:
        """Every text of every sample (captions, questions, answers, refs, box labels); read
        from ``describe``, so no image is decoded."""
        for i in range(len(self)):
            yield from self.describe(i).texts()

    def subset(self, indices: Sequence[int]) -> VLDataset:
        """The samples at ``indices`` as a dataset with the same names and error report."""
        return Subset(self, indices)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def answer_id(self, answer: str) -> int:
        """Index of ``answer`` in ``answer_vocab``; -100 (ignored by losses) if absent."""
        table = getattr(self, "_answer_index", None)
        if table is None or len(table) != len(self.answer_vocab):
            table = {a: i for i, a in enumerate(self.answer_vocab)}
            self._answer_index = table
        return table.get(answer, -100)


class Subset(VLDataset):
    """Some samples of another dataset (``VLDataset.subset``): a held-out split of a file, say."""

    def __init__(self, base: VLDataset, indices: Sequence[int]) -> None:
        super().__init__(base.transform)
        self.base, self.indices = base, list(indices)
        self.label_names, self.answer_vocab = base.label_names, base.answer_vocab
        self.box_label_names, self.errors = base.box_label_names, base.errors

    def __len__(self) -> int:
        return len(self.indices)

    def get(self, index: int) -> Sample:
        return self.base.get(self.indices[index])

    def describe(self, index: int) -> Sample:
        return self.base.describe(self.indices[index])
