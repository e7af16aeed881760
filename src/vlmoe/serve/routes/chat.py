"""`POST /v1/chat/completions`: the OpenAI Chat Completions API (as vLLM and SGLang serve it),
whole or streamed as server-sent events; the job logic is `vlmoe.serve.chat`."""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from vlmoe.serve.chat import chat_job, collect, stream_events
from vlmoe.serve.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    Usage,
)
from vlmoe.serve.state import State, authorize

router = APIRouter(dependencies=[Depends(authorize)])


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def chat(body: ChatCompletionRequest, request: Request, state: State):
    state.check_model(body.model)
    state.check_endpoint("chat")
    config, engine = state.config, state.engine
    job = await chat_job(engine, body, config.images, config.max_prompt_chars)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    engine.submit(job)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = stream_events(request, job, completion_id, state.model_name, include_usage)
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
    choice = ChatChoice(
        message=AssistantMessage(content=info["text"]), finish_reason=info["finish_reason"]
    )
    return ChatCompletion(
        id=completion_id,
        created=int(time.time()),
        model=state.model_name,
        choices=[choice],
        usage=usage,
        routing=info.get("routing"),
    )
