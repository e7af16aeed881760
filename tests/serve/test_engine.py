"""The engine: batching gives the same greedy answers as one request at a time; a full queue
answers 429 with Retry-After; a request past its timeout answers 504 and stops; text streams
never split a stop string."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.serve.conftest import chat_body, client_for, png_array
from vlmoe.serve import ImageLimits, ServeConfig
from vlmoe.serve.engine import Engine, EngineConfig, GenerateJob, ModelAdapter, TextStream
from vlmoe.serve.errors import APIError


@pytest.fixture(scope="module")
def adapter(decoder_dir):
    from vlmoe.recipes.run import load_trained

    return ModelAdapter(*load_trained(decoder_dir))


PROMPTS = ["a", "", "the red", "a blue circle", "two", "", "a green", "three yellow"]


def _jobs(adapter, loop):
    return [
        GenerateJob(
            loop,
            60,
            rgb=png_array(i),
            prompt_ids=adapter.prompt_ids(p),
            max_tokens=3 + i,  # rows leave the batch at different steps
        )
        for i, p in enumerate(PROMPTS)
    ]


async def _run(engine: Engine, jobs, start_after_submit: bool):
    if start_after_submit:  # all 8 wait in the queue when the worker starts: one batch
        for job in jobs:
            engine.submit(job)
        engine.start()
    results = []
    for job in jobs:
        if not start_after_submit:  # one at a time: submit, wait, then the next
            engine.start().submit(job)
        parts = []
        while True:
            kind, value = await job.events.get()
            if kind == "delta":
                parts.append(value)
            elif kind == "done":
                results.append(("".join(parts), value["finish_reason"], job.new_ids))
                break
            else:
                raise value
    engine.close()
    return results


def test_greedy_batched_equals_one_at_a_time(adapter):
    async def both():
        loop = asyncio.get_running_loop()
        batched_engine = Engine(adapter, EngineConfig(max_batch=8))
        batched = await _run(batched_engine, _jobs(adapter, loop), True)
        alone_engine = Engine(adapter, EngineConfig(max_batch=1))
        alone = await _run(alone_engine, _jobs(adapter, loop), False)
        return batched, alone, batched_engine, alone_engine

    batched, alone, batched_engine, alone_engine = asyncio.run(both())
    assert batched_engine.largest_batch == 8 and batched_engine.batches_run == 1
    assert alone_engine.largest_batch == 1 and alone_engine.batches_run == 8
    assert batched == alone
    assert {len(ids) for _, _, ids in alone} != {1}  # something was generated


def test_models_that_drop_tokens_run_one_request_at_a_time(decoder_dir):
    import dataclasses

    from vlmoe.moe.layer import moe_layers
    from vlmoe.recipes.run import load_trained

    model, task = load_trained(decoder_dir)
    assert ModelAdapter(model, task).batch_invariant
    assert Engine(ModelAdapter(model, task)).max_batch == 8
    layer = moe_layers(model)[0]
    layer.cfg = dataclasses.replace(layer.cfg, capacity_factor=1.0)
    assert not ModelAdapter(model, task).batch_invariant
    assert Engine(ModelAdapter(model, task)).max_batch == 1


def test_concurrent_http_requests_equal_sequential(decoder_dir):
    bodies = [chat_body("cap", p, i, temperature=0, max_tokens=5) for i, p in enumerate(PROMPTS)]
    with client_for(decoder_dir, model_name="cap") as c:
        sequential = [c.post("/v1/chat/completions", json=b).json() for b in bodies]
        with ThreadPoolExecutor(8) as pool:
            concurrent = list(
                pool.map(lambda b: c.post("/v1/chat/completions", json=b).json(), bodies)
            )
    for a, b in zip(sequential, concurrent):
        assert a["choices"] == b["choices"] and a["usage"] == b["usage"]


def _blocker(engine: Engine, release: threading.Event, started: threading.Event):
    """Occupy the worker until `release` is set."""

    def fn():
        started.set()
        release.wait(30)

    async def submit():
        engine.submit(engine.call_job(asyncio.get_running_loop(), fn))

    return submit


def test_queue_full_is_429_with_retry_after(decoder_dir):
    with client_for(decoder_dir, model_name="cap", engine_config=EngineConfig(max_queue=1)) as c:
        engine = c.app_state.serve.engine
        release, started = threading.Event(), threading.Event()
        c.portal.call(_blocker(engine, release, started))
        assert started.wait(10)
        c.portal.call(_blocker(engine, release, threading.Event()))  # fills the queue
        try:
            r = c.post("/v1/chat/completions", json=chat_body("cap", max_tokens=2))
            assert r.status_code == 429
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["type"] == "rate_limit_error"
            assert r.json()["error"]["code"] == "queue_full"
        finally:
            release.set()
        ok = c.post("/v1/chat/completions", json=chat_body("cap", max_tokens=2))
        assert ok.status_code == 200


def test_timeout_is_504_and_the_job_never_runs(decoder_dir):
    config = EngineConfig(timeout_s=0.5)
    with client_for(decoder_dir, model_name="cap", engine_config=config) as c:
        engine = c.app_state.serve.engine
        release, started = threading.Event(), threading.Event()
        c.portal.call(_blocker(engine, release, started))
        assert started.wait(10)
        try:
            r = c.post("/v1/chat/completions", json=chat_body("cap", max_tokens=2))
            assert r.status_code == 504 and "timeout" in r.json()["error"]["message"]
            events = c.post(
                "/v1/chat/completions", json=chat_body("cap", max_tokens=2, stream=True)
            ).text
            assert '"type": "timeout_error"' in events and events.endswith("data: [DONE]\n\n")
        finally:
            release.set()
        c.get("/health")
        assert (
            c.post("/v1/chat/completions", json=chat_body("cap", max_tokens=2)).status_code == 200
        )
        assert engine.jobs_stopped == 2


def test_submit_refuses_when_full():
    class _Adapter:
        batch_invariant = True

    engine = Engine(_Adapter(), EngineConfig(max_queue=2))

    async def go():
        loop = asyncio.get_running_loop()
        for _ in range(2):
            engine.submit(engine.call_job(loop, lambda: None))
        with pytest.raises(APIError) as e:
            engine.submit(engine.call_job(loop, lambda: None))
        return e.value

    err = asyncio.run(go())
    assert err.status == 429 and "Retry-After" in err.headers


class _CharTokenizer:
    def decode(self, ids):
        return "".join(chr(i) for i in ids)


@pytest.mark.parametrize("stop", [("cd",), ("xyz", "de"), ("e",), ("zz",)])
def test_text_stream_never_splits_a_stop_string(stop):
    text = "abcdefg"
    stream = TextStream(_CharTokenizer(), stop)
    sent, stopped = "", False
    for ch in text:
        delta, stopped = stream.push(ord(ch))
        sent += delta
        assert not any(s in sent for s in stop)
        if stopped:
            break
    if not stopped:
        sent += stream.flush()
    cuts = [text.find(s) for s in stop if s in text]
    assert sent == (text[: min(cuts)] if cuts else text)
    assert stopped == bool(cuts)


@pytest.mark.parametrize(
    "make",
    [
        lambda: EngineConfig(max_queue=0),
        lambda: EngineConfig(timeout_s=0),
        lambda: ImageLimits(max_pixels=0),
        lambda: ServeConfig(model_name=""),
    ],
)
def test_configs_refuse_bad_values(make):
    with pytest.raises(ValueError, match="must"):
        make()
