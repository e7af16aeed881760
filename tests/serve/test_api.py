"""The HTTP API in process (FastAPI's TestClient): every endpoint, and every bad request."""

from __future__ import annotations

import base64
import json
import logging
import re

import pytest

from tests.serve.conftest import (
    assert_error,
    chat_body,
    check_routing,
    client_for,
    png_array,
    png_bytes,
    png_url,
)

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def dec(decoder_dir):
    with client_for(decoder_dir, model_name="cap") as c:
        yield c


@pytest.fixture(scope="module")
def fus(fusion_dir):
    with client_for(fusion_dir, model_name="vqa") as c:
        yield c


@pytest.fixture(scope="module")
def con(contrastive_dir):
    with client_for(contrastive_dir, model_name="clip") as c:
        yield c


def sse_events(text: str) -> list:
    """The `data:` payloads of an event stream, JSON-decoded ([DONE] kept as a string)."""
    assert text.endswith("\n\n")
    out = []
    for block in text.strip("\n").split("\n\n"):
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


# ----------------------------------------------------------------------------- endpoints


def test_health_models_and_schemas(dec):
    assert dec.get("/health").json()["status"] == "ok"
    models = dec.get("/v1/models").json()
    assert models["object"] == "list"
    (card,) = models["data"]
    assert card["id"] == "cap" and card["object"] == "model"
    assert card["architecture"] == "decoder" and card["endpoints"] == ["chat", "predict"]
    paths = dec.get("/openapi.json").json()["paths"]
    for path in ("/v1/chat/completions", "/v1/classify", "/v1/vqa", "/v1/match", "/v1/predict"):
        assert "requestBody" in paths[path]["post"], path


