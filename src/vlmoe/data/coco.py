"""COCO-style JSON: captions files and instances (boxes) files. Reader and writer.

Read: ``images`` entries ``{"id", "file_name", "width"?, "height"?}``; caption annotations
``{"image_id", "caption"}``; instance annotations ``{"image_id", "bbox": [x, y, w, h],
"category_id"}`` with ``categories`` ``{"id", "name"}``. Required fields and their types are
checked and errors name the file and entry (``instances.json: annotations[12]``); other keys
(``segmentation``, ``area``, ``iscrowd``, ``license``, ...) are ignored, since COCO variants add
many. Boxes become ``[x, y, x + w, y + h]`` labelled with the category name.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vlmoe.data.errors import DataError, OnError
from vlmoe.data.files import Check, FileDataset, FileRecord
from vlmoe.data.images import DEFAULT_MAX_PIXELS
from vlmoe.data.manifest import is_number, save_png
from vlmoe.data.sample import Box, Sample, Transform

logger = logging.getLogger(__name__)


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError("COCO annotation file not found", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(
            f"invalid JSON: {e.msg} at column {e.colno}", path, f"line {e.lineno}"
        ) from e
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text: {e}", path) from e
    if not isinstance(data, dict):
        raise DataError(f"expected a JSON object at top level, got {type(data).__name__}", path)
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise DataError(f"top-level {key!r} must be a list", path)
    return data


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _need(obj: Any, key: str, ok: Any, what: str, path: Path, where: str) -> Any:
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}", path, where)
    if key not in obj:
        raise DataError(f"missing field {key!r}", path, where)
    v = obj[key]
    if not ok(v):
        raise DataError(f"field {key!r} must be {what}, got {v!r:.80}", path, where)
    return v


class CocoDataset(FileDataset):
    """Images with COCO captions and/or instances.

    Args:
        image_dir: folder holding the ``file_name`` of each image.
        captions: a COCO captions JSON (``captions_*.json``), optional.
        instances: a COCO instances JSON (``instances_*.json``), optional; at least one of the two.
        on_error, check, max_pixels, transform: as for :class:`~vlmoe.data.files.FileDataset`.

    ``label`` is None; ``box_label_names`` are the category names in category-id order.
    """

    def __init__(
        self,
        image_dir: str | Path,
        *,
        captions: str | Path | None = None,
        instances: str | Path | None = None,
        on_error: OnError = "raise",
        check: Check = "header",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        transform: Transform | None = None,
    ) -> None:
        if captions is None and instances is None:
            raise ValueError("CocoDataset needs captions=... and/or instances=...")
        image_dir = Path(image_dir)
        self._errors: list[DataError] = []
        self._images: dict[int, FileRecord] = {}
        categories: dict[int, str] = {}
        if captions is not None:
            self._read_captions(Path(captions), image_dir)
        if instances is not None:
            categories = self._read_instances(Path(instances), image_dir)
        source = str(instances or captions)
        super().__init__(
            [self._images[k] for k in sorted(self._images)],
            source=source,
            on_error=on_error,
            check=check,
            max_pixels=max_pixels,
            transform=transform,
            parse_errors=self._errors,
        )
        self.box_label_names = [categories[k] for k in sorted(categories)]

    def _read_images(self, data: dict[str, Any], path: Path, image_dir: Path) -> set[int]:
        ids = set()
        for k, im in enumerate(data["images"]):
            where = f"images[{k}]"
            try:
                iid = _need(im, "id", _is_int, "an integer", path, where)
                name = _need(
                    im, "file_name", lambda v: isinstance(v, str) and v, "a file name", path, where
                )
                size = None
                if "width" in im or "height" in im:
                    w = _need(im, "width", _is_int, "an integer", path, where)
                    h = _need(im, "height", _is_int, "an integer", path, where)
                    size = (w, h)
            except DataError as e:
                self._errors.append(e)
                continue
            rec = self._images.get(iid)
            if rec is None:
                rec = FileRecord(
                    path=image_dir / name, where=f"{path.name} {where}", meta={"coco_id": iid}
                )
                rec.meta["coco_size"] = size
                self._images[iid] = rec
            elif rec.path.name != Path(name).name:
                self._errors.append(
                    DataError(
                        f"image id {iid} is {name!r} here but {rec.path.name!r} elsewhere",
                        path,
                        where,
                    )
                )
                continue
            ids.add(iid)
        return ids

    def _read_captions(self, path: Path, image_dir: Path) -> None:
        data = _load_json(path)
        ids = self._read_images(data, path, image_dir)
        for k, ann in enumerate(data["annotations"]):
            where = f"annotations[{k}]"
            try:
                iid = _need(ann, "image_id", _is_int, "an integer", path, where)
                text = _need(ann, "caption", lambda v: isinstance(v, str), "a string", path, where)
                if iid not in ids:
                    raise DataError(f"image_id {iid} is not in 'images'", path, where)
            except DataError as e:
                self._errors.append(e)
                continue
            self._images[iid].captions.append(text.strip())

    def _read_instances(self, path: Path, image_dir: Path) -> dict[int, str]:
        data = _load_json(path)
        if not isinstance(data.get("categories"), list):
            raise DataError("top-level 'categories' must be a list", path)
        categories: dict[int, str] = {}
        for k, c in enumerate(data["categories"]):
            where = f"categories[{k}]"
            cid = _need(c, "id", _is_int, "an integer", path, where)
            categories[cid] = _need(
                c, "name", lambda v: isinstance(v, str) and v, "a name", path, where
            )
        ids = self._read_images(data, path, image_dir)
        for k, ann in enumerate(data["annotations"]):
            where = f"annotations[{k}]"
            try:
                iid = _need(ann, "image_id", _is_int, "an integer", path, where)
                bbox = _need(
                    ann,
                    "bbox",
                    lambda v: isinstance(v, list) and len(v) == 4 and all(is_number(x) for x in v),
                    "[x, y, width, height] numbers",
                    path,
                    where,
                )
                cid = _need(ann, "category_id", _is_int, "an integer", path, where)
                if iid not in ids:
                    raise DataError(f"image_id {iid} is not in 'images'", path, where)
                if cid not in categories:
                    raise DataError(f"category_id {cid} is not in 'categories'", path, where)
                x, y, w, h = bbox
                if w <= 0 or h <= 0:
                    raise DataError(
                        f"bbox {bbox} has no area (width and height must be > 0)", path, where
                    )
                rec = self._images[iid]
                size = rec.meta.get("coco_size")
                if size is not None and (
                    x < -1 or y < -1 or x + w > size[0] + 1 or y + h > size[1] + 1
                ):
                    raise DataError(
                        f"bbox {bbox} lies outside the image of size {size[0]}x{size[1]}",
                        path,
                        where,
                    )
            except DataError as e:
                self._errors.append(e)
                continue
            rec.boxes.append(Box(x, y, x + w, y + h, categories[cid]))
        return categories


def write_coco(
    samples: Iterable[Sample],
    out_dir: str | Path,
    *,
    image_dir: str = "images",
    categories: list[str] | None = None,
) -> tuple[Path, Path]:
    """Write samples as PNG images plus ``captions.json`` and ``instances.json`` (COCO style).

    Questions and referring expressions have no place in COCO and are not written. Returns the
    paths of the captions and instances files.
    """
    out = Path(out_dir)
    (out / image_dir).mkdir(parents=True, exist_ok=True)
    images, caps, insts = [], [], []
    samples = list(samples)
    names = categories or sorted({b.label for s in samples for b in s.boxes})
    cat_id = {n: i + 1 for i, n in enumerate(names)}
    missing = sorted({b.label for s in samples for b in s.boxes} - set(cat_id))
    if missing:
        raise ValueError(f"box labels {missing[:10]} are not in categories")
    for i, s in enumerate(samples):
        file_name = f"{i:06d}.png"
        save_png(s.image, out / image_dir / file_name)  # type: ignore[arg-type]
        h, w = s.image_hw
        images.append({"id": i + 1, "file_name": file_name, "width": w, "height": h})
        for c in s.captions:
            caps.append({"id": len(caps) + 1, "image_id": i + 1, "caption": c})
        for b in s.boxes:
            bw, bh = b.x1 - b.x0, b.y1 - b.y0
            insts.append(
                {
                    "id": len(insts) + 1,
                    "image_id": i + 1,
                    "bbox": [b.x0, b.y0, bw, bh],
                    "category_id": cat_id[b.label],
                    "area": bw * bh,
                    "iscrowd": 0,
                }
            )
    cats = [{"id": cat_id[n], "name": n} for n in names]
    cap_path, inst_path = out / "captions.json", out / "instances.json"
    cap_path.write_text(json.dumps({"images": images, "annotations": caps}), encoding="utf-8")
    inst_path.write_text(
        json.dumps({"images": images, "annotations": insts, "categories": cats}), encoding="utf-8"
    )
    logger.info("wrote %d images in COCO format to %s", len(images), out)
    return cap_path, inst_path
