"""JSONL manifests: one JSON object per line describing one image. Reader and writer.

Fields (only ``image`` is required; any other key is an error):

- ``image``: path of the image file, relative to the manifest's folder (or absolute);
- ``caption``: a string or a list of strings;
- ``question`` and ``answer``: a string each, or two lists of the same length;
- ``question_type``: the kind of each question (string or list), optional;
- ``label``: a class name (string) or class id (int);
- ``boxes``: ``[[x0, y0, x1, y1, "label"], ...]`` in pixels, x1/y1 exclusive;
- ``refs``: referring expressions ``[["the red circle", box_index], ...]``;
- ``meta``: any JSON object, kept as the sample's ``meta``.

Optional sidecar files next to the manifest fix the order of names: ``labels.txt`` (class names,
index = label id), ``answers.txt`` (answer vocabulary) and ``box_labels.txt`` (one name a line).
Without them the names are the sorted distinct values found. :func:`write_manifest` writes the
same format (PNG images + sidecars), so writing then reading gives back the same samples.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlmoe.data.errors import DataError, OnError
from vlmoe.data.files import Check, FileDataset, FileRecord
from vlmoe.data.images import DEFAULT_MAX_PIXELS
from vlmoe.data.sample import QA, Box, RefExp, Sample, Transform

logger = logging.getLogger(__name__)

MANIFEST_FIELDS = (
    "image",
    "caption",
    "question",
    "answer",
    "question_type",
    "label",
    "boxes",
    "refs",
    "meta",
)


def is_number(v: Any) -> bool:
    """A JSON number (int or float, not bool)."""
    return isinstance(v, int | float) and not isinstance(v, bool)


def _str_list(rec: dict[str, Any], key: str, err: Any) -> list[str]:
    v = rec.get(key)
    if v is None:
        return []
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return list(v)
    raise err(
        f"field {key!r} must be a string or a list of strings, got {type(v).__name__}: {v!r:.80}"
    )


def _parse_boxes(v: Any, err: Any) -> list[Box]:
    if not isinstance(v, list):
        raise err(
            f"field 'boxes' must be a list of [x0, y0, x1, y1, label], got {type(v).__name__}"
        )
    boxes = []
    for k, b in enumerate(v):
        ok = (
            isinstance(b, list)
            and len(b) == 5
            and all(is_number(x) for x in b[:4])
            and isinstance(b[4], str)
        )
        if not ok:
            raise err(f'box {k} must be [x0, y0, x1, y1, "label"] with 4 numbers, got {b!r:.80}')
        x0, y0, x1, y1 = (float(x) if isinstance(x, float) else x for x in b[:4])
        if not (x1 > x0 and y1 > y0):
            raise err(f"box {k} {b[:4]} needs x1 > x0 and y1 > y0")
        boxes.append(Box(x0, y0, x1, y1, b[4]))
    return boxes


def _parse_refs(v: Any, n_boxes: int, err: Any) -> list[RefExp]:
    if not isinstance(v, list):
        raise err(f"field 'refs' must be a list of [text, box_index], got {type(v).__name__}")
    refs = []
    for k, r in enumerate(v):
        ok = isinstance(r, list) and len(r) == 2 and isinstance(r[0], str)
        if not ok or not isinstance(r[1], int) or isinstance(r[1], bool):
            raise err(f"ref {k} must be [text, box_index], got {r!r:.80}")
        if not 0 <= r[1] < n_boxes:
            raise err(f"ref {k} points at box {r[1]} but the sample has {n_boxes} boxes")
        refs.append(RefExp(r[0], r[1]))
    return refs


def _shared_strings(value: Any) -> Any:
    """The parsed JSON with every string interned: answers, question kinds, labels and keys
    repeat across lines, so a 20,000-line manifest holds each of them once."""
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, list):
        return [_shared_strings(v) for v in value]
    if isinstance(value, dict):
        return {sys.intern(k): _shared_strings(v) for k, v in value.items()}
    return value


def parse_record(rec: Any, root: Path, manifest: Path, lineno: int) -> tuple[FileRecord, Any]:
    """Validate one manifest object. Returns the record (label not yet mapped) and the raw label."""
    where = f"line {lineno}"

    def err(msg: str) -> DataError:
        return DataError(msg, manifest, where)

    if not isinstance(rec, dict):
        raise err(f"expected a JSON object, got {type(rec).__name__}")
    unknown = sorted(set(rec) - set(MANIFEST_FIELDS))
    if unknown:
        raise err(f"unknown field(s) {unknown}; allowed: {list(MANIFEST_FIELDS)}")
    image = rec.get("image")
    if not isinstance(image, str) or not image:
        raise err(f"field 'image' (a path string) is required, got {image!r:.80}")
    questions = _str_list(rec, "question", err)
    answers = _str_list(rec, "answer", err)
    kinds = _str_list(rec, "question_type", err) or ["other"] * len(questions)
    if len(answers) != len(questions):
        raise err(f"{len(questions)} question(s) but {len(answers)} answer(s)")
    if len(kinds) != len(questions):
        raise err(f"{len(questions)} question(s) but {len(kinds)} question_type(s)")
    label = rec.get("label")
    if label is not None and (isinstance(label, bool) or not isinstance(label, int | str)):
        raise err(f"field 'label' must be a class name or an integer id, got {label!r:.80}")
    if isinstance(label, int) and label < 0:
        raise err(f"field 'label' must be >= 0, got {label}")
    boxes = _parse_boxes(rec["boxes"], err) if "boxes" in rec else []
    refs = _parse_refs(rec["refs"], len(boxes), err) if "refs" in rec else []
    meta = rec.get("meta", {})
    if not isinstance(meta, dict):
        raise err(f"field 'meta' must be a JSON object, got {type(meta).__name__}")
    path = Path(image)
    record = FileRecord(
        path=path if path.is_absolute() else root / path,
        where=f"{manifest.name} line {lineno}",
        captions=_str_list(rec, "caption", err),
        qa=[QA(q, a, k) for q, a, k in zip(questions, answers, kinds, strict=True)],
        boxes=boxes,
        refs=refs,
        meta=dict(meta),
    )
    return record, label


def _read_names(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    return [
        line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def read_manifest(manifest: str | Path) -> tuple[list[FileRecord], list[Any], list[DataError]]:
    """Parse a manifest. Returns good records, their raw labels, and the errors of bad lines."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise DataError("manifest file not found", manifest)
    records, labels, errors = [], [], []
    with manifest.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                try:
                    obj = _shared_strings(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"invalid JSON: {e.msg} at column {e.colno}", manifest, f"line {lineno}"
                    ) from e
                record, label = parse_record(obj, manifest.parent, manifest, lineno)
            except DataError as e:
                errors.append(e)
                continue
            records.append(record)
            labels.append(label)
    return records, labels, errors


