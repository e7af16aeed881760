"""`POST /v1/images/generations` in process (TestClient): OpenAI's response shape, the PNGs
equal to the task's own `predict`, seeds, samplers, the routing, every bad request, and a
sampling that stops when its request times out."""

from __future__ import annotations

import base64
import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from tests.serve.conftest import assert_error, chat_body, check_routing, client_for, png_url
from vlmoe.serve import EngineConfig

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

FAST = {"steps": 3, "seed": 0}  # a few sampling steps keep the tests fast


@pytest.fixture(scope="module")
def gen(dit_dir):
    with client_for(dit_dir, model_name="gen") as c:
        yield c


def decode(item: dict) -> np.ndarray:
    """(H, W, 3) uint8 of one `data` item's PNG."""
    png = base64.b64decode(item["b64_json"], validate=True)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        return np.asarray(im)


def generate(client, **body):
    r = client.post("/v1/images/generations", json={"model": "gen", **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_the_openai_shape_and_the_model_card(gen):
    card = gen.get("/v1/models").json()["data"][0]
    assert card["task"] == "image-generation" and card["endpoints"] == ["images"]
    assert card["image_size"] == 8
    out = generate(gen, prompt="circle", n=2, size="8x8", response_format="b64_json", **FAST)
    assert set(out) == {"created", "data"} and abs(out["created"] - time.time()) < 60
    assert [set(item) for item in out["data"]] == [{"b64_json", "revised_prompt"}] * 2
    assert all(item["revised_prompt"] is None for item in out["data"])
    first, second = (decode(item) for item in out["data"])
    assert first.shape == second.shape == (8, 8, 3)
    assert not np.array_equal(first, second)  # two draws of the noise
    schema = gen.get("/openapi.json").json()["paths"]["/v1/images/generations"]["post"]
    assert "requestBody" in schema


def test_images_equal_the_task_predict(gen, dit_dir):
    """The endpoint is the task's own `predict` (the library's sampler), PNG-encoded."""
    from vlmoe.recipes.run import load_trained

    model, task = load_trained(dit_dir)
    options = {"steps": 4, "cfg": 2.0, "sampler": "heun", "seed": 5, "num": 2}
    expected = task.predict(model, None, "square", **options).extra["images"]
    out = generate(gen, prompt="square", n=2, steps=4, cfg_scale=2.0, sampler="heun", seed=5)
    for item, rgb in zip(out["data"], expected, strict=True):
        assert np.array_equal(decode(item), rgb)


def test_seeds_samplers_and_class_indices(gen):
    one = generate(gen, prompt="triangle", **FAST)["data"][0]["b64_json"]
    assert generate(gen, prompt="triangle", **FAST)["data"][0]["b64_json"] == one  # same bytes
    assert generate(gen, prompt="2", **FAST)["data"][0]["b64_json"] == one  # index of triangle
    other = generate(gen, prompt="triangle", steps=3, seed=1)["data"][0]["b64_json"]
    assert other != one
    heun = generate(gen, prompt="triangle", sampler="heun", **FAST)["data"][0]["b64_json"]
    assert heun != one
    assert generate(gen, prompt="circle", **FAST)["data"][0]["b64_json"] != one
    # No seed: a fresh one each time.
    a, b = (generate(gen, prompt="triangle", steps=2)["data"][0]["b64_json"] for _ in range(2))
    assert a != b


def test_routing_of_the_first_image(gen):
    out = generate(gen, prompt="star", routing=True, **FAST)
    assert set(out) == {"created", "data", "routing"}
    check_routing(out["routing"], tokens_expected=False)
    assert len(out["routing"]) == 2  # dit-debug-moe: two MoE blocks
    assert all(layer["patch_grid"] == [4, 4] for layer in out["routing"])  # 8x8, patch 2


def test_a_caption_model(t2i_dir):
    with client_for(t2i_dir, model_name="t2i") as c:
        card = c.get("/v1/models").json()["data"][0]
        assert card["task"] == "text-to-image" and card["endpoints"] == ["images"]
        body = {"prompt": "a red circle", "size": "16x16", "routing": True, **FAST}
        out = c.post("/v1/images/generations", json=body)
        assert out.status_code == 200, out.text
        assert decode(out.json()["data"][0]).shape == (16, 16, 3)
        check_routing(out.json()["routing"], tokens_expected=False)  # a dense caption encoder
        long = c.post("/v1/images/generations", json={"prompt": "a red circle " * 20, **FAST})
        assert_error(long, 400, "prompt", "context")


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"prompt": "circle", "response_format": "url"}, 400, ["b64_json", "no files"]),
        ({"prompt": "circle", "size": "1024x1024"}, 400, ["8x8", "1024x1024"]),
        ({"prompt": "circle", "n": 9}, 400, ["n:", "limit of 8"]),
        ({"prompt": "circle", "n": 0}, 400, ["n:"]),
        ({"prompt": "hexagon"}, 400, ["prompt", "circle", "hexagon"]),
        ({"prompt": "4"}, 400, ["prompt", "index in [0, 4)"]),
        ({"prompt": ""}, 400, ["prompt"]),
        ({"n": 1}, 400, ["prompt", "required"]),
        ({"prompt": "circle", "sampler": "dpm"}, 400, ["sampler", "euler"]),
        ({"prompt": "circle", "steps": 0}, 400, ["steps"]),
        ({"prompt": "circle", "steps": 10_000}, 400, ["steps"]),
        ({"prompt": "circle", "cfg_scale": -1}, 400, ["cfg_scale"]),
        ({"prompt": "circle", "seed": -1}, 400, ["seed"]),
        ({"prompt": "circle", "quality": "hd"}, 400, ["quality", "not supported"]),
        ({"prompt": "circle", "style": "vivid"}, 400, ["style", "not supported"]),
        ({"prompt": "circle", "model": "dall-e-3"}, 404, ["dall-e-3", "gen"]),
        ({"prompt": ["circle"]}, 400, ["prompt"]),
    ],
)
def test_bad_requests(gen, body, status, words):
    r = gen.post("/v1/images/generations", json={"model": "gen", **FAST, **body})
    assert_error(r, status, *words)


