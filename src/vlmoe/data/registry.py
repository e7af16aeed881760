"""Datasets by name, so configs and the CLI can say ``data.name: shapes`` or a path.

``load_dataset("shapes" | "mnist" | "digits" | "photos" | "coco" | PATH, split, ...)``: a
``.jsonl`` path or a folder holding ``manifest.jsonl`` reads a manifest; any other folder is
read as one sub-folder per class; "coco" reads COCO-style JSON (``captions=`` and/or
``instances=`` files, images under ``image_root=``). This is the one dataset registry: runs,
the CLI and the benchmarks all load data through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmoe.data.coco import CocoDataset
from vlmoe.data.errors import DataError
from vlmoe.data.files import ImageFolderDataset
from vlmoe.data.manifest import ManifestDataset
from vlmoe.data.real import DigitsDataset, MnistDataset, PhotosDataset
from vlmoe.data.sample import Transform, VLDataset
from vlmoe.data.shapes import ShapesConfig
from vlmoe.data.shapes_data import ShapesDataset

DATASET_NAMES = ("shapes", "mnist", "digits", "photos", "coco")


def load_dataset(
    name: str,
    split: str = "train",
    *,
    transform: Transform | None = None,
    num: int = 1000,
    shapes: ShapesConfig | None = None,
    **kwargs: Any,
) -> VLDataset:
    """A dataset by name or path.

    Args:
        name: "shapes", "mnist", "digits", "photos", or a path (manifest / class folders).
        split: the split; for manifests and folders it is ignored (one file is one split).
        transform: per-sample transform.
        num: number of scenes (shapes only).
        shapes: the scene world's config (shapes only).
        **kwargs: passed to the file dataset (on_error, check, max_pixels, ...).
    """
    if name == "shapes":
        return ShapesDataset(shapes or ShapesConfig(), split, num, transform)  # type: ignore[arg-type]
    if name == "mnist":
        return MnistDataset(split, transform)  # type: ignore[arg-type]
    if name == "digits":
        return DigitsDataset(split, transform)  # type: ignore[arg-type]
    if name == "photos":
        return PhotosDataset(split, transform=transform)  # type: ignore[arg-type]
    if name == "coco":
        image_root = kwargs.pop("image_root", None)
        if image_root is None:
            raise DataError("COCO data needs image_root (the folder of the images)", name)
        return CocoDataset(image_root, transform=transform, **kwargs)
    path = Path(name)
    if path.suffix == ".jsonl":
        return ManifestDataset(path, transform=transform, **kwargs)
    if path.is_dir() and (path / "manifest.jsonl").is_file():
        return ManifestDataset(path / "manifest.jsonl", transform=transform, **kwargs)
    if path.is_dir():
        return ImageFolderDataset(path, transform=transform, **kwargs)
    raise DataError(
        f"unknown dataset: not one of {DATASET_NAMES}, a .jsonl manifest or a folder", name
    )
