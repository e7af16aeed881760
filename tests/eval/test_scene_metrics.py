"""Per-kind evaluation on the scene world: caption attributes and retrieval per caption kind."""

import pytest
import torch

from vlmoe.eval.captioning import attribute_scores
from vlmoe.eval.retrieval import retrieval_metrics, retrieval_metrics_by_kind

TRUTH = "two objects: a small red circle and a large blue square"


def test_attribute_scores_hand_worked():
    hyps = [
        TRUTH,  # all right
        "two objects: a small red circle and a large green square",  # one colour wrong
        "two objects: a large blue square and a small red circle",  # right set, wrong order
        "a small red circle",  # one object: count wrong, second object missing
        "a red circle and a blue square",  # not a listing: zero everywhere
        "anything",  # no reference listing: not scored
    ]
    refs = [[TRUTH, "a circle and a square"]] * 5 + [["a circle"]]
    s = attribute_scores(hyps, refs)
    assert s["attr/num_scored"] == 5
    assert s["attr/count"] == pytest.approx(3 / 5)
    assert s["attr/exact"] == pytest.approx(1 / 5)
    assert s["attr/objects"] == pytest.approx(2 / 5)
    # 10 scene objects: sizes right in rows 0, 1 (2 each) and row 3's first object
    assert s["attr/size"] == pytest.approx(5 / 10)
    assert s["attr/colour"] == pytest.approx(4 / 10)
    assert s["attr/shape"] == pytest.approx(5 / 10)
    assert attribute_scores(["x"], [["not a scene caption"]]) is None


def test_retrieval_by_kind_hand_worked():
    # 2 images; texts 0, 1 describe image 0, texts 2, 3 image 1; kinds a, b, a, b
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.1], [0.2, 1.0], [0.1, 1.0], [0.3, 1.0]])
    text_image = torch.tensor([0, 0, 1, 1])
    out = retrieval_metrics_by_kind(image, text, text_image, ["a", "b", "a", "b"], ks=(1,))
    assert out["t2i_r@1/a"] == 1.0  # both kind-a texts point at their images
    assert out["t2i_r@1/b"] == 0.5  # text 1 (of image 0) is closer to image 1
    assert out["i2t_r@1/a"] == 1.0
    # cosines with kind-b texts 1, 3: image 0 (0.196, 0.287), image 1 (0.981, 0.958): image 0
    # prefers text 3 (image 1's), image 1 prefers text 1 (image 0's): both miss
    assert out["i2t_r@1/b"] == 0.0
    # one kind holding every text gives the overall numbers
    same = retrieval_metrics_by_kind(image, text, text_image, ["x"] * 4, ks=(1,))
    overall = retrieval_metrics(image, text, text_image, ks=(1,))
    assert same["i2t_r@1/x"] == overall["i2t_r@1"] and same["t2i_r@1/x"] == overall["t2i_r@1"]
    with pytest.raises(ValueError, match="3 text kinds for 4 texts"):
        retrieval_metrics_by_kind(image, text, text_image, ["a"] * 3)
