"""`POST /v1/images/generations`: the OpenAI Images API for a model whose task generates
images (`image-generation`: the prompt is a class name or index; `text-to-image`: a caption).

The response is OpenAI's, `{"created": ..., "data": [{"b64_json": PNG, "revised_prompt":
null}, ...]}`; only `b64_json` is offered, since the server keeps no files to link to. vlmoe's
fields choose the sampling (`steps`, `cfg_scale`, `sampler`, by default the run's own; `seed`:
the same seed gives the same bytes) and ask for the routing. Sampling runs on the engine's
worker like every job, and stops between steps when the client goes away or the request times
out. A request's `n` images are sampled as one batch; requests are not batched with each other,
so that a seed alone fixes the bytes (rows of a batch can differ in the last bits of a matmul).
"""

from __future__ import annotations

import asyncio
import base64
import io
import secrets
import time

import numpy as np
from fastapi import APIRouter, Depends, Request
from PIL import Image

from vlmoe.serve.chat import job_result
from vlmoe.serve.errors import bad_request
from vlmoe.serve.schemas import ImageData, ImageGenerationRequest, ImagesResponse
from vlmoe.serve.state import ServeState, State, authorize

router = APIRouter(dependencies=[Depends(authorize)])


@router.post(
    "/v1/images/generations", response_model=ImagesResponse, response_model_exclude_unset=True
)
async def generate_images(
    body: ImageGenerationRequest, request: Request, state: State
) -> ImagesResponse:
    state.check_model(body.model)
    state.check_endpoint("images")
    check_image_request(body, state)
    state.check_text(body.prompt, "prompt")
    seed = body.seed if body.seed is not None else secrets.randbits(63)
    adapter, loop = state.adapter, asyncio.get_running_loop()

    def work():
        return adapter.generate_images(
            body.prompt,
            body.n,
            steps=body.steps,
            cfg=body.cfg_scale,
            sampler=body.sampler,
            seed=seed,
            routing=body.routing,
            stopped=job.stopped,
        )

    job = state.engine.call_job(loop, work)
    rgbs, routing = await job_result(request, state.engine.submit(job))
    pngs = await asyncio.to_thread(lambda: [png_base64(rgb) for rgb in rgbs])
    extra = {"routing": routing} if body.routing else {}  # else no key, as OpenAI answers
    return ImagesResponse(
        created=int(time.time()),
        data=[ImageData(b64_json=png, revised_prompt=None) for png in pngs],
        **extra,
    )


def check_image_request(body: ImageGenerationRequest, state: ServeState) -> None:
    """400 for what this server cannot do: `url` responses, another size, too many images,
    an OpenAI option these models do not have."""
    option = body.unsupported_option()
    if option is not None:
        raise bad_request(f"{option}: not supported by this server", option, "unsupported_option")
    if body.response_format not in (None, "b64_json"):
        raise bad_request(
            f"response_format: only 'b64_json' is supported (the server keeps no files to "
            f"link to), got {body.response_format!r}",
            "response_format",
        )
    side = state.adapter.info.image_size
    if body.size not in (None, "auto", f"{side}x{side}"):
        raise bad_request(
            f"size: this model makes {side}x{side} images only, got {body.size!r}", "size"
        )
    cap = state.config.max_images_per_request
    if body.n > cap:
        raise bad_request(f"n: {body.n} exceeds this server's limit of {cap} images", "n")


def png_base64(rgb: np.ndarray) -> str:
    """Base64 of the PNG of an (H, W, 3) uint8 image (deterministic bytes)."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
