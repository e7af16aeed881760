"""Boxes follow the pixels exactly through flips, crops and resizes: after each transform, the
tight bounding box of an object's colour inside its box is the box itself."""

import numpy as np
import pytest

from vlmoe.data.shapes import COLOURS, ShapesConfig, generate_scene
from vlmoe.data.shapes_data import ShapesDataset
from vlmoe.data.transforms import crop_sample, hflip_sample, resize_sample


def pixel_box(image: np.ndarray, colour: tuple[int, int, int], box) -> tuple[int, ...]:
    """Tight box (x0, y0, x1, y1), x1/y1 exclusive, of `colour` pixels within `box`."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    region = np.all(image[y0:y1, x0:x1] == colour, axis=-1)
    ys, xs = np.nonzero(region)
    return (x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1)


def check(sample):
    img = np.asarray(sample.image)
    for b in sample.boxes:
        colour = COLOURS[b.label.split()[0]]
        assert pixel_box(img, colour, b.xyxy) == tuple(int(round(v)) for v in b.xyxy), b


@pytest.mark.parametrize("index", range(6))
def test_boxes_follow_flip_crop_resize(index):
    s = ShapesDataset(ShapesConfig(), "train", 10)[index]
    check(s)
    check(hflip_sample(s))
    check(resize_sample(s, (128, 128), "nearest"))  # integer scale: boxes stay on pixels
    check(hflip_sample(resize_sample(s, (192, 128), "nearest")))  # non-square
    x0 = int(min(b.x0 for b in s.boxes))
    y0 = int(min(b.y0 for b in s.boxes))
    check(crop_sample(s, x0, y0, 64, 64))


def test_crop_clips_cut_boxes_to_the_visible_part():
    s = ShapesDataset(ShapesConfig(), "train", 1)[0]
    b = s.boxes[0]
    cx, cy = int((b.x0 + b.x1) / 2), int((b.y0 + b.y1) / 2)
    c = crop_sample(s, cx, cy, 64, 64)
    assert (c.boxes[0].x0, c.boxes[0].y0) == (0, 0)
    assert c.boxes[0].x1 == b.x1 - cx and c.boxes[0].y1 == b.y1 - cy


def test_occlusion_scenes_overlap_within_the_limit():
    cfg = ShapesConfig(max_objects=6, min_objects=1, occlusion=0.3, large_objects="any")
    overlaps, counts = 0, []
    for i in range(200):
        objs = generate_scene(0, i, cfg).objects
        counts.append(len(objs))
        for a in objs:
            for o in objs:
                if a is o:
                    continue
                w = min(a.box[2], o.box[2]) - max(a.box[0], o.box[0])
                h = min(a.box[3], o.box[3]) - max(a.box[1], o.box[1])
                covered = max(0, w) * max(0, h) / a.area
                assert covered <= 0.3
                overlaps += covered > 0
    assert overlaps > 20 and min(counts) == 1 and max(counts) == 6
    # The default world is unchanged: no overlaps.
    objs = [o for i in range(50) for o in [generate_scene(0, i, ShapesConfig()).objects]]
    for scene in objs:
        for a in scene:
            for o in scene:
                assert a is o or not (
                    min(a.box[2], o.box[2]) > max(a.box[0], o.box[0])
                    and min(a.box[3], o.box[3]) > max(a.box[1], o.box[1])
                )
