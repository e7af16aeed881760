"""Request and response bodies of `vlmoe serve`, as pydantic models (FastAPI derives each
endpoint's JSON schema from them: `GET /openapi.json`).

Chat follows the OpenAI Chat Completions format that vLLM and SGLang serve: a message's content
is a string or a list of `text` and `image_url` parts. `routing` (on every endpoint) is a vlmoe
extension: when true, the response carries, for each MoE layer, the experts each image patch
and text token went to (`vlmoe.serve.routing`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# ----------------------------------------------------------------------------- chat requests


class ImageURL(BaseModel):
    url: str = Field(description="a data:image/...;base64 URL (or http(s) when allowed)")
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


# Chat options these models cannot honour: refused rather than silently ignored.
UNSUPPORTED_CHAT_FIELDS = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "logit_bias",
    "top_logprobs",
    "audio",
    "prediction",
)


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # checked by `unsupported_option`

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1, description="only one choice per request")
    routing: bool = Field(default=False, description="vlmoe: include the MoE routing")
    ignore_eos: bool = Field(
        default=False, description="as in vLLM: generate max_tokens even past <eos> (benchmarks)"
    )

    def unsupported_option(self) -> str | None:
        """The name of a requested option this server cannot honour, if any."""
        extra = self.model_extra or {}
        for name in UNSUPPORTED_CHAT_FIELDS:
            if extra.get(name) not in (None, [], {}):
                return name
        if extra.get("logprobs"):
            return "logprobs"
        for name in ("frequency_penalty", "presence_penalty"):
            if extra.get(name) not in (None, 0, 0.0):
                return name
        fmt = extra.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
            return "response_format"
        return None


# ----------------------------------------------------------------------------- chat responses


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    routing: list[dict[str, Any]] | None = None


# ----------------------------------------------------------------------------- task endpoints


class Scored(BaseModel):
    label: str
    score: float


class ClassifyRequest(BaseModel):
    model: str | None = None
    image: str = Field(description="a data:image/...;base64 URL (or http(s) when allowed)")
    top_k: int = Field(default=5, ge=1, le=1000)
    routing: bool = False


class ClassifyResponse(BaseModel):
    model: str
    labels: list[Scored]
    routing: list[dict[str, Any]] | None = None


class VQARequest(BaseModel):
    model: str | None = None
    image: str
    question: str = Field(min_length=1)
    top_k: int = Field(default=5, ge=1, le=1000)
    routing: bool = False


class VQAResponse(BaseModel):
    model: str
    answer: str
    answers: list[Scored]
    label: Scored | None = Field(
        default=None, description="the scene label, when the model has one"
    )
    routing: list[dict[str, Any]] | None = None


class MatchRequest(BaseModel):
    model: str | None = None
    images: list[str] = Field(min_length=1, max_length=64)
    texts: list[str] = Field(min_length=1, max_length=256)
    routing: bool = Field(default=False, description="routing of the first image and text")


class MatchResponse(BaseModel):
    model: str
    scores: list[list[float]] = Field(
        description="per image, the probability of each text (softmax over the texts)"
    )
    similarities: list[list[float]] = Field(description="cosine similarity of each pair")
    best: list[int] = Field(description="per image, the index of the best text")
    routing: list[dict[str, Any]] | None = None


class DetectRequest(BaseModel):
    model: str | None = None
    image: str = Field(description="a data:image/...;base64 URL (or http(s) when allowed)")
    text: str | None = Field(
        default=None, description="what to find, for a grounding model (e.g. 'the red circle')"
    )
    score_threshold: float = Field(
        default=0.3,
        ge=0.0,
        le=1.0,
        description="the lowest score of a box returned (the model's own floor still applies)",
    )
    max_detections: int = Field(default=100, ge=1, le=1000, description="the most boxes returned")
    routing: bool = False


class DetectedBox(BaseModel):
    label: str
    score: float
    box: list[float] = Field(description="[x0, y0, x1, y1] in pixels of the input image")
    box_normalized: list[float] = Field(description="[x0, y0, x1, y1] divided by width, height")


class DetectResponse(BaseModel):
    model: str
    width: int = Field(description="the input image's width in pixels")
    height: int = Field(description="the input image's height in pixels")
    boxes: list[DetectedBox] = Field(description="best first")
    routing: list[dict[str, Any]] | None = None


class PredictRequest(BaseModel):
    model: str | None = None
    image: str
    text: str | None = Field(default=None, description="a question, prompt or text to match")
    candidates: list[str] | None = Field(default=None, max_length=256)
    top_k: int = Field(default=5, ge=1, le=1000)
    max_tokens: int | None = Field(default=None, ge=1, description="for a generating task")
    routing: bool = False


class PredictResponse(BaseModel):
    model: str
    kind: str = Field(description="what `text` is: label, answer, caption, match, ...")
    text: str
    scores: list[Scored]
    extra: dict[str, Any] = Field(description="the task's secondary results (e.g. boxes)")
    routing: list[dict[str, Any]] | None = None


# ----------------------------------------------------------------------------- images

# OpenAI Images options these models cannot honour (with the values that mean "as usual").
UNSUPPORTED_IMAGE_FIELDS: dict[str, tuple[Any, ...]] = {
    "quality": (None, "auto", "standard"),
    "style": (None,),
    "background": (None, "auto"),
    "output_format": (None, "png"),
    "output_compression": (None,),
    "moderation": (None, "auto", "low"),
    "partial_images": (None, 0),
    "stream": (None, False),
}


class ImageGenerationRequest(BaseModel):
    """OpenAI's `POST /v1/images/generations` body, plus vlmoe's sampling fields."""

    model_config = ConfigDict(extra="allow")  # checked by `unsupported_option`

    model: str | None = None
    prompt: str = Field(
        min_length=1, description="the caption, or for a class-conditioned model a class name"
    )
    n: int = Field(default=1, ge=1, description="images to generate (capped by the server)")
    size: str | None = Field(default=None, description="'WxH' (the model's size) or 'auto'")
    response_format: str | None = Field(
        default=None, description="'b64_json' (the server keeps no files, so no 'url')"
    )
    user: str | None = None
    steps: int | None = Field(
        default=None, ge=1, le=1000, description="vlmoe: sampling steps (default: the model's)"
    )
    cfg_scale: float | None = Field(
        default=None,
        ge=0.0,
        le=50.0,
        description="vlmoe: classifier-free guidance, 1 = none (default: the model's)",
    )
    sampler: Literal["euler", "heun"] | None = Field(
        default=None, description="vlmoe: ODE solver (default: the model's)"
    )
    seed: int | None = Field(
        default=None, ge=0, lt=2**63, description="vlmoe: same seed, same images"
    )
    routing: bool = Field(default=False, description="vlmoe: the routing of the first image")

    def unsupported_option(self) -> str | None:
        """The name of a requested option this server cannot honour, if any."""
        extra = self.model_extra or {}
        for name, usual in UNSUPPORTED_IMAGE_FIELDS.items():
            if name in extra and extra[name] not in usual:
                return name
        return None


class ImageData(BaseModel):
    b64_json: str = Field(description="a PNG, base64-encoded")
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    routing: list[dict[str, Any]] | None = Field(
        default=None, description="vlmoe: present when asked for"
    )


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "vlmoe"
    task: str
    architecture: str
    endpoints: list[str]
    image_size: int | None = Field(default=None, description="the model's input / output side")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
