"""Location tokens: quantization, text round trips, saved with the tokenizer, grounding pairs."""

import numpy as np
import pytest

from vlmoe.data.locations import (
    add_location_tokens,
    box_to_text,
    grounding_pairs,
    location_bins,
    text_to_boxes,
)
from vlmoe.data.sample import Box, RefExp, Sample
from vlmoe.data.shapes_data import ShapesDataset
from vlmoe.data.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok():
    t = Tokenizer.train(ShapesDataset(None, "train", 30).texts(), vocab_size=200)
    add_location_tokens(t, 64)
    return t


def test_box_text_hand_worked():
    # 64 bins on a 64-pixel image: pixel box [7, 29, 27, 49) -> rows 29..48, columns 7..26.
    box = (7 / 64, 29 / 64, 27 / 64, 49 / 64)
    assert box_to_text(box, 64, "red triangle") == "<loc29><loc07><loc48><loc26> red triangle"
    assert text_to_boxes("<loc29><loc07><loc48><loc26> red triangle", 64) == [(box, "red triangle")]
    assert box_to_text((0.0, 0.0, 1.0, 1.0), 10) == "<loc0><loc0><loc9><loc9>"


def test_round_trip_moves_edges_by_at_most_one_bin():
    rng = np.random.default_rng(0)
    for _ in range(100):
        x0, y0 = rng.random(2) * 0.8
        box = (x0, y0, x0 + 0.1 + rng.random() * 0.1, y0 + 0.1 + rng.random() * 0.1)
        ((back, _),) = text_to_boxes(box_to_text(box, 32), 32)
        assert max(abs(a - b) for a, b in zip(back, box)) <= 1 / 32


def test_parse_several_and_malformed():
    text = (
        "<loc1><loc2><loc3><loc4> red circle ; <loc5><loc6><loc7> blue ; <loc0><loc0><loc1><loc1>"
    )
    boxes = text_to_boxes(text, 10)
    assert [label for _, label in boxes] == ["red circle", ""]


def test_tokens_survive_encode_decode_and_save(tok, tmp_path):
    assert location_bins(tok) == 64
    text = "<loc29><loc07><loc48><loc26> red triangle"
    ids = tok.encode(text, add_special=False)
    assert len(ids) >= 5 and tok.token_to_id("<loc29>") == ids[0]
    assert text_to_boxes(tok.decode(ids), 64) == text_to_boxes(text, 64)
    tok.save(tmp_path / "tok")
    back = Tokenizer.load(tmp_path / "tok")
    assert location_bins(back) == 64 and back.encode(text) == tok.encode(text)
    with pytest.raises(ValueError, match="already has 64 location bins"):
        add_location_tokens(back, 32)
    assert add_location_tokens(back, 64) == add_location_tokens(tok, 64)  # idempotent


def test_grounding_pairs_and_transform():
    s = Sample(
        np.zeros((64, 32, 3), np.uint8),
        boxes=[Box(0, 0, 16, 32, "red circle"), Box(16, 32, 32, 64, "blue star")],
        refs=[RefExp("the blue object", 1)],
    )
    pairs = grounding_pairs(s, 8)
    assert pairs == [
        ("detect red circle", "<loc0><loc0><loc3><loc3> red circle"),
        ("detect blue star", "<loc4><loc4><loc7><loc7> blue star"),
        ("locate the blue object", "<loc4><loc4><loc7><loc7>"),
    ]
