"""The HTTP app of `vlmoe serve`: the OpenAI-compatible chat API, task endpoints, the page.

    GET  /                      the web page (`vlmoe/serve/static/index.html`, no external asset)
    GET  /health                {"status": "ok", ...}
    GET  /v1/models             the one served model, with its task and endpoints
    POST /v1/chat/completions   OpenAI Chat Completions (vLLM / SGLang compatible), streaming
    POST /v1/classify           top-k labels with scores
    POST /v1/vqa                answer a question about an image (fusion VQA models)
    POST /v1/match              zero-shot / retrieval scores of texts against images

Every bad request gets a 4xx JSON error in the OpenAI shape (`vlmoe.serve.errors`), never a
traceback. With an API key set, `/v1/*` needs `Authorization: Bearer KEY` (compared in
constant time). Each request is logged as one JSON line on the `vlmoe.serve.access` logger.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from vlmoe.serve.engine import CallJob, Engine, GenerateJob, Job, timeout_error
from vlmoe.serve.errors import APIError, bad_request, error_body
from vlmoe.serve.inputs import ImageLimits, decode_image_url
from vlmoe.serve.middleware import AccessLog, BodyLimit
from vlmoe.serve.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ClassifyRequest,
    ClassifyResponse,
    MatchRequest,
    MatchResponse,
    ModelCard,
    ModelList,
    Scored,
    Usage,
    VQARequest,
    VQAResponse,
)

log = logging.getLogger(__name__)

POLL_S = 0.25  # how often a waiting request checks that its client is still there


@dataclass(frozen=True)
class ServeConfig:
    """What the HTTP layer enforces (the engine has its own `EngineConfig`)."""

    model_name: str
    api_key: str | None = None
    max_body_bytes: int = 32 * 2**20
    max_prompt_chars: int = 32_000
    images: ImageLimits = ImageLimits()

    def __post_init__(self) -> None:
        if not self.model_name:
            raise ValueError("model_name must not be empty")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")


def create_app(engine: Engine, config: ServeConfig) -> FastAPI:
    """The FastAPI app serving `engine`'s model; the engine's worker runs while the app does."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            engine.close()

    app = FastAPI(
        title="vlmoe serve",
        summary="OpenAI-compatible API for a sparse MoE vision-language model",
        lifespan=lifespan,
    )
    app.state.engine, app.state.config = engine, config
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(AccessLog)
    _add_error_handlers(app)
    created = int(time.time())
    adapter = engine.adapter

    async def authorize(request: Request) -> None:
        if config.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), config.api_key.encode()
        ):
            raise APIError(401, "invalid or missing API key", code="invalid_api_key")

    def check_model(name: str | None) -> None:
        if name is not None and name != config.model_name:
            raise APIError(
                404,
                f"the model {name!r} does not exist; this server serves {config.model_name!r}",
                param="model",
                code="model_not_found",
            )

    def check_endpoint(name: str) -> None:
        if name not in adapter.endpoints:
            raise bad_request(
                f"this {adapter.architecture} model (task {adapter.task}) does not serve "
                f"/{name}; it serves: " + ", ".join(adapter.endpoints),
                code="unsupported_endpoint",
            )

    def image(url: str, param: str):
        return decode_image_url(url, config.images, param)

    auth = [Depends(authorize)]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        html = resources.files("vlmoe.serve").joinpath("static/index.html").read_text("utf-8")
        return HTMLResponse(html, headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": config.model_name,
            "queued": engine.queued,
            "batches_run": engine.batches_run,
            "largest_batch": engine.largest_batch,
        }

    @app.get("/v1/models", response_model=ModelList, dependencies=auth)
    async def models() -> ModelList:
        card = ModelCard(
            id=config.model_name,
            created=created,
            task=adapter.task,
            architecture=adapter.architecture,
            endpoints=list(adapter.endpoints),
        )
        return ModelList(data=[card])

    @app.post("/v1/classify", response_model=ClassifyResponse, dependencies=auth)
    async def classify(body: ClassifyRequest, request: Request) -> ClassifyResponse:
        check_model(body.model)
        check_endpoint("classify")
        rgb = await asyncio.to_thread(image, body.image, "image")

        def work():
            p = adapter.predict(rgb, None, body.top_k)
            return p, adapter.routing(rgb) if body.routing else None

        p, routing = await _result(engine, request, engine.call_job(_loop(), work))
        return ClassifyResponse(
            model=config.model_name,
            labels=[Scored(label=n, score=s) for n, s in p.scores],
            routing=routing,
        )

    @app.post("/v1/vqa", response_model=VQAResponse, dependencies=auth)
    async def vqa(body: VQARequest, request: Request) -> VQAResponse:
        check_model(body.model)
        check_endpoint("vqa")
        _check_text_length(adapter, body.question, "question", config)
        rgb = await asyncio.to_thread(image, body.image, "image")

        def work():
            p = adapter.predict(rgb, body.question, body.top_k)
            return p, adapter.routing(rgb, body.question) if body.routing else None

        p, routing = await _result(engine, request, engine.call_job(_loop(), work))
        label = p.extra.get("label")
        return VQAResponse(
            model=config.model_name,
            answer=p.text,
            answers=[Scored(label=n, score=s) for n, s in p.scores],
            label=Scored(label=label[0], score=label[1]) if label else None,
            routing=routing,
        )

    @app.post("/v1/match", response_model=MatchResponse, dependencies=auth)
    async def match(body: MatchRequest, request: Request) -> MatchResponse:
        check_model(body.model)
        check_endpoint("match")
        for i, text in enumerate(body.texts):
            _check_text_length(adapter, text, f"texts.{i}", config)
        rgbs = [await asyncio.to_thread(image, u, f"images.{i}") for i, u in enumerate(body.images)]

        def work():
            probs, sims = adapter.match(rgbs, body.texts)
            return probs, sims, adapter.routing(rgbs[0], body.texts[0]) if body.routing else None

        probs, sims, routing = await _result(engine, request, engine.call_job(_loop(), work))
        return MatchResponse(
            model=config.model_name,
            scores=probs,
            similarities=sims,
            best=[max(range(len(row)), key=row.__getitem__) for row in probs],
            routing=routing,
        )

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        dependencies=auth,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def chat(body: ChatCompletionRequest, request: Request):
        check_model(body.model)
        check_endpoint("chat")
        job = await _chat_job(engine, config, body)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        engine.submit(job)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _stream(engine, request, job, completion_id, config.model_name, include_usage)
            return StreamingResponse(
                events,
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        info = await _collect(request, job)
        usage = Usage(
            prompt_tokens=info["prompt_tokens"],
            completion_tokens=info["completion_tokens"],
            total_tokens=info["prompt_tokens"] + info["completion_tokens"],
        )
        return ChatCompletion(
            id=completion_id,
            created=int(time.time()),
            model=config.model_name,
            choices=[
                ChatChoice(
                    message=AssistantMessage(content=info["text"]),
                    finish_reason=info["finish_reason"],
                )
            ],
            usage=usage,
            routing=info.get("routing"),
        )

    return app


# ----------------------------------------------------------------------------- errors


def _error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if first.get("type") == "missing" and not loc:
        return "the request body is empty; expected a JSON object", None
    value = first.get("input")
    shown = json.dumps(value)[:60] if value is not None and first.get("type") != "missing" else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    text = f"{param}: {first.get('msg', 'invalid value')}" if param else first.get("msg", "")
    return text + (f", got {shown}" if shown else "") + more, param


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return _error_response(APIError(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        elif exc.status_code == 400 and "parsing the body" in message:
            message = "the request body could not be read as JSON"
        return _error_response(APIError(exc.status_code, message, headers=exc.headers))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(500, "internal server error"), status_code=500)


# ----------------------------------------------------------------------------- chat


def _loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def _check_text_length(adapter, text: str, param: str, config: ServeConfig) -> int:
    if len(text) > config.max_prompt_chars:
        raise bad_request(
            f"{param}: {len(text)} characters exceeds the limit of {config.max_prompt_chars}",
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


async def _chat_job(engine: Engine, config: ServeConfig, body: ChatCompletionRequest) -> Job:
    adapter = engine.adapter
    prompt, images = _message_parts(body)
    if not prompt and not images:
        raise bad_request("messages: no text and no image to answer", "messages")
    if len(images) > 1:
        raise bad_request(
            f"messages: this model takes one image per request, got {len(images)}", "messages"
        )
    _check_text_length(adapter, prompt, "messages", config)
    rgb = None
    if images:
        param, url = images[0]
        rgb = await asyncio.to_thread(decode_image_url, url, config.images, param)
    loop = _loop()
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
        image=adapter.image_tensor(rgb) if rgb is not None else None,
        rgb=rgb,
        prompt_ids=prompt_ids,
        max_tokens=min(asked or room, room, cap),
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=stop,
        routing=body.routing,
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
        p = adapter.predict(rgb, prompt or None, 1)
        tok = adapter.tokenizer
        info: dict[str, Any] = {
            "finish_reason": "stop",
            "text": p.text,
            "prompt_tokens": (adapter.text_tokens(prompt) if prompt and tok else 0)
            + adapter.image_tokens,
            "completion_tokens": len(tok.encode(p.text, add_special=False)) if tok else 1,
        }
        if routing:
            info["routing"] = adapter.routing(rgb, prompt or None)
        return info

    return engine.call_job(loop, work)


# ----------------------------------------------------------------------------- waiting


async def _next_event(request: Request, job: Job) -> tuple[str, Any]:
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


async def _result(engine: Engine, request: Request, job: CallJob) -> Any:
    engine.submit(job)
    try:
        kind, value = await _next_event(request, job)
    except BaseException:
        job.cancel()
        raise
    if kind == "error":
        raise value
    return value


async def _collect(request: Request, job: Job) -> dict[str, Any]:
    """Wait for a chat job to finish; its full text and final info."""
    parts: list[str] = []
    try:
        while True:
            kind, value = await _next_event(request, job)
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


async def _stream(
    engine: Engine,
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
                kind, value = await _next_event(request, job)
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
