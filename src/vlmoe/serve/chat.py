"""Chat completions and the waiting on jobs: from an OpenAI chat request to an engine job, and
from the job's events back to a response or to server-sent events as OpenAI streams them.

A decoder writes its answer (`GenerateJob`); a model that answers rather than writes (VQA, a
classifier) gives its top answer or label as the whole completion (`CallJob`). The prompt is the
text of the user and assistant turns in order; the image is the request's one `image_url` part.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request

from vlmoe.serve.engine import CallJob, Engine, GenerateJob, Job, ModelAdapter, timeout_error
from vlmoe.serve.errors import APIError, bad_request
from vlmoe.serve.inputs import ImageLimits, decode_image_url
from vlmoe.serve.schemas import ChatCompletionRequest

POLL_S = 0.25  # how often a waiting request checks that its client is still there


def check_text_length(adapter: ModelAdapter, text: str, param: str, max_chars: int) -> int:
    """Tokens of `text`; `APIError(400)` when it is over `max_chars` or the model's context."""
    if len(text) > max_chars:
        raise bad_request(
            f"{param}: {len(text)} characters exceeds the limit of {max_chars}",
            param,
            "prompt_too_long",
        )
    n = adapter.text_tokens(text) if adapter.tokenizer is not None else 0
    limit = adapter.context_length
    if limit and n > limit:
        raise bad_request(
            f"{param}: {n} tokens exceeds the model's context of {limit} tokens",
            param,
            "prompt_too_long",
        )
    return n


def _message_parts(body: ChatCompletionRequest) -> tuple[str, list[tuple[str, str]]]:
    """(prompt text, [(param, image url)]) from the messages: the text of the user and
    assistant turns in order (system turns are instructions these models were not trained
    on), and every image part."""
    texts, images = [], []
    for i, message in enumerate(body.messages):
        content = message.content
        if isinstance(content, str):
            parts: list = [content]
        else:
            parts = list(content or [])
        for j, part in enumerate(parts):
            if isinstance(part, str):
                text = part
            elif part.type == "text":
                text = part.text
            else:
                images.append((f"messages.{i}.content.{j}.image_url", part.image_url.url))
                continue
            if message.role in ("user", "assistant") and text.strip():
                texts.append(text.strip())
    return " ".join(texts), images


async def chat_job(
    engine: Engine, body: ChatCompletionRequest, images: ImageLimits, max_chars: int
) -> Job:
    """The job that answers a chat request: a generation (decoder) or a prediction."""
    adapter = engine.adapter
    option = body.unsupported_option()
    if option is not None:
        raise bad_request(f"{option}: not supported by this server", option, "unsupported_option")
    prompt, parts = _message_parts(body)
    if not prompt and not parts:
        raise bad_request("messages: no text and no image to answer", "messages")
    if len(parts) > 1:
        raise bad_request(
            f"messages: this model takes one image per request, got {len(parts)}", "messages"
        )
    check_text_length(adapter, prompt, "messages", max_chars)
    rgb = None
    if parts:
        param, url = parts[0]
        rgb = await asyncio.to_thread(decode_image_url, url, images, param)
    loop = asyncio.get_running_loop()
    if not adapter.generates:
        return _answer_job(engine, loop, rgb, prompt, body.routing)
    stop = _stops(body.stop)
    prompt_ids = adapter.prompt_ids(prompt)
    room = adapter.context_length - len(prompt_ids)
    asked = body.max_completion_tokens or body.max_tokens
    cap = engine.config.max_tokens
    if asked is not None and asked > cap:
        raise bad_request(f"max_tokens: {asked} exceeds this server's limit of {cap}", "max_tokens")
    if room < 1 or (asked is not None and asked > room):
        raise bad_request(
            f"max_tokens: the prompt is {len(prompt_ids)} tokens and the model's context is "
            f"{adapter.context_length}, so at most {max(room, 0)} new tokens fit"
            + (f"; asked for {asked}" if asked else ""),
            "max_tokens",
            "context_length_exceeded",
        )
    return GenerateJob(
        loop,
        engine.config.timeout_s,
        rgb=rgb,
        prompt_ids=prompt_ids,
        max_tokens=min(asked or room, room, cap),
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=stop,
        routing=body.routing,
        ignore_eos=body.ignore_eos,
    )


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 4:
        raise bad_request(f"stop: at most 4 stop strings, got {len(stops)}", "stop")
    if any(not s for s in stops):
        raise bad_request("stop: stop strings must not be empty", "stop")
    return tuple(stops)


