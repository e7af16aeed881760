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


def _train(tmp_path_factory, preset: str):
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
