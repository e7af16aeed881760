"""Datasets over users' image files: the shared base and the one-folder-per-class layout.

:class:`FileDataset` holds parsed records (an image path plus texts, label and boxes) and loads
images lazily with :func:`~vlmoe.data.images.load_image`. At construction it checks every
record, by default reading each image's header (missing, unreadable or oversized files and
boxes outside the image are found here); ``check="decode"`` also decodes every image so
truncated files are found up front too.

The policy for bad samples is ``on_error`` (:data:`~vlmoe.data.errors.OnError`):

- ``"raise"`` (default): the first bad record stops construction with a
  :class:`~vlmoe.data.errors.DataError` naming the file and line.
- ``"skip"``: every bad record found by the check is dropped before the dataset is used, counted
  once in ``dataset.errors`` (:class:`~vlmoe.data.errors.ErrorReport`), and one warning lists the
  first reasons. Exactly the bad samples are dropped: nothing is ever replaced by another sample.

How much the check finds is ``check`` (:data:`Check`): ``"header"`` (default) reads each header
and looks for the end marker of PNG and JPEG files (the declared size of BMP and WebP), so
truncated files of those formats are found without decoding; ``"decode"`` decodes every image
and finds every undecodable file; ``"none"`` checks nothing up front. An image that passes the
check but fails when loaded raises a DataError naming it, under either policy, since by then the
dataset's length is fixed (use ``check="decode"`` to rule that out).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vlmoe.data.errors import DataError, OnError, check_on_error
from vlmoe.data.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, image_size, load_image
from vlmoe.data.sample import QA, Box, RefExp, Sample, Transform, VLDataset

logger = logging.getLogger(__name__)

Check = Literal["none", "header", "decode"]
BOX_TOLERANCE = 1.0  # pixels a box may overhang the image (rounding in COCO files); clipped


@dataclass
class FileRecord:
    """One sample before its image is read. ``where`` locates it ("manifest.jsonl line 3")."""

    path: Path
    where: str
    captions: list[str] = field(default_factory=list)
    qa: list[QA] = field(default_factory=list)
    label: int | None = None
    boxes: list[Box] = field(default_factory=list)
    refs: list[RefExp] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    size: tuple[int, int] | None = None  # (width, height) when known


def check_boxes(boxes: list[Box], width: int, height: int, path: Path, where: str) -> list[Box]:
    """Raise a DataError for a box outside a ``width`` x ``height`` image; clip tiny overhangs."""
    out = []
    for k, b in enumerate(boxes):
        t = BOX_TOLERANCE
        if b.x0 < -t or b.y0 < -t or b.x1 > width + t or b.y1 > height + t:
            raise DataError(
                f"box {k} {[b.x0, b.y0, b.x1, b.y1]} ({b.label!r}) lies outside the image "
                f"of size {width}x{height}",
                path,
                where,
            )
        out.append(Box(max(0, b.x0), max(0, b.y0), min(width, b.x1), min(height, b.y1), b.label))
    return out


def _line_of(where: str | None) -> int:
    """The line number in a location like "manifest.jsonl line 3" (0 when there is none)."""
    m = re.search(r"line (\d+)", where or "")
    return int(m.group(1)) if m else 0


class FileDataset(VLDataset):
    """A dataset of :class:`FileRecord`; see the module docstring for checks and ``on_error``."""

    def __init__(
        self,
        records: list[FileRecord],
        *,
        source: str,
        on_error: OnError = "raise",
        check: Check = "header",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        transform: Transform | None = None,
        parse_errors: list[DataError] | None = None,
    ) -> None:
        super().__init__(transform)
        self.on_error = check_on_error(on_error)
        if check not in ("none", "header", "decode"):
            raise ValueError(f"check must be 'none', 'header' or 'decode', got {check!r}")
        self.check = check
        self.max_pixels = max_pixels
        self.source = source
        # Bad lines are met in file order, so the first error raised is the file's first bad
        # line, whether the line fails to parse or its image fails the check.
        events = [(_line_of(e.where), 0, e) for e in parse_errors or []]
        events += [(_line_of(r.where), 1, r) for r in records]
        kept = []
        for _, kind, item in sorted(events, key=lambda ev: (ev[0], ev[1])):
            if kind == 0:
                self.errors.handle(item, self.on_error)
            elif self._check_record(item):
                kept.append(item)
        self.records = kept
        total = len(self.records) + self.errors.skipped
        self.errors.log_summary(source, total)
        if not self.records:
            raise DataError(
                "no usable samples"
                + (f"; first reasons: {self.errors.reasons}" if self.errors else ""),
                source,
            )

    def _check_record(self, r: FileRecord) -> bool:
        try:
            if self.check == "decode":
                img = load_image(r.path, max_pixels=self.max_pixels, where=r.where)
                r.size = (img.shape[1], img.shape[0])
            elif self.check == "header":
                r.size = image_size(r.path, max_pixels=self.max_pixels, where=r.where)
            if r.size is not None:
                r.boxes = check_boxes(r.boxes, r.size[0], r.size[1], r.path, r.where)
        except DataError as e:
            self.errors.handle(e, self.on_error)
            return False
        return True

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, r: FileRecord) -> Sample:
        img = load_image(r.path, max_pixels=self.max_pixels, where=r.where)
        boxes = check_boxes(r.boxes, img.shape[1], img.shape[0], r.path, r.where)
        return self._sample(r, img, boxes)

    def _sample(self, r: FileRecord, image: np.ndarray, boxes: list[Box]) -> Sample:
        meta = {"source": self.source, "file": str(r.path), "where": r.where, **r.meta}
        return Sample(image, list(r.captions), list(r.qa), r.label, boxes, list(r.refs), meta)

    def describe(self, index: int) -> Sample:
        """The record's texts, label and boxes; the image is not read (an empty array)."""
        r = self.records[index]
        return self._sample(r, np.zeros((0, 0, 3), np.uint8), list(r.boxes))

    def get(self, index: int) -> Sample:
        r = self.records[index]
        try:
            return self._load(r)
        except DataError as e:
            if self.on_error == "raise":
                raise
            # Never hand out another sample in its place: that would duplicate one sample and
            # shift the rest. The dataset's length and examples are already fixed, so the only
            # honest choice left is to stop, naming the file and the check that finds it.
            raise DataError(
                f"{e.reason}; the file passed check={self.check!r} when the dataset was built, "
                "so on_error='skip' cannot drop it any more: use check='decode' to find every "
                "undecodable image before training",
                r.path,
                r.where,
            ) from e


