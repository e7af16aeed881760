"""Reading scene captions back: listings into objects, and the kind of every caption."""

import numpy as np
import pytest

from vlmoe.data.grammar import CAPTION_KINDS, caption_kind, make_captions, parse_listing
from vlmoe.data.shapes import ShapesConfig, generate_scene


@pytest.mark.parametrize("seed", [0, 1])
def test_listing_reads_back_into_the_scene_objects_left_to_right(seed):
    cfg = ShapesConfig(image_size=32, max_objects=5, large_objects="any")
    kinds = set()
    for i in range(150):
        scene = generate_scene(seed, i, cfg)
        captions = make_captions(scene, np.random.default_rng(i), 8)
        truth = [
            (o.size, o.colour, o.shape) for o in sorted(scene.objects, key=lambda o: o.centre[0])
        ]
        assert parse_listing(captions[0]) == truth
        assert caption_kind(captions[0]) == "listing"
        for c in captions[1:]:
            kind = caption_kind(c)
            kinds.add(kind)
            assert (kind == "relation") == (" of " in c or " above " in c or " below " in c)
            assert kind != "listing"
    assert kinds == set(CAPTION_KINDS) - {"listing"}


@pytest.mark.parametrize(
    "text",
    [
        "a red circle",  # no size: a colours caption
        "two objects: a small red circle",  # says two, lists one
        "three objects: a small red circle and a large blue square",
        "two objects: a small red circle, a large blue square",  # no "and"
        "a small red circle and a large blue square",  # several objects without the count
        "an small red circle",
        "",
    ],
)
def test_malformed_listings_are_refused(text):
    assert parse_listing(text) is None


def test_kinds_of_hand_written_captions():
    assert caption_kind("two objects: a small red circle and an large orange star") != "listing"
    assert caption_kind("a large orange star") == "listing"
    assert caption_kind("a small red circle above a large blue square") == "relation"
    assert caption_kind("a red circle and a blue square") == "colours"
    assert caption_kind("two circles and a square") == "counts"
    assert caption_kind("a circle") == "counts"