def test_openai_defaults_are_accepted(gen):
    body = {"prompt": "circle", "size": "auto", "quality": "standard", "user": "u1", **FAST}
    assert decode(generate(gen, **body)["data"][0]).shape == (8, 8, 3)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", chat_body("gen")),
        ("/v1/vqa", {"image": png_url(), "question": "what?"}),
        ("/v1/classify", {"image": png_url()}),
        ("/v1/detect", {"image": png_url()}),
        ("/v1/predict", {"image": png_url()}),
    ],
)
def test_other_endpoints_point_to_images(gen, path, body):
    assert_error(gen.post(path, json=body), 400, "generates images", "/v1/images/generations")


def test_other_models_do_not_generate_images(decoder_dir):
    with client_for(decoder_dir, model_name="cap") as c:
        r = c.post("/v1/images/generations", json={"prompt": "a red circle"})
        assert_error(r, 400, "does not serve /images", "chat")


def test_a_timed_out_sampling_stops_between_steps(dit_dir):
    with client_for(dit_dir, model_name="gen", engine_config=EngineConfig(timeout_s=0.3)) as c:
        engine = c.app_state.serve.engine
        start = time.monotonic()
        r = c.post("/v1/images/generations", json={"prompt": "circle", "steps": 1000, "n": 8})
        assert_error(r, 504, "timeout")
        deadline = time.monotonic() + 10
        while engine.jobs_stopped < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.jobs_stopped == 1
        # The worker is free again well before 1000 steps could have run.
        assert generate(c, prompt="circle", **FAST)["data"]
        assert time.monotonic() - start < 10


def test_a_full_queue_refuses_images_with_429(dit_dir):
    from tests.serve.test_engine import _blocker

    with client_for(dit_dir, model_name="gen", engine_config=EngineConfig(max_queue=1)) as c:
        engine = c.app_state.serve.engine
        release, started = threading.Event(), threading.Event()
        c.portal.call(_blocker(engine, release, started))
        assert started.wait(10)
        c.portal.call(_blocker(engine, release, threading.Event()))  # fills the queue
        try:
            r = c.post("/v1/images/generations", json={"prompt": "circle", **FAST})
            assert_error(r, 429, "busy")
            assert int(r.headers["retry-after"]) >= 1
        finally:
            release.set()
        assert generate(c, prompt="circle", **FAST)["data"]