def _label_text(name: str) -> str:
    return name.replace("_", " ").replace("-", " ")


class ImageFolderDataset(FileDataset):
    """Images in ``root/<class name>/*.png|jpg|...``; labels are the sorted class folder names.

    Each sample gets captions from ``caption_templates`` and one question ``question`` whose
    answer is the class name (underscores and dashes read as spaces), so classification,
    retrieval and VQA all run on it. Files with other extensions are ignored.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        caption_templates: tuple[str, ...] = ("a photo of a {label}.",),
        question: str = "what is in the image?",
        on_error: OnError = "raise",
        check: Check = "header",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        transform: Transform | None = None,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError("image folder not found or not a directory", root)
        classes = sorted(
            p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if not classes:
            raise DataError("no class sub-folders (expected root/<class>/<image files>)", root)
        records = []
        for label, name in enumerate(classes):
            text = _label_text(name)
            files = sorted(
                p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not files:
                logger.warning("%s: class folder %r holds no image files", root, name)
            for p in files:
                records.append(
                    FileRecord(
                        path=p,
                        where=f"class {name!r}",
                        captions=[t.format(label=text) for t in caption_templates],
                        qa=[QA(question, text, "class")],
                        label=label,
                    )
                )
        if not records:
            raise DataError("no image files in any class folder", root)
        super().__init__(
            records,
            source=str(root),
            on_error=on_error,
            check=check,
            max_pixels=max_pixels,
            transform=transform,
        )
        self.label_names = classes
        self.answer_vocab = [_label_text(c) for c in classes]
