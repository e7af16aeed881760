"""The scene world: determinism, truth of every text, pixels, splits, config validation."""

import dataclasses
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.data.scene_oracle import Oracle, check_pixels, objs_from_sample
from vlmoe.data import (
    COLOURS,
    SHAPES,
    ShapesConfig,
    ShapesDataset,
    answer_vocab,
    generate_scene,
    make_sample,
    render,
)
from vlmoe.data.shapes import Scene, SceneObject

CFG = ShapesConfig()


def check_sample(sample, cfg):
    objs = objs_from_sample(sample)
    oracle = Oracle(objs, cfg.shapes, cfg.colours)
    vocab = set(answer_vocab(cfg))
    for qa in sample.qa:
        assert oracle.answer(qa.question) == qa.answer, qa
        assert qa.answer in vocab
    for c in sample.captions:
        oracle.check_caption(c)
    for r in sample.refs:
        assert oracle.resolve(r.text) is objs[r.box], r
    return objs


def test_same_seed_same_bytes_and_different_seeds_differ():
    a = [make_sample(CFG, "train", i) for i in range(20)]
    b = [make_sample(CFG, "train", i) for i in range(20)]
    for x, y in zip(a, b, strict=True):
        assert x.image.tobytes() == y.image.tobytes()
        assert (x.captions, x.qa, x.boxes, x.refs, x.label) == (
            y.captions,
            y.qa,
            y.boxes,
            y.refs,
            y.label,
        )
    other = [make_sample(dataclasses.replace(CFG, seed=1), "train", i) for i in range(20)]
    assert sum(x.image.tobytes() != y.image.tobytes() for x, y in zip(a, other, strict=True)) >= 19
    val = [make_sample(CFG, "val", i) for i in range(20)]
    assert sum(x.image.tobytes() != y.image.tobytes() for x, y in zip(a, val, strict=True)) >= 19
    assert len({s.image.tobytes() for s in a}) == 20


def test_sample_independent_of_order_and_workers():
    ds = ShapesDataset(CFG, "train", 12)
    forward = [ds[i].image.tobytes() for i in range(12)]
    backward = [ds[i].image.tobytes() for i in reversed(range(12))][::-1]
    assert forward == backward
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, collate_fn=lambda s: s)
    assert [s.image.tobytes() for s in loader] == forward


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_text_true_and_pixels_agree(split):
    cfg = dataclasses.replace(CFG, background="noise", num_questions=12, num_captions=5)
    kinds = Counter()
    for i in range(150):
        s = make_sample(cfg, split, i)
        assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
        objs = check_sample(s, cfg)
        check_pixels(s.image, objs, COLOURS)
        kinds.update(q.kind for q in s.qa)
        assert len(s.qa) <= 12 and 1 <= len(s.captions) <= 5
    assert set(kinds) == {"colour", "shape", "count", "exist", "spatial", "compare"}


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    index=st.integers(0, 10**6),
    large=st.sampled_from(["one", "any"]),
    max_objects=st.integers(1, 6),
    background=st.sampled_from(["plain", "noise", "gradient"]),
)
def test_property_texts_true(seed, index, large, max_objects, background):
    cfg = ShapesConfig(
        seed=seed,
        large_objects=large,
        max_objects=max_objects,
        background=background,
        shapes=SHAPES,
        colours=tuple(COLOURS),
        num_questions=10,
    )
    s = make_sample(cfg, "train", index)
    objs = check_sample(s, cfg)
    check_pixels(s.image, objs, COLOURS)


def test_scene_invariants():
    for i in range(200):
        scene = generate_scene(0, i, CFG)
        objs = scene.objects
        assert CFG.min_objects <= len(objs) <= CFG.max_objects
        assert len({(o.colour, o.shape) for o in objs}) == len(objs)
        assert sum(o.size == "large" for o in objs) == 1  # large_objects="one"
        areas = sorted(o.area for o in objs)
        assert len(areas) == 1 or areas[-1] > areas[-2]
        for a in objs:
            assert 0 <= a.box[0] < a.box[2] <= 64 and 0 <= a.box[1] < a.box[3] <= 64
            for b in objs:
                if a is not b:
                    x_apart = a.box[2] <= b.box[0] or b.box[2] <= a.box[0]
                    y_apart = a.box[3] <= b.box[1] or b.box[3] <= a.box[1]
                    assert x_apart or y_apart
        small = [o.area for o in objs if o.size == "small"]
        large = [o.area for o in objs if o.size == "large"]
        assert not small or not large or max(small) < min(large)


@pytest.mark.parametrize("label", ["largest_shape", "largest_colour", "count", "none"])
def test_class_label(label):
    cfg = dataclasses.replace(CFG, label=label)
    ds = ShapesDataset(cfg, "train", 30)
    for i in range(30):
        s = ds[i]
        scene = s.meta["scene"]
        big = max(scene.objects, key=lambda o: o.area)
        expected = {
            "largest_shape": big.shape,
            "largest_colour": big.colour,
            "count": str(len(scene.objects)),
            "none": None,
        }[label]
        assert (None if s.label is None else ds.label_names[s.label]) == expected


