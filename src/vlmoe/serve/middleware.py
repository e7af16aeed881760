"""Two ASGI middlewares of `vlmoe serve`: a request body size limit and a structured access log.

Both are plain ASGI (not `BaseHTTPMiddleware`), so they see streamed responses as they go and
never buffer them.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from starlette.exceptions import HTTPException

from vlmoe.serve.errors import error_body

access_log = logging.getLogger("vlmoe.serve.access")


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413: at once from `Content-Length`, or as
    soon as a chunked body passes the limit."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        message = f"the request body exceeds the limit of {self.max_bytes} bytes"
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            body = json.dumps(error_body(413, message)).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 413,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        seen = 0

        async def limited():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, message)  # FastAPI passes HTTPExceptions through
            return msg

        await self.app(scope, limited, send)


class AccessLog:
    """One JSON line per request on the `vlmoe.serve.access` logger: time, client, method,
    path, status, response bytes, duration (to the last body byte) and a request id, which is
    also returned in the `X-Request-Id` header."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = uuid.uuid4().hex[:16]
        record: dict[str, Any] = {"status": None, "bytes": 0}

        async def logged_send(message) -> None:
            if message["type"] == "http.response.start":
                record["status"] = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            elif message["type"] == "http.response.body":
                record["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            client = scope.get("client")
            entry = {
                "event": "request",
                "time": round(time.time(), 3),
                "request_id": request_id,
                "client": f"{client[0]}:{client[1]}" if client else None,
                "method": scope.get("method"),
                "path": scope.get("path"),
                "status": record["status"] if record["status"] is not None else 499,
                "bytes": record["bytes"],
                "duration_ms": round((time.perf_counter() - start) * 1000, 2),
            }
            access_log.info(json.dumps(entry))
