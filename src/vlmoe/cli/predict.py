"""`vlmoe predict`: one image (+ optional question / texts) -> label, answer, caption or match."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vlmoe.cli.common import check_file, command_main

HELP = "run a trained model on one image: label, answer to a question, caption, or text match"
DESCRIPTION = """\
Run a trained model on one image. What it prints depends on the model's task:
  classification       the top labels with probabilities
  VQA                  the answer to --question (the fusion model also gives its label)
  captioning           a generated caption
  contrastive          which of the --text options ("a|b|c") matches the image best
"""
EPILOG = """\
examples:
  vlmoe predict runs/fusion --image scene.png
  vlmoe predict runs/fusion --image scene.png --question "what colour is the circle?"
  vlmoe predict runs/clip --image scene.png --text "a red circle|a blue square"
"""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="run directory, model directory or checkpoint directory")
    p.add_argument("--image", required=True, help="image file (png, jpg, ...)")
    p.add_argument(
        "--question",
        "--text",
        dest="text",
        help="question (VQA), prompt, or texts to match ('a|b|c')",
    )
    p.add_argument("--top", type=int, default=3, help="how many candidates to show")


def run(args: argparse.Namespace) -> int:
    from vlmoe.data.images import load_image
    from vlmoe.recipes.run import load_trained

    check_file(args.image, "image", IMAGE_SUFFIXES)
    model, task = load_trained(args.model)
    image = load_image(args.image)
    candidates = (
        [t.strip() for t in args.text.split("|")] if args.text and "|" in args.text else None
    )
    p = task.predict(model, image, args.text, candidates=candidates, top=args.top)
    print(f"{p.kind}: {p.text}")
    if len(p.scores) > 1:
        for name, score in p.scores:
            print(f"  {score:6.1%}  {name}")
    if "label" in p.extra:
        name, score = p.extra["label"]
        print(f"label: {name} ({score:.1%})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command_main("vlmoe predict", DESCRIPTION, add_arguments, run, argv, EPILOG)
