"""The HTTP app of `vlmoe serve`: the OpenAI-compatible chat API, task endpoints, the page.

    GET  /                      the web page (`vlmoe/serve/static/index.html`, no external asset)
    GET  /health                {"status": "ok", ...}
    GET  /v1/models             the one served model, with its task and endpoints
    POST /v1/chat/completions   OpenAI Chat Completions (vLLM / SGLang compatible), streaming
    POST /v1/classify           top-k labels with scores
    POST /v1/vqa                answer a question about an image (fusion VQA models)
    POST /v1/match              zero-shot / retrieval scores of texts against images
    POST /v1/predict            any task's prediction (`Task.predict`), e.g. a plugin task's

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
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from vlmoe.serve.chat import call_result, chat_job, check_text_length, collect, stream_events
from vlmoe.serve.engine import Engine
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
    PredictRequest,
    PredictResponse,
    Scored,
    Usage,
    VQARequest,
    VQAResponse,
)

log = logging.getLogger(__name__)


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
                f"this {adapter.architecture} model (task {adapter.task_name}) does not serve "
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
            task=adapter.task_name,
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
            return adapter.predict(rgb, None, body.routing, top=body.top_k)

        p, routing = await call_result(engine, request, work)
        return ClassifyResponse(
            model=config.model_name,
            labels=[Scored(label=n, score=s) for n, s in p.scores],
            routing=routing,
        )

    @app.post("/v1/vqa", response_model=VQAResponse, dependencies=auth)
    async def vqa(body: VQARequest, request: Request) -> VQAResponse:
        check_model(body.model)
        check_endpoint("vqa")
        check_text_length(adapter, body.question, "question", config.max_prompt_chars)
        rgb = await asyncio.to_thread(image, body.image, "image")

        def work():
            return adapter.predict(rgb, body.question, body.routing, top=body.top_k)

        p, routing = await call_result(engine, request, work)
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
            check_text_length(adapter, text, f"texts.{i}", config.max_prompt_chars)
        rgbs = [await asyncio.to_thread(image, u, f"images.{i}") for i, u in enumerate(body.images)]

        def work():
            probs, sims = adapter.match(rgbs, body.texts)
            routing = None
            if body.routing:  # the first image with the first text
                _, routing = adapter.predict(rgbs[0], None, True, candidates=body.texts[:1])
            return probs, sims, routing

        probs, sims, routing = await call_result(engine, request, work)
        return MatchResponse(
            model=config.model_name,
            scores=probs,
            similarities=sims,
            best=[max(range(len(row)), key=row.__getitem__) for row in probs],
            routing=routing,
        )

    @app.post("/v1/predict", response_model=PredictResponse, dependencies=auth)
    async def predict(body: PredictRequest, request: Request) -> PredictResponse:
        """Any task's prediction for one image (+ text), as the task's `predict` gives it."""
        check_model(body.model)
        if body.text is not None:
            check_text_length(adapter, body.text, "text", config.max_prompt_chars)
        if body.max_tokens is not None and body.max_tokens > engine.config.max_tokens:
            raise bad_request(
                f"max_tokens: {body.max_tokens} exceeds this server's limit of "
                f"{engine.config.max_tokens}",
                "max_tokens",
            )
        rgb = await asyncio.to_thread(image, body.image, "image")
        options: dict[str, Any] = {"top": body.top_k}
        if body.candidates:
            options["candidates"] = body.candidates
        if body.max_tokens is not None:
            options["max_new_tokens"] = body.max_tokens

        def work():
            return adapter.predict(rgb, body.text, body.routing, **options)

        p, routing = await call_result(engine, request, work)
        return PredictResponse(
            model=config.model_name,
            kind=p.kind,
            text=p.text,
            scores=[Scored(label=n, score=s) for n, s in p.scores],
            extra=plain(p.extra),
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
        job = await chat_job(engine, body, config.images, config.max_prompt_chars)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        engine.submit(job)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = stream_events(request, job, completion_id, config.model_name, include_usage)
            return StreamingResponse(
                events,
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        info = await collect(request, job)
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


def plain(value: Any) -> Any:
    """JSON-ready copy of a task's `extra` (tuples, numpy arrays and tensors become lists)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


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
