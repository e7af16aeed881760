"""Image transforms that keep every text of a sample true.

:class:`ImageTransform` maps a :class:`~vlmoe.data.sample.Sample` with a (H, W, 3) uint8 image
to one with a normalized (3, S, S) float tensor, moving its boxes with the pixels:

- ``crop="keep_boxes"``: a random square crop that contains every box, so counts, colours,
  relations and relative sizes stay true (for datasets without boxes it is a plain random crop;
  keep ``crop_scale`` mild there);
- ``hflip="swap_text"``: a horizontal flip with probability ``hflip_prob`` that also exchanges
  "left" and "right" in captions, questions, answers and referring expressions and mirrors the
  boxes and scene; a scene's listing caption, which names the objects left to right, is
  written anew from the mirrored scene. ``hflip="off"`` (the default) is for tasks where a
  flip changes the meaning (digits, text in photos) or where the texts cannot be fixed;
- resize to ``image_size`` (boxes scaled), then ``(x / 255 - mean) / std``.

Randomness comes from ``torch``'s RNG (seeded per DataLoader worker) or the ``generator``
passed in, never from Python's ``random``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from PIL import Image

from vlmoe.config import Config, check
from vlmoe.data.grammar import listing, parse_listing, swap_left_right
from vlmoe.data.images import to_rgb_array
from vlmoe.data.sample import QA, Box, RefExp, Sample
from vlmoe.data.shapes import Scene

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)
Resample = Literal["nearest", "bilinear", "bicubic"]
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def resize_image(
    image: np.ndarray, size: tuple[int, int], resample: Resample = "bilinear"
) -> np.ndarray:
    """Resize a (H, W, 3) uint8 image to ``size`` = (H', W')."""
    if image.shape[:2] == tuple(size):
        return image
    out = Image.fromarray(image).resize((size[1], size[0]), _RESAMPLE[resample])
    return np.array(out, dtype=np.uint8)


def to_tensor(
    image: np.ndarray, mean: tuple[float, ...] = DEFAULT_MEAN, std: tuple[float, ...] = DEFAULT_STD
) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32, ``(x / 255 - mean) / std``."""
    # numpy arithmetic: per-sample torch ops cost ~1 ms each in dataloader workers.
    scale = np.float32(1 / 255) / np.asarray(std, dtype=np.float32)  # (3,)
    shift = np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32)  # (3,)
    x = np.asarray(image, dtype=np.float32) * scale - shift  # (H, W, 3)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))  # (3, H, W)


def preprocess_image(image: np.ndarray, size: int, in_channels: int = 3) -> torch.Tensor:
    """The one pre-processing of a model input, for training, evaluation, predict and inspect:
    (H, W, 3) uint8 -> bilinear resize to (size, size) -> (C, size, size) float in [-1, 1]
    (``to_tensor`` with the default mean = std = 0.5); C = 1 averages the colour channels.
    ``ImageTransform(image_size=size)`` without augmentation gives the same tensor."""
    x = to_tensor(resize_image(to_rgb_array(np.asarray(image)), (size, size)))  # (3, S, S)
    return x.mean(0, keepdim=True) if in_channels == 1 else x


def denormalize(
    x: torch.Tensor, mean: tuple[float, ...] = DEFAULT_MEAN, std: tuple[float, ...] = DEFAULT_STD
) -> np.ndarray:
    """Inverse of :func:`to_tensor` for one (3, H, W) image: back to (H, W, 3) uint8 (for plots)."""
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    y = ((x.detach().cpu().float() * s + m) * 255).round().clamp(0, 255).to(torch.uint8)
    return y.permute(1, 2, 0).numpy()


def _map_texts(sample: Sample, fn: Callable[[str], str]) -> Sample:
    return sample.replace(
        captions=[fn(c) for c in sample.captions],
        qa=[QA(fn(q.question), fn(q.answer), q.kind) for q in sample.qa],
        refs=[RefExp(fn(r.text), r.box) for r in sample.refs],
    )


def hflip_sample(sample: Sample) -> Sample:
    """Mirror the image, boxes and scene left-right and swap "left"/"right" in every text
    (a scene's listing caption is written anew: its left-to-right order reverses)."""
    img = np.ascontiguousarray(np.asarray(sample.image)[:, ::-1])
    W = img.shape[1]
    boxes = [Box(W - b.x1, b.y0, W - b.x0, b.y1, b.label) for b in sample.boxes]
    meta = dict(sample.meta)
    scene = meta.get("scene")
    if isinstance(scene, Scene):
        scene = meta["scene"] = scene.hflip()
    meta["hflip"] = not meta.get("hflip", False)
    out = _map_texts(sample.replace(image=img, boxes=boxes, meta=meta), swap_left_right)
    if isinstance(scene, Scene):
        captions = [listing(scene) if parse_listing(c) is not None else c for c in out.captions]
        out = out.replace(captions=captions)
    return out


