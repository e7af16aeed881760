"""The page, the health check and the model list."""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse

from vlmoe.serve.schemas import ModelCard, ModelList
from vlmoe.serve.state import State, authorize

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    html = resources.files("vlmoe.serve").joinpath("static/index.html").read_text("utf-8")
    return HTMLResponse(html, headers={"Cache-Control": "no-cache"})


@router.get("/health")
async def health(state: State) -> dict[str, Any]:
    engine = state.engine
    return {
        "status": "ok",
        "model": state.model_name,
        "queued": engine.queued,
        "batches_run": engine.batches_run,
        "largest_batch": engine.largest_batch,
        "jobs_stopped": engine.jobs_stopped,
    }


@router.get("/v1/models", response_model=ModelList, dependencies=[Depends(authorize)])
async def models(state: State) -> ModelList:
    adapter = state.adapter
    card = ModelCard(
        id=state.model_name,
        created=state.created,
        task=adapter.task_name,
        architecture=adapter.architecture,
        endpoints=list(adapter.endpoints),
        image_size=adapter.info.image_size or None,
    )
    return ModelList(data=[card])
