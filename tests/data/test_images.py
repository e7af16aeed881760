"""load_image: every PIL mode converts correctly; every bad file raises a DataError naming it."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from vlmoe.data import DataError, load_image, pil_to_rgb, to_rgb_array


def save(tmp_path, im, name, **kw):
    p = tmp_path / name
    im.save(p, **kw)
    return p


def png_with_header(path, width, height):
    """A PNG whose header claims width x height but holds almost no data (a decompression bomb)."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def test_rgb_and_rgba_on_white(tmp_path):
    a = np.zeros((4, 5, 4), dtype=np.uint8)
    a[..., 0] = 200
    a[:2, :, 3] = 255  # top half opaque red-ish, bottom half transparent
    img = load_image(save(tmp_path, Image.fromarray(a, "RGBA"), "x.png"))
    assert img.shape == (4, 5, 3) and img.dtype == np.uint8
    assert (img[:2] == [200, 0, 0]).all() and (img[2:] == 255).all()
    rgb = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    assert (load_image(save(tmp_path, Image.fromarray(rgb), "rgb.png")) == rgb).all()


def test_grey_modes(tmp_path):
    L = Image.fromarray(np.full((3, 3), 100, dtype=np.uint8))
    assert (load_image(save(tmp_path, L, "l.png")) == 100).all()
    one = Image.new("1", (4, 4), 0)
    one.putpixel((1, 1), 1)
    img = load_image(save(tmp_path, one, "one.png"))
    assert img[1, 1].tolist() == [255, 255, 255] and img[0, 0].tolist() == [0, 0, 0]
    la = Image.new("LA", (2, 2), (100, 255))
    la.putpixel((0, 0), (100, 0))
    img = load_image(save(tmp_path, la, "la.png"))
    assert img[0, 0].tolist() == [255] * 3 and img[1, 1].tolist() == [100] * 3


def test_palette_with_and_without_transparency(tmp_path):
    p = Image.new("P", (3, 3), 1)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    p.putpixel((0, 0), 0)
    img = load_image(save(tmp_path, p, "p.png"))
    assert img[1, 1].tolist() == [10, 200, 30] and img[0, 0].tolist() == [0, 0, 0]
    img = load_image(save(tmp_path, p, "pt.png", transparency=0))
    assert img[0, 0].tolist() == [255, 255, 255] and img[1, 1].tolist() == [10, 200, 30]
    gif = load_image(save(tmp_path, p, "p.gif"))
    assert gif[1, 1].tolist() == [10, 200, 30]


def test_16_bit_scaled(tmp_path):
    a = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    im = Image.fromarray(a)
    assert im.mode.startswith("I;16")
    img = load_image(save(tmp_path, im, "g16.png"))
    assert img[0, :, 0].tolist() == [0, 128, 255]
    assert (img[..., 0] == img[..., 2]).all()
    tif = load_image(save(tmp_path, im, "g16.tif"))
    assert tif[0, :, 0].tolist() == [0, 128, 255]


