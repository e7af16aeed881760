"""Transforms keep texts true: flips swap left/right, crops keep all boxes, boxes follow pixels."""

import dataclasses
import re

import numpy as np
import pytest
import torch

from tests.data.scene_oracle import Oracle, check_pixels, objs_from_sample
from vlmoe.data import (
    COLOURS,
    ImageTransform,
    MnistDataset,
    ShapesConfig,
    ShapesDataset,
    denormalize,
    hflip_sample,
    make_sample,
    swap_left_right,
    to_tensor,
)
from vlmoe.data.grammar import parse_listing
from vlmoe.data.transforms import crop_sample, random_crop_box, resize_sample

CFG = ShapesConfig(num_questions=12, num_captions=5)


def assert_texts_true(sample, cfg=CFG):
    objs = objs_from_sample(sample)
    oracle = Oracle(objs, cfg.shapes, cfg.colours)
    for qa in sample.qa:
        assert oracle.answer(qa.question) == qa.answer, qa
    for c in sample.captions:
        oracle.check_caption(c)
    for r in sample.refs:
        assert oracle.resolve(r.text) is objs[r.box], r
    return objs


def test_swap_left_right():
    assert (
        swap_left_right("the star to the left of the circle")
        == "the star to the right of the circle"
    )
    assert swap_left_right("right") == "left"
    assert swap_left_right("leftmost, rightmost; bright") == "rightmost, leftmost; bright"


def test_hflip_keeps_every_text_and_pixel_true():
    changed = 0
    for i in range(60):
        s = make_sample(CFG, "train", i)
        f = hflip_sample(s)
        assert (f.image == s.image[:, ::-1]).all()
        objs = assert_texts_true(f)
        check_pixels(f.image, objs, COLOURS)
        changed += f.captions != s.captions or f.qa != s.qa
        answers = [q.answer for q in s.qa]
        flipped = [q.answer for q in f.qa]
        assert [swap_left_right(a) for a in answers] == flipped
        assert hflip_sample(f).captions == s.captions
        # the listing names the objects left to right in the mirrored image too
        by_x = sorted(objs, key=lambda o: (o.box[0] + o.box[2]) / 2)
        assert parse_listing(f.captions[0]) == [(o.size, o.colour, o.shape) for o in by_x]
    assert changed > 20


def test_crop_keeps_boxes_and_texts():
    gen = torch.Generator().manual_seed(0)
    cropped = 0
    for i in range(60):
        s = make_sample(CFG, "train", i)
        x0, y0, x1, y1 = random_crop_box(64, 64, s.boxes, (0.5, 1.0), gen)
        assert x1 - x0 == y1 - y0 and x0 >= 0 and x1 <= 64 and y0 >= 0 and y1 <= 64
        for b in s.boxes:
            assert x0 <= b.x0 and b.x1 <= x1 and y0 <= b.y0 and b.y1 <= y1
        c = crop_sample(s, x0, y0, x1, y1)
        cropped += (x1 - x0) < 64
        objs = assert_texts_true(c)
        check_pixels(c.image, objs, COLOURS)
    assert cropped > 10


def test_resize_scales_boxes():
    s = make_sample(CFG, "train", 0)
    r = resize_sample(s, (128, 128), "nearest")
    assert r.image.shape == (128, 128, 3)
    for a, b in zip(s.boxes, r.boxes, strict=True):
        assert (b.x0, b.y0, b.x1, b.y1) == (2 * a.x0, 2 * a.y0, 2 * a.x1, 2 * a.y1)
    assert (r.image[::2, ::2] == s.image).all()


def test_image_transform_full_pipeline():
    t = ImageTransform(
        image_size=32, hflip="swap_text", hflip_prob=1.0, crop="keep_boxes", resample="nearest"
    )
    ds = ShapesDataset(CFG, "train", 20, transform=t)
    for i in range(20):
        s = ds[i]
        assert s.image.shape == (3, 32, 32) and s.image.dtype == torch.float32
        assert s.meta["hflip"]
        assert_texts_true(s)  # boxes scaled to 32 px keep every relation
        for b in s.boxes:
            assert 0 <= b.x0 < b.x1 <= 32 and 0 <= b.y0 < b.y1 <= 32
    with pytest.raises(TypeError, match="already a tensor"):
        t(ds[0])