class ManifestDataset(FileDataset):
    """Samples described by a JSONL manifest (format in the module docstring).

    Args:
        manifest: path of the ``.jsonl`` file.
        label_names, answer_vocab, box_label_names: fixed name orders; default: the sidecar
            files, else the sorted distinct values.
        on_error: "raise" on the first bad line or image, or "skip" it and count it.
        check: "header" (default) reads each image header up front, "decode" decodes each
            image up front, "none" defers every image check to loading.
    """

    def __init__(
        self,
        manifest: str | Path,
        *,
        label_names: list[str] | None = None,
        answer_vocab: list[str] | None = None,
        box_label_names: list[str] | None = None,
        on_error: OnError = "raise",
        check: Check = "header",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        transform: Transform | None = None,
    ) -> None:
        manifest = Path(manifest)
        records, raw_labels, errors = read_manifest(manifest)
        label_names = label_names or _read_names(manifest.parent / "labels.txt")
        records, label_names, label_errors = _map_labels(records, raw_labels, label_names, manifest)
        super().__init__(
            records,
            source=str(manifest),
            on_error=on_error,
            check=check,
            max_pixels=max_pixels,
            transform=transform,
            parse_errors=errors + label_errors,
        )
        self.manifest = manifest
        self.label_names = label_names
        self.answer_vocab = (
            answer_vocab
            or _read_names(manifest.parent / "answers.txt")
            or sorted({qa.answer for r in self.records for qa in r.qa})
        )
        self.box_label_names = (
            box_label_names
            or _read_names(manifest.parent / "box_labels.txt")
            or sorted({b.label for r in self.records for b in r.boxes})
        )


