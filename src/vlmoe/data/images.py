"""Loading users' image files into (H, W, 3) uint8 RGB arrays, whatever their PIL mode.

:func:`load_image` is the one entry point for image files. It converts every PIL mode to RGB
(greyscale and palette expanded; alpha composited on white; 16-bit scaled to 8-bit; CMYK, YCbCr,
LAB and HSV converted), applies the EXIF orientation, decodes fully so truncated files fail
here rather than later, refuses images above ``max_pixels`` before decoding them (decompression
bombs), and turns every failure into a :class:`~vlmoe.data.errors.DataError` naming the file.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vlmoe.data.errors import DataError

DEFAULT_MAX_PIXELS = 64_000_000  # about 8000 x 8000; PIL itself refuses above 2 * 89.5M
IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


def _grey_to_rgb(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[:, :, None], 3, axis=2)


def _scale_to_uint8(a: np.ndarray, full_scale: float) -> np.ndarray:
    return np.clip(np.rint(a.astype(np.float64) * (255.0 / full_scale)), 0, 255).astype(np.uint8)


def _composite_on_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to a (H, W, 3) uint8 array.

    16-bit modes (``I;16*``) map 0..65535 to 0..255. Mode ``I`` (32-bit int) is read as 8-bit
    if its values fit in 0..255, as 16-bit if they fit in 0..65535, else min-max scaled. Mode
    ``F`` in [0, 1] is multiplied by 255, other float ranges are min-max scaled. Transparent
    pixels (alpha modes, palette with a transparent index) are composited on white.
    """
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8).copy()
    if mode.startswith("I;16"):
        return _grey_to_rgb(_scale_to_uint8(np.asarray(im).astype(np.uint16), 65535.0))
    if mode in ("I", "F"):
        a = np.asarray(im).astype(np.float64)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if mode == "I" and lo >= 0 and hi <= 255:
            return _grey_to_rgb(_scale_to_uint8(a, 255.0))
        if mode == "I" and lo >= 0 and hi <= 65535:
            return _grey_to_rgb(_scale_to_uint8(a, 65535.0))
        if mode == "F" and lo >= 0 and hi <= 1:
            return _grey_to_rgb(_scale_to_uint8(a, 1.0))
        span = hi - lo if hi > lo else 1.0
        return _grey_to_rgb(_scale_to_uint8(a - lo, span))
    if mode in ("1", "L"):
        return _grey_to_rgb(np.asarray(im.convert("L"), dtype=np.uint8))
    if mode == "P":
        has_alpha = "transparency" in im.info
        im = _composite_on_white(im) if has_alpha else im.convert("RGB")
        return np.asarray(im, dtype=np.uint8).copy()
    if mode in _ALPHA_MODES:
        return np.asarray(_composite_on_white(im), dtype=np.uint8).copy()
    # CMYK, YCbCr, LAB, HSV and anything else PIL can convert.
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def to_rgb_array(a: np.ndarray) -> np.ndarray:
    """Any image array, (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), to (H, W, 3) uint8.

    uint8 is kept; uint16 is scaled from 0..65535; bool maps to 0/255; floats in [0, 1] are
    multiplied by 255 and other floats clipped to [0, 255]. A 4th (alpha) channel is composited
    on white.
    """
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"expected an image array (H, W), (H, W, 1|3|4), got shape {a.shape}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = _scale_to_uint8(a, 65535.0)
    elif np.issubdtype(a.dtype, np.floating):
        scale = 255.0 if a.size and float(np.nanmax(a)) <= 1.0 else 1.0
        a = np.clip(np.rint(np.nan_to_num(a) * scale), 0, 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        return _grey_to_rgb(a)
    if a.shape[2] == 4:
        alpha = a[:, :, 3:4].astype(np.float64) / 255.0
        rgb = a[:, :, :3].astype(np.float64) * alpha + 255.0 * (1 - alpha)
        return np.rint(rgb).astype(np.uint8)
    return np.ascontiguousarray(a)


@contextlib.contextmanager
def _open_checked(p: Path, max_pixels: int, where: str | None) -> Iterator[Image.Image]:
    """Open image file `p` after the checks every reader needs (exists, a readable image, at
    most `max_pixels`, not empty), turning each failure inside the block into a DataError."""
    if not p.exists():
        raise DataError("image file not found", p, where)
    if not p.is_file():
        raise DataError("not a regular file", p, where)
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check replaces PIL's warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise DataError(
                        f"refused: {w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels} "
                        "(possible decompression bomb)",
                        p,
                        where,
                    )
                if w == 0 or h == 0:
                    raise DataError(f"empty image of size {w}x{h}", p, where)
                yield im
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError(f"refused as a decompression bomb: {e}", p, where) from e
    except UnidentifiedImageError as e:
        raise DataError("not a readable image (unknown format or corrupt header)", p, where) from e
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        raise DataError(f"unreadable or truncated image: {e}", p, where) from e


def load_image(
    path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, where: str | None = None
) -> np.ndarray:
    """Read an image file as a (H, W, 3) uint8 RGB array.

    Args:
        path: the image file.
        max_pixels: refuse images with more pixels than this (decompression bombs), checked
            from the header before any decoding.
        where: context for error messages, e.g. ``"manifest.jsonl line 3"``.

    Raises:
        DataError: missing file, not an image, truncated or corrupt data, too many pixels.
    """
    with _open_checked(Path(path), max_pixels, where) as im:
        im.load()
        im = ImageOps.exif_transpose(im) or im
        return pil_to_rgb(im)


def image_size(
    path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, where: str | None = None
) -> tuple[int, int]:
    """(width, height) from the header alone: :func:`load_image`'s checks without decoding."""
    with _open_checked(Path(path), max_pixels, where) as im:
        return im.size
