"""The task endpoints, one JSON schema each, for what chat does not cover: labels, VQA
answers, text-image match scores, detected boxes, and any task's prediction (`/v1/predict`).
Each runs on the engine's worker (`call_result`): queued, timed out and cancelled like chat."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from vlmoe.serve.chat import call_result
from vlmoe.serve.errors import bad_request
from vlmoe.serve.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    DetectRequest,
    DetectResponse,
    MatchRequest,
    MatchResponse,
    PredictRequest,
    PredictResponse,
    Scored,
    VQARequest,
    VQAResponse,
)
from vlmoe.serve.state import State, authorize

router = APIRouter(dependencies=[Depends(authorize)])


@router.post("/v1/classify", response_model=ClassifyResponse)
async def classify(body: ClassifyRequest, request: Request, state: State) -> ClassifyResponse:
    state.check_model(body.model)
    state.check_endpoint("classify")
    rgb = await state.image(body.image)
    adapter = state.adapter

    def work():
        return adapter.predict(rgb, None, body.routing, top=body.top_k)

    p, routing = await call_result(state.engine, request, work)
    return ClassifyResponse(
        model=state.model_name,
        labels=[Scored(label=n, score=s) for n, s in p.scores],
        routing=routing,
    )


@router.post("/v1/vqa", response_model=VQAResponse)
async def vqa(body: VQARequest, request: Request, state: State) -> VQAResponse:
    state.check_model(body.model)
    state.check_endpoint("vqa")
    state.check_text(body.question, "question")
    rgb = await state.image(body.image)
    adapter = state.adapter

    def work():
        return adapter.predict(rgb, body.question, body.routing, top=body.top_k)

    p, routing = await call_result(state.engine, request, work)
    label = p.extra.get("label")
    return VQAResponse(
        model=state.model_name,
        answer=p.text,
        answers=[Scored(label=n, score=s) for n, s in p.scores],
        label=Scored(label=label[0], score=label[1]) if label else None,
        routing=routing,
    )


@router.post("/v1/match", response_model=MatchResponse)
async def match(body: MatchRequest, request: Request, state: State) -> MatchResponse:
    state.check_model(body.model)
    state.check_endpoint("match")
    for i, text in enumerate(body.texts):
        state.check_text(text, f"texts.{i}")
    rgbs = [await state.image(u, f"images.{i}") for i, u in enumerate(body.images)]
    adapter = state.adapter

    def work():
        probs, sims = adapter.match(rgbs, body.texts)
        routing = None
        if body.routing:  # the first image with the first text
            _, routing = adapter.predict(rgbs[0], None, True, candidates=body.texts[:1])
        return probs, sims, routing

    probs, sims, routing = await call_result(state.engine, request, work)
    return MatchResponse(
        model=state.model_name,
        scores=probs,
        similarities=sims,
        best=[max(range(len(row)), key=row.__getitem__) for row in probs],
        routing=routing,
    )


@router.post("/v1/detect", response_model=DetectResponse)
async def detect(body: DetectRequest, request: Request, state: State) -> DetectResponse:
    """Boxes of a detecting task (`Prediction.extra["boxes"]`), best first, in pixels of the
    input image and normalized to [0, 1]."""
    state.check_model(body.model)
    state.check_endpoint("detect")
    if body.text is not None:
        state.check_text(body.text, "text")
    rgb = await state.image(body.image)
    adapter = state.adapter

    def work():
        return adapter.predict(rgb, body.text, body.routing, threshold=body.score_threshold)

    p, routing = await call_result(state.engine, request, work)
    height, width = rgb.shape[:2]
    found = [b for b in p.extra.get("boxes", []) if b["score"] >= body.score_threshold]
    found = sorted(found, key=lambda b: -b["score"])[: body.max_detections]
    return DetectResponse(
        model=state.model_name,
        width=width,
        height=height,
        boxes=[detected_box(b, width, height) for b in found],
        routing=routing,
    )


def detected_box(found: dict[str, Any], width: int, height: int) -> dict[str, Any]:
    """A task's box (label, score, box in pixels) with the box also normalized to [0, 1]."""
    x0, y0, x1, y1 = (float(v) for v in found["box"])
    return {
        "label": str(found["label"]),
        "score": float(found["score"]),
        "box": [x0, y0, x1, y1],
        "box_normalized": [x0 / width, y0 / height, x1 / width, y1 / height],
    }


@router.post("/v1/predict", response_model=PredictResponse)
async def predict(body: PredictRequest, request: Request, state: State) -> PredictResponse:
    """Any task's prediction for one image (+ text), as the task's `predict` gives it."""
    state.check_model(body.model)
    state.check_endpoint("predict")
    if body.text is not None:
        state.check_text(body.text, "text")
    cap = state.engine.config.max_tokens
    if body.max_tokens is not None and body.max_tokens > cap:
        raise bad_request(
            f"max_tokens: {body.max_tokens} exceeds this server's limit of {cap}", "max_tokens"
        )
    rgb = await state.image(body.image)
    options: dict[str, Any] = {"top": body.top_k}
    if body.candidates:
        options["candidates"] = body.candidates
    if body.max_tokens is not None:
        options["max_new_tokens"] = body.max_tokens
    adapter = state.adapter

    def work():
        return adapter.predict(rgb, body.text, body.routing, **options)

    p, routing = await call_result(state.engine, request, work)
    return PredictResponse(
        model=state.model_name,
        kind=p.kind,
        text=p.text,
        scores=[Scored(label=n, score=s) for n, s in p.scores],
        extra=plain(p.extra),
        routing=routing,
    )


def plain(value: Any) -> Any:
    """JSON-ready copy of a task's `extra` (tuples, numpy arrays and tensors become lists)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value
