"""Loading users' image files into (H, W, 3) uint8 RGB arrays, whatever their PIL mode.

:func:`load_image` is the one entry point for image files. It converts every PIL mode to RGB
(greyscale and palette expanded; alpha composited on white; 16-bit, 32-bit int and float scaled
by their bit depth's range; CMYK, YCbCr, LAB and HSV converted), applies the EXIF orientation,
decodes fully so truncated files fail here rather than later, refuses images above
``max_pixels`` before decoding them (decompression bombs), and turns every failure into a
:class:`~vlmoe.data.errors.DataError` naming the file. :func:`image_size` is the cheap check
datasets run up front: the header, plus the end of PNG/JPEG/BMP/WebP files for truncation.
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
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=full_scale, neginf=0.0)
    return np.clip(np.rint(a * (255.0 / full_scale)), 0, 255).astype(np.uint8)


def _full_scale(a: np.ndarray, mode: str) -> float:
    """The value that maps to white in a mode ``I`` / ``F`` image: the range of the bit depth its
    values need (never the image's own min and max, so a uniform image keeps its grey level).

    Floats up to 1.0 are read as [0, 1]; values up to 255 as 8-bit, up to 65535 as 16-bit, larger
    ones as the smallest bit depth that holds them (``2**bits - 1``, e.g. 20-bit sensor data).
    """
    finite = a[np.isfinite(a)]
    hi = float(finite.max()) if finite.size else 0.0
    if mode == "F" and hi <= 1.0:
        return 1.0
    if hi <= 255:
        return 255.0
    if hi <= 65535:
        return 65535.0
    return float(2 ** int(np.ceil(np.log2(hi + 1))) - 1)


_STRIP_PIXELS = 1 << 22  # large images are copied out of PIL a strip of rows at a time


def _to_array(im: Image.Image) -> np.ndarray:
    """`np.array(im)`, without the whole-image temporary that numpy's conversion makes (PIL
    hands numpy a full `tobytes()` copy): for a 64-megapixel RGB image that is 192 MB less."""
    w, h = im.size
    if w * h <= _STRIP_PIXELS:
        return np.array(im)
    rows = max(1, _STRIP_PIXELS // w)
    first = np.asarray(im.crop((0, 0, w, rows)))
    out = np.empty((h, *first.shape[1:]), dtype=first.dtype)
    out[:rows] = first
    for y in range(rows, h, rows):
        out[y : y + rows] = np.asarray(im.crop((0, y, w, min(h, y + rows))))
    return out


def _composite_on_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to a (H, W, 3) uint8 array.

    16-bit modes (``I;16*``) map 0..65535 to 0..255. Modes ``I`` (32-bit int) and ``F`` (float)
    are scaled by the range of their bit depth, not by the image's min and max (see
    `_full_scale`): ``F`` in [0, 1] is multiplied by 255 and ``F`` in [-1, 1] with negative
    values mapped from [-1, 1]; values up to 255 are 8-bit, up to 65535 16-bit, larger ones the
    smallest bit depth holding them; other negative values and NaN become black. Transparent
    pixels (alpha modes, palette with a transparent index) are composited on white.
    """
    mode = im.mode
    if mode == "RGB":
        return _to_array(im)
    if mode.startswith("I;16"):
        return _grey_to_rgb(_scale_to_uint8(np.asarray(im).astype(np.uint16), 65535.0))
    if mode in ("I", "F"):
        a = np.asarray(im).astype(np.float64)
        finite = a[np.isfinite(a)]
        if mode == "F" and finite.size and -1.0 <= finite.min() < 0 and finite.max() <= 1.0:
            a = (a + 1.0) / 2.0  # a signed normalized image, [-1, 1]
        return _grey_to_rgb(_scale_to_uint8(a, _full_scale(a, mode)))
    if mode in ("1", "L"):
        return _grey_to_rgb(_to_array(im if mode == "L" else im.convert("L")))
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
        # In place: without an orientation tag nothing is copied (the default returns a copy).
        ImageOps.exif_transpose(im, in_place=True)
        return pil_to_rgb(im)


# The bytes a complete file of these formats ends with (searched in its last _TAIL bytes, since
# some writers append a few bytes of padding or metadata after them).
# (GIF's one-byte trailer says nothing, and PIL decodes a cut GIF without complaint.)
_END_MARKERS = {"PNG": b"IEND\xaeB`\x82", "JPEG": b"\xff\xd9"}
_TAIL = 4096


def _declared_size(head: bytes, fmt: str | None) -> int | None:
    """The file size a BMP or WebP header declares (None for other formats)."""
    if fmt == "BMP" and len(head) >= 6:
        return int.from_bytes(head[2:6], "little")
    if fmt == "WEBP" and len(head) >= 8:
        return int.from_bytes(head[4:8], "little") + 8
    return None


def _looks_complete(p: Path, fmt: str | None) -> bool:
    """False when the file visibly ends early: shorter than its header declares (BMP, WebP), or
    no end marker near its end (PNG, JPEG). Other formats are not checked (True)."""
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        declared = _declared_size(head, fmt)
        if declared is not None:
            return size >= declared
        marker = _END_MARKERS.get(fmt or "")
        if marker is None:
            return True
        f.seek(max(0, size - _TAIL))
        return marker in f.read()


def image_size(
    path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, where: str | None = None
) -> tuple[int, int]:
    """(width, height) from the header, plus a cheap check that the file is not truncated.

    :func:`load_image`'s checks without decoding, except that a PNG or JPEG lacking its end
    marker (or a BMP or WebP shorter than its header says) is decoded to confirm, so a truncated
    file of those formats fails here with a DataError rather than later when it is loaded.
    """
    p = Path(path)
    with _open_checked(p, max_pixels, where) as im:
        if not _looks_complete(p, im.format):
            im.load()  # a truncated file raises here; a file with a long trailer passes
        return im.size
