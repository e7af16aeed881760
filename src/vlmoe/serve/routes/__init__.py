"""The endpoints of `vlmoe serve`, one `APIRouter` per group, all sharing the app's
`ServeState` (`vlmoe.serve.state`):

    meta     GET /, /health, /v1/models
    chat     POST /v1/chat/completions (OpenAI Chat Completions, streaming)
    images   POST /v1/images/generations (OpenAI Images, b64_json)
    tasks    POST /v1/classify, /v1/vqa, /v1/match, /v1/detect, /v1/predict
"""

from __future__ import annotations

from vlmoe.serve.routes import chat, images, meta, tasks

ROUTERS = (meta.router, chat.router, images.router, tasks.router)

__all__ = ["ROUTERS"]