def test_compositional_split_holds_out_pairs():
    held = (("red", "circle"), ("blue", "star"))
    cfg = dataclasses.replace(CFG, holdout=held)
    for split in ("train", "val"):
        for i in range(300):
            s = make_sample(cfg, split, i)
            pairs = {(o.colour, o.shape) for o in s.meta["scene"].objects}
            assert not pairs & set(held)
            text = " ".join(s.texts())
            assert "red circle" not in text and "blue star" not in text
    seen = Counter()
    for i in range(200):
        pairs = {(o.colour, o.shape) for o in generate_scene(0, i, cfg, "comp_test").objects}
        assert pairs & set(held)
        seen.update(pairs & set(held))
    assert set(seen) == set(held)
    test_pairs = set()
    for i in range(300):
        test_pairs |= {(o.colour, o.shape) for o in generate_scene(0, i, cfg, "test").objects}
    assert set(held) <= test_pairs


def test_comp_test_needs_holdout():
    with pytest.raises(ValueError, match="holdout"):
        ShapesDataset(CFG, "comp_test", 5)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"image_size": 8}, "image_size"),
        ({"min_objects": 0}, "min_objects"),
        ({"max_objects": 12}, "max_objects"),
        ({"shapes": ("circle", "hexagon")}, "shapes"),
        ({"colours": ("red", "mauve")}, "colours"),
        ({"holdout": (("red", "hexagon"),)}, "holdout"),
        ({"large_size": 0.1}, "large_size"),
        ({"background": "stripes"}, "background"),
        ({"label": "biggest"}, "label"),
        ({"shapes": ("circle",), "colours": ("red", "blue"), "max_objects": 3}, "holdout"),
    ],
)
def test_config_validation_names_field(kwargs, field):
    with pytest.raises(ValueError, match=f"ShapesConfig.{field}"):
        ShapesConfig(**kwargs)


def test_config_dict_round_trip_and_unknown_field():
    cfg = ShapesConfig(holdout=[["red", "circle"]], shapes=["circle", "square"])
    assert ShapesConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown key"):
        ShapesConfig.from_dict({"colour": ["red"]})


def test_bad_split_and_index():
    with pytest.raises(ValueError, match="split"):
        generate_scene(0, 0, CFG, "training")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="index"):
        generate_scene(0, -1, CFG)
    ds = ShapesDataset(CFG, "train", 3)
    with pytest.raises(IndexError):
        ds[3]


def test_every_shape_renders_inside_its_box():
    objs = tuple(
        SceneObject(
            s,
            c,
            "large",
            (4 + 16 * (k % 4), 4 + 20 * (k // 4), 16 + 16 * (k % 4), 20 + 20 * (k // 4)),
        )
        for k, (s, c) in enumerate(zip(SHAPES, COLOURS, strict=False))
    )
    scene = Scene(64, objs)
    image = render(scene)
    from tests.data.scene_oracle import Obj

    check_pixels(image, [Obj(o.shape, o.colour, o.size, o.box) for o in objs], COLOURS)


def test_scene_dict_round_trip_and_hflip():
    scene = generate_scene(3, 7, CFG)
    assert Scene.from_dict(scene.to_dict()) == scene
    assert scene.hflip().hflip() == scene


def test_text_pass_matches_full_sample():
    ds = ShapesDataset(CFG, "val", 10)
    full = [t for i in range(10) for t in ds.get(i).texts()]
    assert list(ds.texts()) == full


def test_crowded_config_shrinks_or_fails_clearly():
    cfg = ShapesConfig(image_size=16, max_objects=9, shapes=SHAPES, colours=tuple(COLOURS))
    for i in range(20):
        s = make_sample(cfg, "train", i)
        check_sample(s, cfg)
    crowded = dataclasses.replace(cfg, min_objects=8)
    with pytest.raises(ValueError, match="cannot place"):
        for i in range(20):
            make_sample(crowded, "train", i)


def test_position_captions_name_the_grid_cell_of_each_object():
    from vlmoe.data.grammar import POSITIONS, position_cell, position_phrase
    from vlmoe.data.shapes import BACKGROUND_LEVEL

    assert [position_cell(x, y, 30) for y, x in [(0, 0), (5, 15), (29, 29), (10, 19.9)]] == [
        0,
        1,
        8,
        4,
    ]
    phrases = [position_phrase(c) for c in (0, 3, 4, 7)]
    assert phrases == ["at the top left", "on the left", "in the centre", "at the bottom"]
    cfg = ShapesConfig(image_size=32, max_objects=1, num_captions=1, caption_positions=True)
    cells = set()
    for i in range(40):
        sample = ShapesDataset(cfg, "train", 40).get(i)
        (obj,) = sample.meta["scene"].objects
        cell = position_cell(*obj.centre, 32)
        cells.add(cell)
        assert sample.captions == [f"a large {obj.colour} {obj.shape} {position_phrase(cell)}"]
        # The pixels agree: the drawn object's centre lies in the named cell.
        ys, xs = np.nonzero(np.abs(sample.image.astype(int) - BACKGROUND_LEVEL).sum(-1) > 60)
        mid = ((xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2)
        assert abs(mid[0] - obj.centre[0]) <= 1.5 and abs(mid[1] - obj.centre[1]) <= 1.5
    assert len(cells) >= 6 and POSITIONS[4] == "centre"
    plain = dataclasses.replace(cfg, caption_positions=False)
    assert ShapesDataset(plain, "train", 40).get(39).captions == [
        f"a large {obj.colour} {obj.shape}"
    ]