def test_32_bit_int_and_float(tmp_path):
    i32 = Image.fromarray(np.array([[0, 1000, 65535]], dtype=np.int32), "I")
    assert load_image(save(tmp_path, i32, "i.tif"))[0, :, 0].tolist() == [0, 4, 255]
    i8 = Image.fromarray(np.array([[0, 10, 255]], dtype=np.int32), "I")
    assert pil_to_rgb(i8)[0, :, 0].tolist() == [0, 10, 255]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert load_image(save(tmp_path, f, "f.tif"))[0, :, 0].tolist() == [0, 128, 255]
    f2 = Image.fromarray(np.array([[-1.0, 0.0, 1.0]], dtype=np.float32), "F")
    assert pil_to_rgb(f2)[0, :, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize(
    ("mode", "value", "grey"),
    [
        ("F", 250.0, 250),  # 8-bit range
        ("F", 0.5, 128),  # [0, 1]
        ("F", -0.5, 64),  # [-1, 1]
        ("I", 200, 200),  # 8-bit
        ("I", 30000, 117),  # 16-bit: 30000 * 255 / 65535
        ("I", 300000, 146),  # 19-bit: 300000 * 255 / (2**19 - 1)
    ],
)
def test_uniform_high_bit_depth_images_keep_their_grey_level(tmp_path, mode, value, grey):
    dtype = np.float32 if mode == "F" else np.int32
    im = Image.fromarray(np.full((4, 5), value, dtype=dtype), mode)
    out = load_image(save(tmp_path, im, f"u{mode}.tif"))
    assert out.shape == (4, 5, 3) and (out == grey).all(), out[0, 0]


def test_high_bit_depth_scale_does_not_depend_on_the_image_range():
    # A 20-bit image holding only its upper half stays bright, not stretched to black..white.
    a = np.array([[600_000, 700_000, 1_000_000]], dtype=np.int32)
    out = pil_to_rgb(Image.fromarray(a, "I"))[0, :, 0].tolist()
    assert out == [round(v * 255 / (2**20 - 1)) for v in a[0].tolist()]


def test_cmyk_and_other_colour_spaces(tmp_path):
    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))
    assert (load_image(save(tmp_path, cmyk, "c.tif")) == [255, 0, 0]).all()
    jpg = load_image(save(tmp_path, cmyk, "c.jpg", quality=100))
    assert jpg.shape == (2, 2, 3) and jpg[0, 0, 0] > 200 and jpg[0, 0, 1] < 60
    rgb = Image.new("RGB", (2, 2), (30, 120, 220))
    for mode in ("YCbCr", "HSV", "LAB"):
        out = pil_to_rgb(rgb.convert(mode))
        assert out.shape == (2, 2, 3)
        assert np.abs(out.astype(int) - [30, 120, 220]).max() <= 8, mode
    pa = Image.new("PA", (1, 1))
    assert pil_to_rgb(pa).tolist() == [[[255, 255, 255]]]
    rgba_pre = Image.new("RGBA", (1, 1), (255, 0, 0, 255)).convert("RGBa")
    assert pil_to_rgb(rgba_pre).tolist() == [[[255, 0, 0]]]


def test_exif_orientation_applied(tmp_path):
    im = Image.new("RGB", (4, 2), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    p = save(tmp_path, im, "o.jpg", exif=exif.tobytes())
    assert load_image(p).shape == (4, 2, 3)


def test_missing_directory_empty_and_garbage(tmp_path):
    with pytest.raises(DataError, match="not found") as e:
        load_image(tmp_path / "nope.png", where="manifest.jsonl line 3")
    assert "nope.png" in str(e.value) and "line 3" in str(e.value)
    with pytest.raises(DataError, match="not a regular file"):
        load_image(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match="empty.png.*not a readable image"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "text.jpg").write_text("hello, I am not a picture")
    with pytest.raises(DataError, match="text.jpg"):
        load_image(tmp_path / "text.jpg")


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_truncated(tmp_path, fmt):
    a = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    p = save(tmp_path, Image.fromarray(a), f"t.{fmt}", format=fmt.upper())
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated") as e:
        load_image(p)
    assert str(p) in str(e.value)
    assert isinstance(e.value, ValueError)


def test_decompression_bombs_refused(tmp_path):
    # Above our limit but below PIL's own: our check, from the header, before any decoding.
    p = png_with_header(tmp_path / "bomb.png", 20_000, 5_000)
    with pytest.raises(DataError, match="bomb.png.*exceeds max_pixels"):
        load_image(p)
    # Far above PIL's limit: PIL's own error, converted.
    p = png_with_header(tmp_path / "huge.png", 100_000, 100_000)
    with pytest.raises(DataError, match="huge.png.*decompression bomb"):
        load_image(p)
    small = save(tmp_path, Image.new("RGB", (20, 20)), "s.png")
    with pytest.raises(DataError, match="max_pixels=100"):
        load_image(small, max_pixels=100)
    assert load_image(small, max_pixels=400).shape == (20, 20, 3)


def test_to_rgb_array():
    g = np.array([[0, 255]], dtype=np.uint8)
    assert to_rgb_array(g).shape == (1, 2, 3)
    assert to_rgb_array(g[:, :, None]).shape == (1, 2, 3)
    assert to_rgb_array(np.array([[65535]], dtype=np.uint16)).tolist() == [[[255] * 3]]
    assert to_rgb_array(np.array([[0.5]], dtype=np.float32)).tolist() == [[[128] * 3]]
    assert to_rgb_array(np.array([[True]])).tolist() == [[[255] * 3]]
    rgba = np.array([[[0, 0, 0, 0]]], dtype=np.uint8)
    assert to_rgb_array(rgba).tolist() == [[[255] * 3]]
    with pytest.raises(ValueError, match="shape"):
        to_rgb_array(np.zeros((2, 2, 2)))
