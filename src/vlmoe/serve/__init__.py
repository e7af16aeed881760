"""`vlmoe serve`: a trained model behind an OpenAI-compatible HTTP API and a web page that
shows which expert each image patch and text token went to.

    from vlmoe.serve import build_app
    app = build_app("runs/my-run")          # a FastAPI app; run it with uvicorn

`engine` holds the model, its queue and batching; `app` builds the app and its error handling;
`routes` the endpoints, one router per group (meta, chat, images, tasks), sharing `state` (the
HTTP limits and the checks every request goes through); `chat` turns chat requests into engine
jobs and their events into responses and server-sent events; `schemas` the request and
response bodies; `routing` the per-request routing records; `inputs` image decoding within
limits; `middleware` the body limit and access log; `server` runs an app on a background
thread; `static/index.html` is the web page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmoe.serve.app import ServeConfig, create_app
from vlmoe.serve.engine import Engine, EngineConfig, ModelAdapter
from vlmoe.serve.inputs import ImageLimits

__all__ = ["Engine", "EngineConfig", "ImageLimits", "ModelAdapter", "ServeConfig", "build_app"]


def build_app(
    path: str | Path,
    *,
    model_name: str | None = None,
    engine_config: EngineConfig | None = None,
    **serve_options: Any,
):
    """Load the model of a run / model / checkpoint directory and build its FastAPI app.
    `serve_options` are `ServeConfig` fields (api_key, max_body_bytes, images, ...)."""
    from vlmoe.recipes.run import load_trained, resolve_model_dir

    model, task = load_trained(path)
    name = model_name or _default_name(resolve_model_dir(path))
    engine = Engine(ModelAdapter(model, task), engine_config)
    return create_app(engine, ServeConfig(model_name=name, **serve_options))


def _default_name(directory: Path) -> str:
    """The run's name: `runs/cap/model` -> `cap`."""
    directory = directory.resolve()
    if directory.name == "model" or directory.parent.name == "checkpoints":
        parent = directory.parent if directory.name == "model" else directory.parent.parent
        return parent.name
    return directory.name