def crop_sample(sample: Sample, x0: int, y0: int, x1: int, y1: int) -> Sample:
    """Crop the image to ``[x0, x1) x [y0, y1)``; boxes shift (and are clipped to the crop)."""
    img = np.asarray(sample.image)[y0:y1, x0:x1]
    w, h = x1 - x0, y1 - y0
    boxes = [
        Box(
            min(max(b.x0 - x0, 0), w),
            min(max(b.y0 - y0, 0), h),
            min(max(b.x1 - x0, 0), w),
            min(max(b.y1 - y0, 0), h),
            b.label,
        )
        for b in sample.boxes
    ]
    return sample.replace(image=np.ascontiguousarray(img), boxes=boxes)


def shift_sample(sample: Sample, dx: int, dy: int) -> Sample:
    """Translate the image by (dx, dy) pixels (right, down), repeating the edge pixels into the
    strip it leaves; boxes move with it."""
    img = np.asarray(sample.image)
    H, W = img.shape[:2]
    ax, ay = abs(dx), abs(dy)
    padded = np.pad(img, ((ay, ay), (ax, ax)) + ((0, 0),) * (img.ndim - 2), mode="edge")
    out = padded[ay - dy : ay - dy + H, ax - dx : ax - dx + W]
    boxes = [Box(b.x0 + dx, b.y0 + dy, b.x1 + dx, b.y1 + dy, b.label) for b in sample.boxes]
    return sample.replace(image=np.ascontiguousarray(out), boxes=boxes)


def random_shift(
    H: int, W: int, boxes: list[Box], shift: int, generator: torch.Generator | None = None
) -> tuple[int, int]:
    """A random (dx, dy), each uniform over the integers in [-shift, shift] that keep every box
    inside the image."""
    if boxes:
        ux0, uy0 = min(b.x0 for b in boxes), min(b.y0 for b in boxes)
        ux1, uy1 = max(b.x1 for b in boxes), max(b.y1 for b in boxes)
    else:
        ux0, uy0, ux1, uy1 = 0, 0, W, H  # no boxes: no constraint beyond `shift`

    def draw(lo: float, hi: float) -> int:
        lo_i, hi_i = max(-shift, int(np.ceil(lo))), min(shift, int(np.floor(hi)))
        if lo_i >= hi_i:
            return 0 if lo_i > hi_i else lo_i
        return lo_i + int(torch.randint(hi_i - lo_i + 1, (), generator=generator))

    if not boxes:
        return draw(-shift, shift), draw(-shift, shift)
    return draw(-ux0, W - ux1), draw(-uy0, H - uy1)


