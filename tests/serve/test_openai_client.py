"""The official `openai` client against a real uvicorn on 127.0.0.1 and a free port; a client
that goes away stops its generation."""

from __future__ import annotations

import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from tests.serve.conftest import png_url, uvicorn_server

openai = pytest.importorskip("openai")


def _messages(seed=0, text="a"):
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": text},
                {"type": "image_url", "image_url": {"url": png_url(seed)}},
            ],
        }
    ]


@pytest.fixture(scope="module")
def client(decoder_server):
    return openai.OpenAI(base_url=decoder_server + "/v1", api_key="unused", max_retries=0)


def test_models_and_chat(client):
    assert [m.id for m in client.models.list()] == ["cap"]
    out = client.chat.completions.create(
        model="cap", messages=_messages(), max_tokens=5, temperature=0
    )
    assert out.object == "chat.completion" and out.model == "cap"
    choice = out.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert out.usage.completion_tokens >= 1


def test_streaming_chunk_sequence(client):
    whole = client.chat.completions.create(
        model="cap", messages=_messages(1), max_tokens=6, temperature=0
    )
    chunks = list(
        client.chat.completions.create(
            model="cap",
            messages=_messages(1),
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    first, *deltas, final, usage = chunks
    assert all(c.object == "chat.completion.chunk" and c.id == first.id for c in chunks)
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert all(c.choices[0].finish_reason is None and c.choices[0].delta.content for c in deltas)
    assert final.choices[0].finish_reason == whole.choices[0].finish_reason
    assert not final.choices[0].delta.content
    assert usage.choices == [] and usage.usage.total_tokens == whole.usage.total_tokens
    text = "".join(c.choices[0].delta.content for c in deltas)
    assert text == whole.choices[0].message.content


def test_eight_at_once_equal_one_after_another(client):
    def ask(i):
        out = client.chat.completions.create(
            model="cap", messages=_messages(i, "a" * (1 + i % 3)), max_tokens=6, temperature=0
        )
        return out.choices[0].message.content, out.choices[0].finish_reason

    one_by_one = [ask(i) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        at_once = list(pool.map(ask, range(8)))
    assert at_once == one_by_one


def test_errors_come_back_as_openai_errors(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=_messages(), max_tokens=2)
    assert "nope" in e.value.message
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="cap", messages=[], max_tokens=2)


@pytest.fixture()
def slow_server(decoder_dir):
    """A server whose model takes 100 ms per generated token."""
    from vlmoe.serve import EngineConfig, build_app

    app = build_app(decoder_dir, model_name="cap", engine_config=EngineConfig(max_tokens=64))
    model = app.state.serve.engine.adapter.model
    real = model.next_token_logits

    def slow(*args):
        time.sleep(0.1)
        return real(*args)

    model.next_token_logits = slow
    with uvicorn_server(app) as url:
        yield url, app.state.serve.engine


def _wait_until(predicate, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_disconnect_cancels_generation(slow_server):
    url, engine = slow_server
    body = {"model": "cap", "messages": _messages(), "max_tokens": 12, "temperature": 0}
    # Streaming: read the role chunk, then hang up.
    stream = {**body, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=stream, timeout=10) as r:
        assert r.status_code == 200
        next(r.iter_lines())
    _wait_until(lambda: engine.jobs_stopped == 1)
    # Not streaming: the client gives up after 0.2 s, well before 12 tokens at 100 ms each.
    with pytest.raises(httpx.TimeoutException):
        httpx.post(url + "/v1/chat/completions", json=body, timeout=0.2)
    _wait_until(lambda: engine.jobs_stopped == 2)
    # The server is still fine.
    r = httpx.post(url + "/v1/chat/completions", json={**body, "max_tokens": 2}, timeout=10)
    assert r.status_code == 200


# ----------------------------------------------------------------------------- images


@pytest.fixture(scope="module")
def gen_client(dit_dir):
    from vlmoe.serve import build_app

    with uvicorn_server(build_app(dit_dir, model_name="gen")) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0), url


def _pngs(response) -> list[bytes]:
    return [base64.b64decode(item.b64_json) for item in response.data]


def test_images_generate(gen_client):
    client, _ = gen_client

    def generate(seed: int, prompt: str = "circle"):
        return client.images.generate(
            model="gen",
            prompt=prompt,
            n=2,
            response_format="b64_json",
            extra_body={"seed": seed, "steps": 3},
        )

    out = generate(0)
    assert len(out.data) == 2 and all(item.revised_prompt is None for item in out.data)
    first = _pngs(out)
    for png in first:
        with Image.open(io.BytesIO(png)) as im:
            assert im.format == "PNG" and im.size == (8, 8) and im.mode == "RGB"
    assert first[0] != first[1]  # two images of one request
    assert _pngs(generate(0)) == first  # one seed repeats, byte for byte
    assert _pngs(generate(1)) != first  # another seed differs
    assert _pngs(generate(0, "square")) != first  # another class differs


def test_images_errors_come_back_as_openai_errors(gen_client):
    client, _ = gen_client
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(model="gen", prompt="circle", response_format="url")
    assert "b64_json" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(model="gen", prompt="circle", size="1024x1024")
    assert "8x8" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gen", messages=_messages(), max_tokens=2)
    assert "/v1/images/generations" in e.value.message


def test_a_client_that_leaves_stops_the_sampling(gen_client):
    _, url = gen_client
    body = {"model": "gen", "prompt": "circle", "n": 8, "steps": 1000, "seed": 0}  # ~10 s
    with pytest.raises(httpx.TimeoutException):
        httpx.post(url + "/v1/images/generations", json=body, timeout=0.3)
    # Stopped between two sampling steps, within a poll or two of the client leaving.
    _wait_until(lambda: httpx.get(url + "/health").json()["jobs_stopped"] == 1, seconds=5)
    r = httpx.post(url + "/v1/images/generations", json={**body, "steps": 2}, timeout=30)
    assert r.status_code == 200 and len(r.json()["data"]) == 8