def test_page_is_self_contained(dec):
    r = dec.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "Content-Security-Policy" in html and "connect-src 'self'" in html
    # No external asset: no src/href/url() pointing anywhere but this server or data:.
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url\(([^)]+)\)""", html)
    for ref in (a or b for a, b in refs):
        assert not re.match(r"^\s*(https?:)?//", ref), ref
    assert "http://" not in html and "https://" not in html


def test_chat_equals_library_generate(dec, decoder_dir):
    from vlmoe.recipes.run import load_trained

    model, task = load_trained(decoder_dir)
    for seed, prompt in [(0, "a"), (1, None), (2, "the red")]:
        r = dec.post(
            "/v1/chat/completions", json=chat_body("cap", prompt, seed, temperature=0, max_tokens=6)
        )
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
        (choice,) = out["choices"]
        ids = task.generate(model, png_array(seed), prompt, max_new_tokens=6)
        prompt_len = 1 + len(task.tokenizer.encode(prompt, add_special=False) if prompt else [])
        expected = task.tokenizer.decode(ids[prompt_len:]).strip()  # the completion only
        assert choice["message"]["content"].strip() == expected
        assert choice["finish_reason"] in ("stop", "length")
        usage = out["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert 1 <= usage["completion_tokens"] <= 6
        assert out["routing"] is None


def test_chat_stream_chunk_sequence(dec):
    body = chat_body("cap", "a", 3, temperature=0, max_tokens=5)
    whole = dec.post("/v1/chat/completions", json=body).json()
    r = dec.post(
        "/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    *deltas, final, usage = chunks[1:]
    assert all(c["choices"][0]["finish_reason"] is None for c in [chunks[0], *deltas])
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in deltas)
    assert final["choices"][0]["delta"] == {}
    assert final["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])
    text = "".join(c["choices"][0]["delta"]["content"] for c in deltas)
    assert text == whole["choices"][0]["message"]["content"]
    # Without include_usage: no usage chunk and no usage field.
    plain = sse_events(dec.post("/v1/chat/completions", json={**body, "stream": True}).text)
    assert plain[-2]["choices"][0]["finish_reason"] and "usage" not in plain[-2]
    assert len(plain) == len(events) - 1


def test_stop_strings(dec):
    body = chat_body("cap", "a", 4, temperature=0, max_tokens=8)
    full = dec.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    assert len(full) >= 3, full
    stop = full[1:3]
    cut = full[: full.index(stop)]
    r = dec.post("/v1/chat/completions", json={**body, "stop": [stop, "zzzz"]}).json()
    assert r["choices"][0]["message"]["content"] == cut
    assert r["choices"][0]["finish_reason"] == "stop"
    events = sse_events(
        dec.post("/v1/chat/completions", json={**body, "stop": stop, "stream": True}).text
    )
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert streamed == cut and events[-2]["choices"][0]["finish_reason"] == "stop"


def test_routing_in_chat_and_stream(dec):
    body = chat_body("cap", "a", 5, temperature=0, max_tokens=4, routing=True)
    out = dec.post("/v1/chat/completions", json=body).json()
    check_routing(out["routing"])
    events = sse_events(dec.post("/v1/chat/completions", json={**body, "stream": True}).text)
    assert events[-2]["routing"] == out["routing"]
    # The decoder's text tokens: <bos>, the prompt, then what it generated.
    lm = [layer for layer in out["routing"] if layer["tokens"]][0]
    assert len(lm["tokens"]) == 2 + out["usage"]["completion_tokens"] - (
        out["choices"][0]["finish_reason"] == "stop"
    )


def test_fusion_vqa_classify_and_chat(fus, fusion_dir):
    from vlmoe.recipes.run import load_trained

    model, task = load_trained(fusion_dir)
    image, q = png_url(7), "what colour?"
    vqa = fus.post("/v1/vqa", json={"image": image, "question": q, "top_k": 3, "routing": True})
    assert vqa.status_code == 200, vqa.text
    vqa = vqa.json()
    expected = task.predict(model, png_array(7), q, top=3)
    assert vqa["answer"] == expected.text
    assert [a["label"] for a in vqa["answers"]] == [n for n, _ in expected.scores]
    assert vqa["label"]["label"] in task.info.label_names
    check_routing(vqa["routing"])
    labels = fus.post("/v1/classify", json={"image": image, "top_k": 2}).json()["labels"]
    assert len(labels) == 2 and labels[0]["score"] >= labels[1]["score"]
    chat = fus.post("/v1/chat/completions", json=chat_body("vqa", q, 7)).json()
    assert chat["choices"][0]["message"]["content"] == vqa["answer"]
    assert fus.get("/v1/models").json()["data"][0]["endpoints"] == [
        "chat",
        "classify",
        "vqa",
        "predict",
    ]


def test_contrastive_match(con):
    texts = ["a red circle", "a blue square", "two stars"]
    r = con.post(
        "/v1/match",
        json={"images": [png_url(1), png_url(2)], "texts": texts, "routing": True},
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["scores"]) == 2 and all(len(row) == 3 for row in out["scores"])
    assert all(abs(sum(row) - 1) < 1e-5 for row in out["scores"])
    assert all(-1.0001 <= s <= 1.0001 for row in out["similarities"] for s in row)
    assert out["best"] == [max(range(3), key=row.__getitem__) for row in out["scores"]]
    check_routing(out["routing"])
    assert_error(con.post("/v1/chat/completions", json=chat_body("clip")), 400, "match")
    assert_error(con.post("/v1/classify", json={"image": png_url()}), 400, "does not serve")


# ----------------------------------------------------------------------------- bad requests


def _b64(data: bytes, mime="image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


BAD_CHAT = [
    ("malformed json", b'{"model": "cap", "messages": [', 400, "not valid json"),
    ("empty body", b"", 400, "json"),
    ("not an object", b"[1, 2]", 400, ""),
    ("wrong type", {"model": "cap", "messages": "hi"}, 400, "messages"),
    ("max_tokens type", {"max_tokens": "many"}, 400, "max_tokens"),
    ("max_tokens zero", {"max_tokens": 0}, 400, "max_tokens"),
    ("temperature", {"temperature": 3}, 400, "temperature"),
    ("top_p", {"top_p": 0}, 400, "top_p"),
    ("n", {"n": 2}, 400, "n"),
    ("empty messages", {"model": "cap", "messages": []}, 400, "messages"),
    ("no content", {"model": "cap", "messages": [{"role": "user", "content": []}]}, 400, "no text"),
    ("bad role", {"model": "cap", "messages": [{"role": "robot", "content": "x"}]}, 400, "role"),
    (
        "bad part",
        {"model": "cap", "messages": [{"role": "user", "content": [{"type": "audio"}]}]},
        400,
        "",
    ),
    ("unknown model", {"model": "gpt-9"}, 404, "gpt-9"),
    ("missing model", {"model": None}, 400, "model"),
    ("max_tokens cap", {"max_tokens": 100000}, 400, "limit"),
    ("context", {"max_tokens": 200}, 400, "context"),
    ("stop count", {"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("stop empty", {"stop": [""]}, 400, "stop"),
    ("tools", {"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
    ("logprobs", {"logprobs": True}, 400, "logprobs"),
    ("penalty", {"presence_penalty": 0.5}, 400, "presence_penalty"),
    ("json mode", {"response_format": {"type": "json_object"}}, 400, "response_format"),
]


@pytest.mark.parametrize("name,body,status,word", BAD_CHAT, ids=[b[0] for b in BAD_CHAT])
def test_bad_chat_requests(dec, name, body, status, word):
    if isinstance(body, bytes):
        r = dec.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
    else:
        full = chat_body("cap", "a", 0)
        full.update(body)
        full = {k: v for k, v in full.items() if v is not None}
        r = dec.post("/v1/chat/completions", json=full)
    err = assert_error(r, status, word)
    if status == 404:
        assert err["code"] == "model_not_found"


def _image_part(url):
    return {
        "model": "cap",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "a"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
    }


BAD_IMAGES = [
    ("not an image", _b64(b"hello, not a png"), 400, "not a decodable image"),
    ("truncated", _b64(png_bytes(0, 64)[:200]), 400, "image"),
    ("bad base64", "data:image/png;base64,@@@@", 400, "base64"),
    ("no base64", "data:image/png,abc", 400, "data url"),
    ("mime", _b64(png_bytes(), "image/svg+xml"), 400, "unsupported image type"),
    ("scheme", "file:///etc/passwd", 400, "expected a data:image"),
    ("remote", "http://example.com/cat.png", 400, "remote image"),
    ("too many pixels", _b64(png_bytes(0, 300)), 413, "pixels"),
]


@pytest.fixture(scope="module")
def small_images(decoder_dir):
    from vlmoe.serve import ImageLimits

    with client_for(decoder_dir, model_name="cap", images=ImageLimits(max_pixels=200 * 200)) as c:
        yield c


@pytest.mark.parametrize("name,url,status,word", BAD_IMAGES, ids=[b[0] for b in BAD_IMAGES])
def test_bad_images(small_images, name, url, status, word):
    r = small_images.post("/v1/chat/completions", json=_image_part(url))
    err = assert_error(r, status, word)
    assert err["param"] and err["param"].startswith("messages.0.content.1")


def test_two_images_and_no_image(dec, fus):
    body = _image_part(png_url())
    body["messages"][0]["content"].append({"type": "image_url", "image_url": {"url": png_url(1)}})
    assert_error(dec.post("/v1/chat/completions", json=body), 400, "one image")
    text_only = {"model": "vqa", "messages": [{"role": "user", "content": "hi"}]}
    assert_error(fus.post("/v1/chat/completions", json=text_only), 400, "needs an image")


def test_body_and_prompt_limits(decoder_dir):
    with client_for(decoder_dir, model_name="cap", max_body_bytes=4096) as c:
        big = chat_body("cap", "a" * 5000)
        assert_error(c.post("/v1/chat/completions", json=big), 413, "exceeds")

        def chunks():  # no Content-Length: the limit holds on the streamed body too
            yield json.dumps(big).encode()

        r = c.post(
            "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
        )
        assert_error(r, 413, "exceeds")
    with client_for(decoder_dir, model_name="cap") as c:
        long = chat_body("cap", " ".join(["red circle"] * 40))
        assert_error(c.post("/v1/chat/completions", json=long), 400, "context")


def test_task_endpoint_errors(fus):
    assert_error(fus.post("/v1/vqa", json={"image": png_url()}), 400, "question")
    assert_error(fus.post("/v1/vqa", json={"image": png_url(), "question": ""}), 400, "question")
    assert_error(fus.post("/v1/classify", json={"image": "nope"}), 400, "image")
    assert_error(fus.post("/v1/classify", json={"image": png_url(), "top_k": 0}), 400, "top_k")
    assert_error(fus.post("/v1/classify", json={"image": png_url(), "model": "x"}), 404, "x")
    assert_error(fus.post("/v1/match", json={"images": [png_url()], "texts": ["a"]}), 400, "match")
    assert_error(fus.get("/v1/nothing"), 404, "no such endpoint")
    assert_error(fus.get("/v1/chat/completions"), 405, "not allowed")


def test_api_key(decoder_dir, caplog):
    with client_for(decoder_dir, model_name="cap", api_key="s3cret") as c:
        assert c.get("/health").status_code == 200
        assert c.get("/").status_code == 200
        assert_error(c.get("/v1/models"), 401, "api key")
        assert_error(c.get("/v1/models", headers={"Authorization": "Bearer nope"}), 401)
        assert_error(c.get("/v1/models", headers={"Authorization": "s3cret"}), 401)
        ok = c.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        r = c.post(
            "/v1/chat/completions",
            json=chat_body("cap", max_tokens=2),
            headers={"Authorization": "Bearer s3cret"},
        )
        assert r.status_code == 200


def test_access_log_is_one_json_line_per_request(dec, caplog):
    with caplog.at_level(logging.INFO, logger="vlmoe.serve.access"):
        r = dec.get("/health")
        dec.get("/v1/nothing")
    entries = [
        json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "vlmoe.serve.access"
    ]
    assert [(e["path"], e["status"]) for e in entries] == [("/health", 200), ("/v1/nothing", 404)]
    assert entries[0]["request_id"] == r.headers["x-request-id"]
    assert {"method", "client", "duration_ms", "bytes", "time"} <= set(entries[0])


def test_remote_images_only_when_allowed(fusion_dir, tmp_path):
    import http.server
    import threading

    from vlmoe.serve import ImageLimits

    (tmp_path / "scene.png").write_bytes(png_bytes(5))
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(  # noqa: E731
        *a, directory=str(tmp_path), **k
    )
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        with client_for(fusion_dir) as c:
            r = c.post("/v1/classify", json={"image": url + "/scene.png"})
            assert_error(r, 400, "remote image")
        with client_for(fusion_dir, images=ImageLimits(allow_remote=True)) as c:
            remote = c.post("/v1/classify", json={"image": url + "/scene.png"}).json()
            local = c.post("/v1/classify", json={"image": png_url(5)}).json()
            assert remote["labels"] == local["labels"]
            assert_error(c.post("/v1/classify", json={"image": url + "/missing.png"}), 400, "fetch")
    finally:
        httpd.shutdown()


def test_vit_classifier(vit_dir):
    from vlmoe.recipes.run import load_trained

    model, task = load_trained(vit_dir)
    with client_for(vit_dir, model_name="vit") as c:
        assert c.get("/v1/models").json()["data"][0]["endpoints"] == ["chat", "classify", "predict"]
        out = c.post("/v1/classify", json={"image": png_url(2), "top_k": 4, "routing": True})
        out = out.json()
        expected = task.predict(model, png_array(2), top=4)
        assert [x["label"] for x in out["labels"]] == [n for n, _ in expected.scores]
        check_routing(out["routing"], tokens_expected=False)
        chat = c.post("/v1/chat/completions", json=chat_body("vit", None, 2)).json()
        assert chat["choices"][0]["message"]["content"] == expected.text
        assert chat["usage"]["prompt_tokens"] == 16  # a 4 x 4 patch grid
        assert_error(c.post("/v1/vqa", json={"image": png_url(), "question": "a"}), 400, "vqa")


def test_a_fault_in_the_model_is_a_500_without_traceback(fusion_dir, caplog):
    with client_for(fusion_dir, model_name="vqa") as c:
        adapter = c.app_state.serve.engine.adapter

        def broken(*args, **kwargs):
            raise RuntimeError("boom: secret internals")

        adapter.predict = broken
        with caplog.at_level(logging.ERROR):
            r = c.post("/v1/classify", json={"image": png_url()})
        assert r.status_code == 500 and "secret" not in r.text and "Traceback" not in r.text
        assert r.json()["error"]["type"] == "server_error"
        assert any("boom" in (rec.exc_text or "") for rec in caplog.records)
        del adapter.predict  # the server is still up
        assert c.post("/v1/classify", json={"image": png_url()}).status_code == 200


def test_predict_serves_any_task(fus, dec, con, fusion_dir):
    from vlmoe.recipes.run import load_trained

    model, task = load_trained(fusion_dir)
    r = fus.post("/v1/predict", json={"image": png_url(4), "text": "what colour?", "routing": True})
    assert r.status_code == 200, r.text
    out, expected = r.json(), task.predict(model, png_array(4), "what colour?", top=5)
    assert (out["kind"], out["text"]) == ("answer", expected.text)
    assert out["extra"]["label"] == list(expected.extra["label"])  # a (name, score) pair
    check_routing(out["routing"])
    label = fus.post("/v1/predict", json={"image": png_url(4)}).json()
    assert label["kind"] == "label" and label["routing"] is None
    caption = dec.post("/v1/predict", json={"image": png_url(4), "max_tokens": 3}).json()
    assert caption["kind"] == "caption"
    match = con.post("/v1/predict", json={"image": png_url(4), "candidates": ["a", "b b"]}).json()
    assert match["kind"] == "match" and {s["label"] for s in match["scores"]} == {"a", "b b"}
    assert_error(dec.post("/v1/predict", json={"image": png_url(), "max_tokens": 10**6}), 400)


def test_ignore_eos_generates_max_tokens(dec):
    body = chat_body("cap", "a", 0, temperature=0, max_tokens=7, ignore_eos=True)
    out = dec.post("/v1/chat/completions", json=body).json()
    assert out["usage"]["completion_tokens"] == 7
    assert out["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("kind", ["fusion", "decoder"])
def test_routing_agrees_with_vlmoe_inspect(kind, fus, dec, fusion_dir, decoder_dir, tmp_path):
    """The server's routing and `vlmoe inspect`'s routing.json are two views of one forward
    pass: the strongest expert of every patch and token must agree."""
    from vlmoe.recipes.run import load_trained
    from vlmoe.viz.inspect import inspect_model

    client, directory, text = (
        (fus, fusion_dir, "what colour?") if kind == "fusion" else (dec, decoder_dir, None)
    )
    model, task = load_trained(directory)
    body = {"image": png_url(6), "routing": True, **({"text": text} if text else {})}
    served = client.post("/v1/predict", json=body).json()["routing"]
    shown = json.loads(
        inspect_model(model, task, png_array(6), text, tmp_path).routing_json.read_text()
    )
    assert [layer["layer"] for layer in served] == [layer["name"] for layer in shown["layers"]]
    for mine, theirs in zip(served, shown["layers"]):
        if "patch_experts" in theirs:
            top1 = [e[0] if e else -1 for e in mine["patches"]["experts"]]
            assert top1 == [e for row in theirs["patch_experts"] for e in row]
        if "tokens" in theirs:
            assert [t["experts"][0] for t in mine["tokens"]] == [
                t["expert"] for t in theirs["tokens"]
            ]
            assert [t["token"] for t in mine["tokens"]] == [t["token"] for t in theirs["tokens"]]


def test_decoder_chat_without_an_image(dec):
    body = {"model": "cap", "messages": [{"role": "user", "content": "a red"}], "max_tokens": 3}
    out = dec.post("/v1/chat/completions", json={**body, "temperature": 0, "routing": True})
    assert out.status_code == 200, out.text
    out = out.json()
    tok = dec.app_state.serve.engine.adapter.tokenizer
    text_tokens = len(tok.encode("a red", add_special=False))
    assert out["usage"]["prompt_tokens"] == 1 + text_tokens  # <bos> and the text, no image
    assert all(layer["patches"] is None for layer in out["routing"])
