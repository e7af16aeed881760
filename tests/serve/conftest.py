"""Fixtures of the serve tests: tiny models trained for 3 steps, PNG data URLs, app clients,
and a real uvicorn server on a free loopback port."""

from __future__ import annotations

import base64
import contextlib
import io
import socket

import numpy as np
import pytest
from PIL import Image


def _train(tmp_path_factory, preset: str, *overrides: str):
    from vlmoe.recipes.run import train
    from vlmoe.train import RunConfig, apply_overrides

    out = tmp_path_factory.mktemp("serve-runs") / preset
    cfg = apply_overrides(
        RunConfig(),
        [
            f"model.preset={preset}",
            "train.steps=3",
            "train.batch_size=4",
            "data.num_train=24",
            "data.num_eval=4",
            "eval.max_new_tokens=4",
            *overrides,
        ],
    )
    train(cfg, out)
    return out


@pytest.fixture(scope="session")
def decoder_dir(tmp_path_factory):
    return _train(tmp_path_factory, "decoder-debug-moe")


@pytest.fixture(scope="session")
def fusion_dir(tmp_path_factory):
    return _train(tmp_path_factory, "fusion-debug-moe")


@pytest.fixture(scope="session")
def contrastive_dir(tmp_path_factory):
    return _train(tmp_path_factory, "contrastive-debug-moe")


def png_bytes(seed: int = 0, size: int = 32, fmt: str = "PNG") -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt)
    return buf.getvalue()


def png_url(seed: int = 0, size: int = 32) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(seed, size)).decode()


def png_array(seed: int = 0, size: int = 32) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png_bytes(seed, size))).convert("RGB"))


def chat_body(model: str, text: str | None = "a", seed: int = 0, **extra) -> dict:
    content: list[dict] = [{"type": "image_url", "image_url": {"url": png_url(seed)}}]
    if text is not None:
        content.insert(0, {"type": "text", "text": text})
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def assert_error(r, status: int, *words: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and "\n" not in err["message"]
    assert "Traceback" not in r.text
    for w in words:
        assert w.lower() in err["message"].lower(), err["message"]
    return err


def check_routing(routing, tokens_expected=True):
    assert routing, "no routing"
    for layer in routing:
        E, K = layer["num_experts"], layer["top_k"]
        if layer["patches"] is not None:
            gh, gw = layer["patch_grid"]
            assert len(layer["patches"]["experts"]) == gh * gw
            for experts, weights in zip(layer["patches"]["experts"], layer["patches"]["weights"]):
                assert 1 <= len(experts) <= K and len(weights) == len(experts)
                assert all(0 <= e < E for e in experts)
                assert weights == sorted(weights, reverse=True)
        for t in layer["tokens"] or []:
            assert set(t) == {"token", "experts", "weights"} and len(t["experts"]) <= K
    assert any(layer["patches"] for layer in routing)
    if tokens_expected:
        assert any(layer["tokens"] for layer in routing)


@contextlib.contextmanager
def client_for(path, **options):
    """A TestClient of the app serving `path` (engine running)."""
    from fastapi.testclient import TestClient

    from vlmoe.serve import build_app

    app = build_app(path, **options)
    with TestClient(app) as client:
        client.app_state = app.state
        yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uvicorn_server(app):
    """A real uvicorn on 127.0.0.1 and a free port, in a thread; yields the base URL."""
    from vlmoe.serve.server import serve_in_background

    return serve_in_background(app)


@pytest.fixture(scope="session")
def decoder_server(decoder_dir):
    from vlmoe.serve import build_app

    with uvicorn_server(build_app(decoder_dir, model_name="cap")) as url:
        yield url


@pytest.fixture(scope="session")
def vit_dir(tmp_path_factory):
    return _train(tmp_path_factory, "vit-debug-moe")


@pytest.fixture(scope="session")
def dit_dir(tmp_path_factory):
    """A class-conditioned DiT (8x8 images of the scene world's 4 shapes). A high learning
    rate without warm-up moves its zero-initialised output layers within 6 steps, so that its
    samples depend on the class and the sampler."""
    over = ("train.steps=6", "optim.lr=0.01", "schedule.warmup_steps=0")
    return _train(tmp_path_factory, "dit-debug-moe", *over)


@pytest.fixture(scope="session")
def t2i_dir(tmp_path_factory):
    """A caption-conditioned MoE DiT (16x16 images, cross-attention to the caption)."""
    over = ("task=text-to-image", "model.text.max_seq_len=24")
    return _train(tmp_path_factory, "dit-debug-text-xattn-moe", *over)


@pytest.fixture(scope="session")
def det_dir(tmp_path_factory):
    """A per-patch detector on an MoE ViT (16x16 scenes); with no score floor of its own, so
    that 3 training steps still give boxes to draw."""
    return _train(tmp_path_factory, "det-debug-moe", "task=detection", "model.score_threshold=0")


@pytest.fixture(scope="session")
def ground_dir(tmp_path_factory):
    """A grounding decoder (boxes as location tokens, read from a text)."""
    return _train(tmp_path_factory, "decoder-debug-moe", "task=grounding")
