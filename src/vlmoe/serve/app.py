"""The HTTP app of `vlmoe serve`: the OpenAI-compatible chat and images APIs, task endpoints,
the page.

    GET  /                       the web page (`vlmoe/serve/static/index.html`, no external asset)
    GET  /health                 {"status": "ok", ...}
    GET  /v1/models              the one served model, with its task and endpoints
    POST /v1/chat/completions    OpenAI Chat Completions (vLLM / SGLang compatible), streaming
    POST /v1/images/generations  OpenAI Images (b64_json PNGs) for image generation models
    POST /v1/classify            top-k labels with scores
    POST /v1/vqa                 answer a question about an image (fusion VQA models)
    POST /v1/match               zero-shot / retrieval scores of texts against images
    POST /v1/detect              boxes with labels and scores (detection, grounding)
    POST /v1/predict             any task's prediction (`Task.predict`), e.g. a plugin task's

The endpoints live in `vlmoe.serve.routes`, one router per group, sharing the app's
`ServeState`. Every bad request gets a 4xx JSON error in the OpenAI shape
(`vlmoe.serve.errors`), never a traceback. With an API key set, `/v1/*` needs
`Authorization: Bearer KEY` (compared in constant time). Each request is logged as one JSON
line on the `vlmoe.serve.access` logger.
"""

from __future__ import annotations

import contextlib
import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from vlmoe.serve.engine import Engine
from vlmoe.serve.errors import APIError, error_body
from vlmoe.serve.middleware import AccessLog, BodyLimit
from vlmoe.serve.routes import ROUTERS
from vlmoe.serve.state import ServeConfig, ServeState

__all__ = ["ServeConfig", "create_app"]

log = logging.getLogger(__name__)


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
    app.state.serve = ServeState(engine, config)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(AccessLog)
    _add_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
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