def test_no_augmentation_is_deterministic_and_identity():
    t = ImageTransform(image_size=None)
    s = make_sample(CFG, "val", 3)
    out = t(s)
    assert out.boxes == s.boxes and out.captions == s.captions
    assert (denormalize(out.image) == s.image).all()


def test_augmentation_follows_torch_seed():
    t = ImageTransform(image_size=64, hflip="swap_text", crop="keep_boxes")
    s = make_sample(CFG, "train", 1)
    torch.manual_seed(0)
    a = [t(s).image for _ in range(4)]
    torch.manual_seed(0)
    b = [t(s).image for _ in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(t(s, g1).image, t(s, g2).image)


def test_to_tensor_normalization():
    img = np.full((2, 2, 3), 255, dtype=np.uint8)
    assert torch.allclose(to_tensor(img), torch.ones(3, 2, 2))
    x = to_tensor(img, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert torch.allclose(
        x[:, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    )


def test_grey_digits_become_rgb_tensors():
    ds = MnistDataset("test", transform=ImageTransform(image_size=32))
    x = ds[0].image
    assert x.shape == (3, 32, 32) and torch.equal(x[0], x[2])
    grey = dataclasses.replace(make_sample(CFG, "train", 0), image=np.zeros((5, 6), dtype=np.uint8))
    assert ImageTransform(image_size=None)(grey).image.shape == (3, 5, 6)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"hflip": "always"}, "augment.hflip"),
        ({"crop": "random"}, "augment.crop"),
        ({"crop_scale": (0.0, 1.0)}, "augment.crop_scale"),
        ({"hflip_prob": 2.0}, "augment.hflip_prob"),
        ({"image_size": 0}, "ImageTransform.image_size"),
        ({"std": (1.0, 0.0, 1.0)}, "ImageTransform.mean/std"),
        ({"resample": "lanczos"}, "ImageTransform.resample"),
    ],
)
def test_transform_validation(kwargs, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        ImageTransform(**kwargs)


def test_shift_moves_pixels_and_boxes_and_repeats_the_edge():
    from vlmoe.data.sample import Box, Sample
    from vlmoe.data.transforms import shift_sample

    img = np.zeros((8, 10, 3), np.uint8)
    img[:, 0] = 50  # left edge column
    img[5, 5] = 255
    s = Sample(img, boxes=[Box(4, 4, 6, 6, "dot")])
    out = shift_sample(s, 2, -1)  # right 2, up 1
    assert out.image[4, 7].tolist() == [255, 255, 255]
    assert int(out.image.sum()) == 255 * 3 + 50 * 3 * (8 + 2 * 8)  # dot + edge column x3
    assert (out.image[:, :3] == 50).all()  # the left edge repeated into the vacated strip
    b = out.boxes[0]
    assert (b.x0, b.y0, b.x1, b.y1) == (6, 3, 8, 5)


def test_random_shift_keeps_every_box_inside_and_covers_the_range():
    from vlmoe.data.sample import Box
    from vlmoe.data.transforms import random_shift

    g = torch.Generator().manual_seed(0)
    boxes = [Box(1, 5, 4, 9, "a")]  # 1 px from the left edge, 1 px from the bottom (H=10)
    draws = {random_shift(10, 12, boxes, 3, g) for _ in range(400)}
    assert {dx for dx, _ in draws} == {-1, 0, 1, 2, 3}
    assert {dy for _, dy in draws} == {-3, -2, -1, 0, 1}
    free = {random_shift(10, 12, [], 2, g) for _ in range(400)}
    assert free == {(dx, dy) for dx in range(-2, 3) for dy in range(-2, 3)}


def test_shift_augmentation_keeps_texts_true_and_follows_the_generator():
    from vlmoe.data import Augmentation

    aug = Augmentation(shift=3)
    ds = ShapesDataset(CFG, "train", 20)
    for i in range(20):
        a = aug(ds[i], torch.Generator().manual_seed(i))
        b = aug(ds[i], torch.Generator().manual_seed(i))
        assert np.array_equal(a.image, b.image) and a.meta.get("shift") == b.meta.get("shift")
        H, W = a.image_hw
        for box in a.boxes:
            assert 0 <= box.x0 <= box.x1 <= W and 0 <= box.y0 <= box.y1 <= H
        assert_texts_true(a)  # objects move within the frame; what the texts say stays true
    with pytest.raises(ValueError, match=re.escape("augment.shift")):
        Augmentation(shift=-1)
