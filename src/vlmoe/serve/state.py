"""What every endpoint of `vlmoe serve` shares: the HTTP limits (`ServeConfig`) and one
`ServeState` per app (the engine, the limits, and the checks every request goes through).

The routers (`vlmoe.serve.routes`) reach the state through the `get_state` dependency, and
`authorize` guards `/v1/*` when an API key is set (compared in constant time).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
from fastapi import Depends, Request

from vlmoe.serve.chat import check_text_length
from vlmoe.serve.engine import Engine, ModelAdapter
from vlmoe.serve.errors import APIError, bad_request
from vlmoe.serve.inputs import ImageLimits, decode_image_url


@dataclass(frozen=True)
class ServeConfig:
    """What the HTTP layer enforces (the engine has its own `EngineConfig`)."""

    model_name: str
    api_key: str | None = None
    max_body_bytes: int = 32 * 2**20
    max_prompt_chars: int = 32_000
    images: ImageLimits = ImageLimits()
    max_images_per_request: int = 8  # `n` of /v1/images/generations

    def __post_init__(self) -> None:
        if not self.model_name:
            raise ValueError("model_name must not be empty")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if self.max_images_per_request < 1:
            raise ValueError(
                f"max_images_per_request must be >= 1, got {self.max_images_per_request}"
            )


@dataclass
class ServeState:
    """One served model: its engine, the HTTP limits, and the checks requests share."""

    engine: Engine
    config: ServeConfig
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def adapter(self) -> ModelAdapter:
        return self.engine.adapter

    @property
    def model_name(self) -> str:
        return self.config.model_name

    def check_model(self, name: str | None) -> None:
        """404 when a request names a model this server does not serve (None: any)."""
        if name is not None and name != self.config.model_name:
            raise APIError(
                404,
                f"the model {name!r} does not exist; this server serves {self.config.model_name!r}",
                param="model",
                code="model_not_found",
            )

    def check_endpoint(self, name: str) -> None:
        """400 naming what the model serves when it does not serve `name`."""
        adapter = self.adapter
        if name in adapter.endpoints:
            return
        served = f"this {adapter.architecture} model (task {adapter.task_name})"
        if "images" in adapter.endpoints:
            raise bad_request(
                f"{served} generates images; use /v1/images/generations",
                code="unsupported_endpoint",
            )
        raise bad_request(
            f"{served} does not serve /{name}; it serves: " + ", ".join(adapter.endpoints),
            code="unsupported_endpoint",
        )

    def check_text(self, text: str, param: str) -> int:
        """Tokens of `text`; 400 when over the prompt limit or the model's context."""
        return check_text_length(self.adapter, text, param, self.config.max_prompt_chars)

    async def image(self, url: str, param: str = "image") -> np.ndarray:
        """(H, W, 3) uint8 of an image URL, decoded off the event loop within the limits."""
        return await asyncio.to_thread(decode_image_url, url, self.config.images, param)


def get_state(request: Request) -> ServeState:
    """The app's `ServeState` (a FastAPI dependency)."""
    return request.app.state.serve


async def authorize(request: Request) -> None:
    """401 unless the request carries the server's API key (when one is set)."""
    key = get_state(request).config.api_key
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise APIError(401, "invalid or missing API key", code="invalid_api_key")


State = Annotated[ServeState, Depends(get_state)]  # an endpoint's `state: State` argument