def resize_sample(sample: Sample, size: tuple[int, int], resample: Resample = "bilinear") -> Sample:
    """Resize the image to ``size`` = (H', W'), scaling the boxes."""
    img = np.asarray(sample.image)
    H, W = img.shape[:2]
    sy, sx = size[0] / H, size[1] / W
    boxes = [Box(b.x0 * sx, b.y0 * sy, b.x1 * sx, b.y1 * sy, b.label) for b in sample.boxes]
    return sample.replace(image=resize_image(img, size, resample), boxes=boxes)


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def random_crop_box(
    H: int,
    W: int,
    boxes: list[Box],
    scale: tuple[float, float],
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """A random square crop (x0, y0, x1, y1), side in ``scale`` x min(H, W), holding all boxes."""
    side_max = min(H, W)
    if boxes:
        ux0 = int(np.floor(min(b.x0 for b in boxes)))
        uy0 = int(np.floor(min(b.y0 for b in boxes)))
        ux1 = int(np.ceil(max(b.x1 for b in boxes)))
        uy1 = int(np.ceil(max(b.y1 for b in boxes)))
    else:
        ux0, uy0, ux1, uy1 = W, H, 0, 0  # empty union: no constraint
    need = max(ux1 - ux0, uy1 - uy0, 1)
    lo = min(side_max, max(need, round(scale[0] * side_max)))
    hi = max(lo, min(side_max, round(scale[1] * side_max)))
    side = round(_uniform(lo, hi, generator))
    # x0 must satisfy x0 <= ux0 and x0 + side >= ux1, and lie inside the image.
    xlo, xhi = max(0, ux1 - side), min(W - side, ux0)
    ylo, yhi = max(0, uy1 - side), min(H - side, uy0)
    if xlo > xhi or ylo > yhi:  # boxes span more than a square fits: keep the full image
        return 0, 0, W, H
    x0 = round(_uniform(xlo, xhi, generator))
    y0 = round(_uniform(ylo, yhi, generator))
    return x0, y0, x0 + side, y0 + side


@dataclass
class Augmentation(Config):
    """The random part of the image pipeline: a crop and a flip that keep every text true.

    The typed `data.augment` part of a run's config (off by default) and the random half of
    :class:`ImageTransform`. Calling it maps a sample to a sample whose image stays (H, W, 3)
    uint8; `generator` (or torch's global RNG) draws the randomness.

    Attributes:
        hflip: "off" or "swap_text" (flip with probability ``hflip_prob``, swapping left/right).
        hflip_prob: flip probability under "swap_text".
        crop: "off" or "keep_boxes" (random square crop containing every box).
        crop_scale: range of the crop side as a fraction of min(H, W).
        shift: random translation of up to this many pixels each way (after the crop), the
            edge pixels repeated into the strip left behind, never moving a box out of the
            image (0: off). Like the crop it moves objects within the frame, so texts that name
            absolute places ("at the top left") hold only for shifts small against a cell.
    """

    hflip: Literal["off", "swap_text"] = "off"
    hflip_prob: float = 0.5
    crop: Literal["off", "keep_boxes"] = "off"
    crop_scale: tuple[float, float] = (0.8, 1.0)
    shift: int = 0

    def __post_init__(self) -> None:
        self.crop_scale = tuple(self.crop_scale)  # type: ignore[assignment]
        check(
            isinstance(self.shift, int) and self.shift >= 0,
            f"augment.shift={self.shift!r}: must be a whole number of pixels >= 0",
        )
        check(
            self.hflip in ("off", "swap_text"),
            f"augment.hflip={self.hflip!r}: must be 'off' or 'swap_text'",
        )
        check(
            self.crop in ("off", "keep_boxes"),
            f"augment.crop={self.crop!r}: must be 'off' or 'keep_boxes'",
        )
        check(
            len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
            f"augment.crop_scale={list(self.crop_scale)!r}: need 0 < lo <= hi <= 1",
        )
        check(
            0 <= self.hflip_prob <= 1,
            f"augment.hflip_prob={self.hflip_prob!r}: must be in [0, 1]",
        )

    @property
    def active(self) -> bool:
        """Whether this augmentation changes anything."""
        return self.crop != "off" or self.shift > 0 or (self.hflip != "off" and self.hflip_prob > 0)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        sample = sample.replace(image=to_rgb_array(np.asarray(sample.image)))
        if self.crop == "keep_boxes":
            H, W = sample.image_hw
            x0, y0, x1, y1 = random_crop_box(H, W, sample.boxes, self.crop_scale, generator)
            if (x0, y0, x1, y1) != (0, 0, W, H):
                sample = crop_sample(sample, x0, y0, x1, y1)
                sample.meta = {**sample.meta, "crop": [x0, y0, x1, y1]}
        if self.shift:
            H, W = sample.image_hw
            dx, dy = random_shift(H, W, sample.boxes, self.shift, generator)
            if dx or dy:
                sample = shift_sample(sample, dx, dy)
                sample.meta = {**sample.meta, "shift": [dx, dy]}
        if (
            self.hflip == "swap_text"
            and float(torch.rand((), generator=generator)) < self.hflip_prob
        ):
            sample = hflip_sample(sample)
        return sample


@dataclass
class ImageTransform:
    """Sample -> Sample with a (3, S, S) float image; see the module docstring.

    Attributes:
        image_size: output side S; None keeps the input size (then no resize).
        mean, std: per-channel normalization.
        hflip, hflip_prob, crop, crop_scale: the random part, as in :class:`Augmentation`.
        resample: interpolation for resizing ("nearest" suits tiny digits and scene pixels).
    """

    image_size: int | None = 64
    mean: tuple[float, ...] = DEFAULT_MEAN
    std: tuple[float, ...] = DEFAULT_STD
    hflip: Literal["off", "swap_text"] = "off"
    hflip_prob: float = 0.5
    crop: Literal["off", "keep_boxes"] = "off"
    crop_scale: tuple[float, float] = (0.8, 1.0)
    resample: Resample = "bilinear"
    augmentation: Augmentation = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.augmentation = Augmentation(
            hflip=self.hflip, hflip_prob=self.hflip_prob, crop=self.crop, crop_scale=self.crop_scale
        )
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"ImageTransform.image_size={self.image_size!r}: must be >= 1")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(
                f"ImageTransform.mean/std={self.mean!r}/{self.std!r}: need 3 values, std > 0"
            )
        if self.resample not in _RESAMPLE:
            raise ValueError(
                f"ImageTransform.resample={self.resample!r}: one of {tuple(_RESAMPLE)}"
            )

    def augment(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        """The random crop and flip only; the image stays (H, W, 3) uint8."""
        return self.augmentation(sample, generator)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        if isinstance(sample.image, torch.Tensor):
            raise TypeError(
                "ImageTransform expects a (H, W, 3) uint8 image; this sample is already a tensor"
            )
        sample = self.augment(sample, generator)
        if self.image_size is not None:
            sample = resize_sample(sample, (self.image_size, self.image_size), self.resample)
        return sample.replace(image=to_tensor(np.asarray(sample.image), self.mean, self.std))
