"""`vlmoe inspect`: which expert each image patch and text token went to, as PNG plots."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from vlmoe.cli.common import check_file, command_main
from vlmoe.cli.predict import IMAGE_SUFFIXES

HELP = "draw which expert each image patch and text token is routed to (PNG plots)"
DESCRIPTION = """\
Route one image (and optional text) through an MoE model and write, per MoE layer, the image
with every patch coloured by the expert it went to and the text tokens coloured the same way
(routing.png), this example's expert load per layer and modality (expert_load.png), and the
routing as numbers (routing.json). A decoder given no text captions the image first.
"""
EPILOG = """\
examples:
  vlmoe inspect runs/fusion --image scene.png --text "what colour is the star?"
  vlmoe inspect runs/captioner --image scene.png --out inspect/
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="run directory, model directory or checkpoint directory")
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--text", help="question, caption or prompt to route with the image")
    p.add_argument("--out", help="output folder (default: RUN/inspect)")


def run(args: argparse.Namespace) -> int:
    from vlmoe.data.images import load_image
    from vlmoe.recipes.run import load_trained, resolve_model_dir
    from vlmoe.viz.inspect import inspect_model

    check_file(args.image, "image", IMAGE_SUFFIXES)
    model, task = load_trained(args.model)
    image = load_image(args.image)
    model_dir = resolve_model_dir(args.model)
    out = (
        Path(args.out)
        if args.out
        else (Path(args.model) if Path(args.model) != model_dir else model_dir) / "inspect"
    )
    result = inspect_model(model, task, image, args.text, out)
    if result.caption:
        print(f"caption: {result.caption}")
    for path in result.paths():
        print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command_main("vlmoe inspect", DESCRIPTION, add_arguments, run, argv, EPILOG)
