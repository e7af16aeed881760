"""Turning a request's image URL into an (H, W, 3) uint8 array, within the server's limits.

`data:image/<png|jpeg|webp|gif|bmp>;base64,...` URLs are decoded in memory; `http(s)` URLs are
refused unless the server was started with `--allow-remote-images`, and then fetched with a
byte cap and a timeout. The pixel count is checked from the image header before decoding
(decompression bombs), as `vlmoe.data.images.load_image` does for files.
"""

from __future__ import annotations

import base64
import binascii
import io
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vlmoe.data.images import pil_to_rgb
from vlmoe.serve.errors import APIError, bad_request

IMAGE_TYPES = ("png", "jpeg", "jpg", "webp", "gif", "bmp")


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = 16_000_000
    max_bytes: int = 20 * 2**20
    allow_remote: bool = False
    remote_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_bytes", "remote_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


def decode_image_url(url: str, limits: ImageLimits, param: str = "image") -> np.ndarray:
    """(H, W, 3) uint8 from a data URL (or a remote URL when allowed); `APIError` otherwise."""
    head = url[:64].lower()
    if head.startswith("data:"):
        return decode_image_bytes(_data_url_bytes(url, param), limits, param)
    if head.startswith(("http://", "https://")):
        if not limits.allow_remote:
            raise bad_request(
                f"{param}: remote image URLs are refused by this server (start it with "
                "--allow-remote-images); send a data:image/png;base64,... URL instead",
                param,
                "remote_image_refused",
            )
        return decode_image_bytes(_fetch(url, limits, param), limits, param)
    raise bad_request(
        f"{param}: expected a data:image/...;base64 URL, got {url[:40]!r}", param, "invalid_image"
    )


def _data_url_bytes(url: str, param: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.lower().endswith(";base64"):
        raise bad_request(f"{param}: a data URL must be data:image/TYPE;base64,DATA", param)
    mime = header[5 : -len(";base64")].lower()
    if not mime.startswith("image/") or mime[6:] not in IMAGE_TYPES:
        raise bad_request(
            f"{param}: unsupported image type {mime!r} (use one of image/"
            + ", image/".join(IMAGE_TYPES)
            + ")",
            param,
            "invalid_image",
        )
    try:
        return base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(
            f"{param}: the data URL is not valid base64", param, "invalid_image"
        ) from None


def _fetch(url: str, limits: ImageLimits, param: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=limits.remote_timeout_s) as response:  # noqa: S310
            data = response.read(limits.max_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise bad_request(
            f"{param}: could not fetch {url[:80]!r} ({e})", param, "invalid_image"
        ) from None
    if len(data) > limits.max_bytes:
        raise APIError(413, f"{param}: the image at {url[:80]!r} is over {limits.max_bytes} bytes")
    return data


def decode_image_bytes(data: bytes, limits: ImageLimits, param: str = "image") -> np.ndarray:
    """Decode an encoded image fully, refusing it above `limits.max_pixels` before decoding."""
    if len(data) > limits.max_bytes:
        raise APIError(413, f"{param}: {len(data)} bytes exceeds the limit of {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > limits.max_pixels:
                    raise APIError(
                        413,
                        f"{param}: {w}x{h} = {w * h} pixels exceeds the limit of "
                        f"{limits.max_pixels}",
                        param=param,
                        code="image_too_large",
                    )
                if w == 0 or h == 0:
                    raise bad_request(f"{param}: empty image of size {w}x{h}", param)
                im.load()
                im = ImageOps.exif_transpose(im) or im
                return pil_to_rgb(im)
    except APIError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise bad_request(
            f"{param}: not a decodable image ({type(e).__name__})", param, "invalid_image"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        raise bad_request(
            f"{param}: unreadable or truncated image ({e})", param, "invalid_image"
        ) from None
