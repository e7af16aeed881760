"""`POST /v1/detect` in process (TestClient): boxes in pixels of the input image as the
detection task's `predict` finds them, normalized boxes, the score threshold and the cap, the
routing of the backbone, and every bad request."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from tests.serve.conftest import assert_error, check_routing, client_for, png_url

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def det(det_dir):
    with client_for(det_dir, model_name="det") as c:
        yield c


def scene(width: int, height: int, seed: int = 0) -> tuple[str, np.ndarray]:
    """A (data URL, RGB array) of a random width x height image."""
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(), rgb


def detect(client, **body) -> dict:
    r = client.post("/v1/detect", json={"model": "det", **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_boxes_are_the_task_predict_in_input_pixels(det, det_dir):
    from vlmoe.recipes.run import load_trained

    model, task = load_trained(det_dir)
    card = det.get("/v1/models").json()["data"][0]
    assert card["task"] == "detection" and card["endpoints"] == ["detect", "predict"]
    url, rgb = scene(48, 30)  # not the model's 16x16, and not square
    out = detect(det, image=url, score_threshold=0.0)
    assert set(out) == {"model", "width", "height", "boxes", "routing"}
    assert (out["width"], out["height"]) == (48, 30) and out["routing"] is None
    expected = task.predict(model, rgb, threshold=0.0).extra["boxes"]
    assert expected, "the fixture's detector should find boxes at threshold 0"
    assert len(out["boxes"]) == min(len(expected), 100)
    for got, want in zip(out["boxes"], expected):
        assert set(got) == {"label", "score", "box", "box_normalized"}
        assert got["label"] == want["label"] and got["label"] in task.info.label_names
        assert got["score"] == pytest.approx(want["score"])
        assert got["box"] == pytest.approx(want["box"])
        x0, y0, x1, y1 = got["box"]
        assert 0 <= x0 <= x1 <= 48 and 0 <= y0 <= y1 <= 30
        assert got["box_normalized"] == pytest.approx([x0 / 48, y0 / 30, x1 / 48, y1 / 30])
    scores = [b["score"] for b in out["boxes"]]
    assert scores == sorted(scores, reverse=True)


def test_threshold_cap_and_routing(det):
    url, _ = scene(16, 16, 1)
    every = detect(det, image=url, score_threshold=0.0)["boxes"]
    assert len(every) >= 3
    top2 = detect(det, image=url, score_threshold=0.0, max_detections=2)["boxes"]
    assert top2 == every[:2]
    cut = (every[0]["score"] + every[-1]["score"]) / 2
    some = detect(det, image=url, score_threshold=cut)["boxes"]
    assert some == [b for b in every if b["score"] >= cut] and 0 < len(some) < len(every)
    assert detect(det, image=url, score_threshold=1.0)["boxes"] == []
    out = detect(det, image=url, score_threshold=0.0, max_detections=1, routing=True)
    check_routing(out["routing"], tokens_expected=False)
    assert all(layer["patch_grid"] == [4, 4] for layer in out["routing"])  # 16x16, patch 4


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"score_threshold": 1.5}, 400, ["score_threshold"]),
        ({"score_threshold": "high"}, 400, ["score_threshold"]),
        ({"max_detections": 0}, 400, ["max_detections"]),
        ({"max_detections": 5000}, 400, ["max_detections"]),
        ({"image": None}, 400, ["image"]),
        ({"image": "data:image/png;base64,AAAA"}, 400, ["image", "decodable"]),
        ({"image": "http://example.com/a.png"}, 400, ["remote"]),
        ({"model": "yolo"}, 404, ["yolo", "det"]),
    ],
)
def test_bad_requests(det, body, status, words):
    r = det.post("/v1/detect", json={"model": "det", "image": png_url(), **body})
    assert_error(r, status, *words)


def test_models_that_do_not_detect(fusion_dir):
    with client_for(fusion_dir, model_name="vqa") as c:
        r = c.post("/v1/detect", json={"image": png_url()})
        assert_error(r, 400, "does not serve /detect", "vqa")


def test_a_grounding_model_reads_the_text(ground_dir):
    from vlmoe.recipes.run import load_trained

    model, task = load_trained(ground_dir)
    with client_for(ground_dir, model_name="ground") as c:
        assert c.get("/v1/models").json()["data"][0]["endpoints"] == ["chat", "detect", "predict"]
        url, rgb = scene(24, 24, 2)
        out = c.post("/v1/detect", json={"image": url, "text": "red circle", "routing": True})
        assert out.status_code == 200, out.text
        expected = task.predict(model, rgb, "red circle").extra["boxes"]
        assert [b["box"] for b in out.json()["boxes"]] == pytest.approx(
            [b["box"] for b in expected if b["score"] >= 0.3]
        )
        check_routing(out.json()["routing"])
        assert_error(c.post("/v1/detect", json={"image": url}), 400, "grounding needs a text")
        long = c.post("/v1/detect", json={"image": url, "text": "red " * 200})
        assert_error(long, 400, "text", "context")