def _answer_job(engine: Engine, loop, rgb, prompt: str, routing: bool) -> CallJob:
    """Chat with a model that answers rather than writes: its top answer (VQA) or label."""
    adapter = engine.adapter
    if rgb is None:
        raise bad_request(
            f"messages: this {adapter.architecture} model needs an image (an image_url part)",
            "messages",
        )

    def work() -> dict[str, Any]:
        p, captured = adapter.predict(rgb, prompt or None, routing, top=1)
        tok = adapter.tokenizer
        info: dict[str, Any] = {
            "finish_reason": "stop",
            "text": p.text,
            "prompt_tokens": (adapter.text_tokens(prompt) if prompt and tok else 0)
            + adapter.image_tokens,
            "completion_tokens": len(tok.encode(p.text, add_special=False)) if tok else 1,
        }
        if captured is not None:
            info["routing"] = captured
        return info

    return engine.call_job(loop, work)


# ----------------------------------------------------------------------------- waiting


async def next_event(request: Request, job: Job) -> tuple[str, Any]:
    """The job's next event; cancels the job when its client has gone or it timed out.
    The client is checked at least every POLL_S, also while events keep coming."""
    while True:
        now = time.monotonic()
        remaining = job.deadline - now
        if remaining <= 0:
            job.cancel()
            raise timeout_error(job.timeout_s)
        if now - job.checked_at >= POLL_S:
            job.checked_at = now
            if await request.is_disconnected():
                job.cancel()
                raise APIError(499, "the client closed the request")
        try:
            return await asyncio.wait_for(job.events.get(), min(POLL_S, remaining))
        except asyncio.TimeoutError:
            continue


async def call_result(engine: Engine, request: Request, fn: Callable[[], Any]) -> Any:
    """Run `fn` on the engine's worker (queued like every job) and return what it returns."""
    return await job_result(request, engine.submit(engine.call_job(asyncio.get_running_loop(), fn)))


async def job_result(request: Request, job: Job) -> Any:
    """Wait for a submitted one-shot job's result (its error raised); cancel it when the
    client goes away or the request times out."""
    try:
        kind, value = await next_event(request, job)
    except BaseException:
        job.cancel()
        raise
    if kind == "error":
        raise value
    return value


async def collect(request: Request, job: Job) -> dict[str, Any]:
    """Wait for a chat job to finish; its full text and final info."""
    parts: list[str] = []
    try:
        while True:
            kind, value = await next_event(request, job)
            if kind == "error":
                raise value
            if kind == "delta":
                parts.append(value)
            elif kind in ("done", "result"):
                return {**value, "text": "".join(parts) if kind == "done" else value["text"]}
    except BaseException:
        job.cancel()
        raise


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def stream_events(
    request: Request,
    job: Job,
    completion_id: str,
    model: str,
    include_usage: bool,
) -> AsyncIterator[str]:
    """Server-sent events as OpenAI sends them: a role chunk, content deltas, a final chunk
    with `finish_reason` (and vlmoe's `routing`), a usage chunk when asked, `[DONE]`."""
    created = int(time.time())

    def chunk(delta: dict, finish: str | None = None, **extra: Any) -> dict[str, Any]:
        out = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            out["usage"] = None
        return {**out, **extra}

    try:
        yield _sse(chunk({"role": "assistant", "content": ""}))
        while True:
            try:
                kind, value = await next_event(request, job)
            except APIError as e:
                if e.status == 499:
                    return
                yield _sse(e.body())
                break
            if kind == "error":
                yield _sse(value.body())
                break
            if kind == "delta":
                yield _sse(chunk({"content": value}))
                continue
            if kind == "result":  # an answering model: the whole answer in one delta
                yield _sse(chunk({"content": value["text"]}))
            extra = {"routing": value["routing"]} if value.get("routing") is not None else {}
            yield _sse(chunk({}, value["finish_reason"], **extra))
            if include_usage:
                p, c = value["prompt_tokens"], value["completion_tokens"]
                usage = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
                yield _sse({**chunk({}), "choices": [], "usage": usage})
            break
        yield _sse("[DONE]")
    finally:
        job.cancel()  # a no-op when it finished; stops the generation when the client left