def _map_labels(
    records: list[FileRecord], raw: list[Any], names: list[str] | None, manifest: Path
) -> tuple[list[FileRecord], list[str], list[DataError]]:
    """Turn raw labels (names or ids) into ids; bad labels become errors of their lines."""
    kinds = {type(v) for v in raw if v is not None}
    if names is None:
        if kinds == {int}:
            names = [str(i) for i in range(max(v for v in raw if v is not None) + 1)]
        else:
            names = sorted({str(v) for v in raw if isinstance(v, str)})
    index = {n: i for i, n in enumerate(names)}
    good, errors = [], []
    for r, v in zip(records, raw, strict=True):
        if isinstance(v, str) and v not in index:
            errors.append(
                DataError(
                    f"label {v!r} is not one of the label names {names[:20]}", manifest, r.where
                )
            )
            continue
        if isinstance(v, int) and v >= len(names):
            errors.append(
                DataError(
                    f"label id {v} out of range for {len(names)} label names", manifest, r.where
                )
            )
            continue
        r.label = index[v] if isinstance(v, str) else v
        good.append(r)
    return good, names, errors


def _json_default(v: Any) -> Any:
    if hasattr(v, "to_dict"):
        return v.to_dict()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"cannot write {type(v).__name__} to a manifest")


def sample_to_record(
    sample: Sample, image: str, label_names: list[str] | None = None
) -> dict[str, Any]:
    """The manifest object for ``sample`` whose image is stored at ``image``."""
    rec: dict[str, Any] = {"image": image}
    if sample.captions:
        rec["caption"] = list(sample.captions)
    if sample.qa:
        rec["question"] = [qa.question for qa in sample.qa]
        rec["answer"] = [qa.answer for qa in sample.qa]
        rec["question_type"] = [qa.kind for qa in sample.qa]
    if sample.label is not None:
        rec["label"] = label_names[sample.label] if label_names else int(sample.label)
    if sample.boxes:
        rec["boxes"] = [[b.x0, b.y0, b.x1, b.y1, b.label] for b in sample.boxes]
    if sample.refs:
        rec["refs"] = [[r.text, r.box] for r in sample.refs]
    meta = {k: v for k, v in sample.meta.items() if k not in ("file", "where")}
    if meta:
        rec["meta"] = meta
    return rec


def _write_names(path: Path, names: list[str] | None) -> None:
    if names:
        path.write_text("".join(n + "\n" for n in names), encoding="utf-8")


def save_png(image: np.ndarray, path: Path) -> None:
    """Write a (H, W, 3) uint8 array as PNG."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError("write samples before any tensor transform: need (H, W, 3) uint8 images")
    Image.fromarray(image).save(path, format="PNG")


def write_manifest(
    samples: Iterable[Sample],
    out_dir: str | Path,
    *,
    name: str = "manifest.jsonl",
    image_dir: str = "images",
    label_names: list[str] | None = None,
    answer_vocab: list[str] | None = None,
    box_label_names: list[str] | None = None,
) -> Path:
    """Write samples as PNG files plus a JSONL manifest (and name sidecars). Returns its path."""
    out = Path(out_dir)
    (out / image_dir).mkdir(parents=True, exist_ok=True)
    manifest = out / name
    tmp = manifest.with_suffix(manifest.suffix + ".tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as f:
        for i, s in enumerate(samples):
            rel = f"{image_dir}/{i:06d}.png"
            save_png(s.image, out / rel)  # type: ignore[arg-type]
            rec = sample_to_record(s, rel, label_names)
            f.write(json.dumps(rec, default=_json_default, ensure_ascii=False) + "\n")
            count += 1
    tmp.replace(manifest)
    _write_names(out / "labels.txt", label_names)
    _write_names(out / "answers.txt", answer_vocab)
    _write_names(out / "box_labels.txt", box_label_names)
    logger.info("wrote %d samples to %s", count, manifest)
    return manifest
