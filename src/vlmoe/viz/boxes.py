"""Boxes drawn over an image: predicted (and optionally ground-truth) boxes with their labels
and scores, for `vlmoe predict` and the demo report.

Small images (the 64-pixel scenes) are enlarged by an integer factor with nearest-neighbour
resampling first, so that 1-pixel outlines and labels stay legible; box coordinates are in
pixels of the original image.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Distinct outline colours, cycled by class id.
PALETTE = (
    (255, 64, 64),
    (64, 200, 255),
    (255, 220, 0),
    (120, 255, 120),
    (255, 128, 255),
    (255, 160, 60),
    (160, 160, 255),
    (255, 255, 255),
)


def draw_boxes(
    image: np.ndarray,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[str],
    scores: Sequence[float] | None = None,
    class_ids: Sequence[int] | None = None,
    ground_truth: Sequence[Sequence[float]] = (),
    min_side: int = 384,
) -> np.ndarray:
    """(H, W, 3) uint8 image with boxes (pixels, xyxy) and "label score" tags drawn on it;
    ground-truth boxes, if given, are dashed grey. Returns the enlarged (H*s, W*s, 3) image."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"draw_boxes needs a (H, W, 3) uint8 image, got {image.shape} {image.dtype}"
        )
    if len(boxes) != len(labels) or (scores is not None and len(scores) != len(boxes)):
        raise ValueError(
            f"draw_boxes: {len(boxes)} boxes, {len(labels)} labels, "
            f"{'no' if scores is None else len(scores)} scores; need one label (and score) a box"
        )
    H, W = image.shape[:2]
    s = max(1, -(-min_side // max(1, min(H, W))))  # ceil(min_side / side)
    canvas = Image.fromarray(image).resize((W * s, H * s), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for box in ground_truth:
        x0, y0, x1, y1 = (v * s for v in box)
        for a in range(int(x0), int(x1), 6):
            draw.line([(a, y0), (min(a + 3, x1), y0)], fill=(160, 160, 160))
            draw.line([(a, y1 - 1), (min(a + 3, x1), y1 - 1)], fill=(160, 160, 160))
        for a in range(int(y0), int(y1), 6):
            draw.line([(x0, a), (x0, min(a + 3, y1))], fill=(160, 160, 160))
            draw.line([(x1 - 1, a), (x1 - 1, min(a + 3, y1))], fill=(160, 160, 160))
    for k, (box, label) in enumerate(zip(boxes, labels)):
        colour = PALETTE[(class_ids[k] if class_ids is not None else k) % len(PALETTE)]
        x0, y0, x1, y1 = (float(v) * s for v in box)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour, width=2)
        tag = label if scores is None else f"{label} {float(scores[k]):.2f}"
        tx0, ty0, tx1, ty1 = draw.textbbox((0, 0), tag, font=font)
        ty = y0 - (ty1 - ty0) - 3 if y0 >= (ty1 - ty0) + 3 else y0 + 2
        draw.rectangle([x0, ty, x0 + (tx1 - tx0) + 4, ty + (ty1 - ty0) + 3], fill=(0, 0, 0))
        draw.text((x0 + 2, ty + 1), tag, fill=colour, font=font)
    return np.asarray(canvas)


def caption_band(width: int, text: str, height: int = 18) -> np.ndarray:
    """(height, width, 3) uint8 white band with `text` in black at its left, to title a row of
    tiles."""
    band = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(band).text((6, 3), text, fill=(0, 0, 0), font=ImageFont.load_default())
    return np.asarray(band)


def save_image(image: np.ndarray, path: str | Path) -> Path:
    """Write a (H, W, 3) uint8 array as PNG atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        Image.fromarray(image).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
