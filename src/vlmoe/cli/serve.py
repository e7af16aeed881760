"""`vlmoe serve`: a trained model behind an OpenAI-compatible HTTP API and a web page."""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Sequence

from vlmoe.cli.common import CLIError, command_main

HELP = "serve a model over HTTP: OpenAI-compatible chat API, task endpoints and a web page"
DESCRIPTION = """\
Serve a trained model over HTTP (one process, the model loaded once):
  GET  /                       a web page: drop an image, ask, watch the answer stream in and
                               see which expert each image patch and text token went to
  POST /v1/chat/completions    the OpenAI chat API (as vLLM and SGLang serve it): image_url
                               parts as data:image/png;base64 URLs, streaming, stop, max_tokens
  POST /v1/images/generations  the OpenAI images API for an image generation model (DiT):
                               PNGs as b64_json; steps, cfg_scale, sampler and seed too
  POST /v1/classify, /v1/vqa, /v1/match, /v1/detect
                               labels, VQA answers, text-image match scores, boxes (per the task)
  POST /v1/predict             any task's prediction (a task you registered, too)
  GET  /v1/models, /health, /docs (the JSON schemas)
Add "routing": true to any request to get, per MoE layer, the experts of every patch and token.
Requests wait in a bounded queue (429 with Retry-After when full); greedy chat requests that
wait together are batched.
"""
EPILOG = """\
examples:
  vlmoe serve runs/captioner                      # then open http://127.0.0.1:8000/
  vlmoe serve runs/fusion --port 8080 --api-key secret
  vlmoe serve runs/digits --max-images 16           # a DiT: POST /v1/images/generations
  VLMOE_API_KEY=secret vlmoe serve runs/fusion --host 0.0.0.0

  from openai import OpenAI
  client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="secret")
"""

API_KEY_ENV = "VLMOE_API_KEY"


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def _port(text: str) -> int:
    value = _positive(int)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be at most 65535, got {text}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="run directory, model directory or checkpoint directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' on /v1/* (default: ${API_KEY_ENV} if set)",
    )
    p.add_argument("--served-model-name", help="the model id clients send (default: run name)")
    p.add_argument(
        "--allow-remote-images",
        action="store_true",
        help="let requests give http(s) image URLs for the server to fetch (off by default)",
    )
    p.add_argument("--max-queue", type=_positive(int), default=64, help="waiting requests")
    p.add_argument("--max-batch", type=_positive(int), default=8, help="greedy chats per batch")
    p.add_argument("--timeout", type=_positive(float), default=60.0, help="seconds per request")
    p.add_argument("--max-tokens", type=_positive(int), default=256, help="cap on max_tokens")
    p.add_argument("--max-body-mb", type=_positive(float), default=32.0, help="request body")
    p.add_argument("--max-image-pixels", type=_positive(int), default=16_000_000, help="per image")
    p.add_argument(
        "--max-images", type=_positive(int), default=8, help="cap on n of an images request"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port_free(host: str, port: int) -> None:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise CLIError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None


def run(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from vlmoe.serve import EngineConfig, ImageLimits, build_app

    log = logging.getLogger("vlmoe.cli")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if not _is_loopback(args.host) and api_key is None:
        log.warning(
            "serving on %s without an API key: anyone who can reach it can use the model "
            "(set --api-key or $%s)",
            args.host,
            API_KEY_ENV,
        )
    _check_port_free(args.host, args.port)
    app = build_app(
        args.model,
        model_name=args.served_model_name,
        engine_config=EngineConfig(
            max_queue=args.max_queue,
            max_batch=args.max_batch,
            timeout_s=args.timeout,
            max_tokens=args.max_tokens,
        ),
        api_key=api_key,
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_images_per_request=args.max_images,
        images=ImageLimits(
            max_pixels=args.max_image_pixels,
            max_bytes=int(args.max_body_mb * 2**20),
            allow_remote=args.allow_remote_images,
        ),
    )
    if not args.quiet:
        logging.getLogger("vlmoe.serve.access").setLevel(logging.INFO)
    state = app.state.serve
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"serving {state.model_name!r} ({state.adapter.task_name}) at http://{shown}:{args.port}/"
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        access_log=False,  # vlmoe.serve.access logs one JSON line per request instead
        log_level="warning" if args.quiet else "info",
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command_main("vlmoe serve", DESCRIPTION, add_arguments, run, argv, EPILOG)
