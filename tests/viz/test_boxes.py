import numpy as np
import pytest
from PIL import Image

from vlmoe.viz.boxes import PALETTE, caption_band, draw_boxes, save_image


def test_draw_boxes_outlines_in_class_colour(tmp_path):
    img = np.zeros((64, 64, 3), np.uint8)
    out = draw_boxes(
        img, [[10, 20, 30, 40]], ["red circle"], [0.9], class_ids=[1], ground_truth=[[0, 0, 8, 8]]
    )
    assert out.shape == (384, 384, 3)  # 6x nearest enlargement
    s = 6
    # The left edge of the box, below its label tag, is drawn in class 1's colour.
    assert tuple(out[40 * s - 4, 10 * s]) == PALETTE[1]
    assert tuple(out[30 * s, 20 * s]) == (0, 0, 0)  # inside stays untouched
    path = save_image(out, tmp_path / "p" / "boxes.png")
    assert np.array_equal(np.asarray(Image.open(path)), out)


def test_draw_boxes_bad_input():
    with pytest.raises(ValueError, match="one label"):
        draw_boxes(np.zeros((8, 8, 3), np.uint8), [[0, 0, 1, 1]], [])
    with pytest.raises(ValueError, match="uint8"):
        draw_boxes(np.zeros((8, 8), np.uint8), [], [])


def test_caption_band_is_a_white_strip_with_dark_text():
    band = caption_band(300, "dense backbone")
    assert band.shape == (18, 300, 3) and band.dtype == np.uint8
    assert band[:, :150].min() < 100 and (band[:, 200:] == 255).all()  # text at the left only
