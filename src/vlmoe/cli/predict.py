"""`vlmoe predict`: one image (+ optional question / texts) -> label, answer, caption or match."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from vlmoe.cli.common import check_file, command_main

HELP = "run a trained model on one image: label, answer to a question, caption, or text match"
DESCRIPTION = """\
Run a trained model on one image. What it prints depends on the model's task:
  classification       the top labels with probabilities
  VQA                  the answer to --question (the fusion model also gives its label)
  captioning           a generated caption
  contrastive          which of the --text options ("a|b|c") matches the image best
  detection            the boxes found, with labels and scores; writes --out (a PNG with the
                       boxes drawn over the image) and the same boxes as JSON beside it
  grounding            the box(es) of --text ("detect red circle", "the small square"), likewise
"""
EPILOG = """\
examples:
  vlmoe predict runs/fusion --image scene.png
  vlmoe predict runs/fusion --image scene.png --question "what colour is the circle?"
  vlmoe predict runs/clip --image scene.png --text "a red circle|a blue square"
  vlmoe predict runs/det --image scene.png --out boxes.png --threshold 0.3
  vlmoe predict runs/ground --image scene.png --text "the object left of the red circle"
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
    p.add_argument(
        "--out",
        default="prediction.png",
        help="boxes (detection, grounding): PNG to draw them on; a .json of them goes beside it",
    )
    p.add_argument(
        "--threshold", type=float, default=0.3, help="detection: lowest score of a box shown"
    )


def run(args: argparse.Namespace) -> int:
    from vlmoe.data.images import load_image
    from vlmoe.recipes.run import load_trained

    check_file(args.image, "image", IMAGE_SUFFIXES)
    model, task = load_trained(args.model)
    image = load_image(args.image)
    candidates = (
        [t.strip() for t in args.text.split("|")] if args.text and "|" in args.text else None
    )
    p = task.predict(
        model, image, args.text, candidates=candidates, top=args.top, threshold=args.threshold
    )
    print(f"{p.kind}: {p.text}")
    if "boxes" in p.extra:
        _write_boxes(image, p.extra["boxes"], Path(args.out))
    if len(p.scores) > 1:
        for name, score in p.scores:
            print(f"  {score:6.1%}  {name}")
    if "label" in p.extra:
        name, score = p.extra["label"]
        print(f"label: {name} ({score:.1%})")
    return 0


def _write_boxes(image, boxes: list[dict], out: Path) -> None:
    import json

    from vlmoe.viz.boxes import draw_boxes, save_image

    for b in boxes:
        x0, y0, x1, y1 = b["box"]
        print(f"  {b['label']:<24} {b['score']:.2f}  [{x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f}]")
    drawn = draw_boxes(
        image,
        [b["box"] for b in boxes],
        [b["label"] for b in boxes],
        [b["score"] for b in boxes],
    )
    save_image(drawn, out)
    json_path = out.with_suffix(".json")
    tmp = json_path.with_name(f".{json_path.name}.tmp")
    tmp.write_text(json.dumps({"boxes": boxes}, indent=2) + "\n", encoding="utf-8")
    tmp.replace(json_path)
    print(f"wrote {out} and {json_path}")


def main(argv: Sequence[str] | None = None) -> int:
    return command_main("vlmoe predict", DESCRIPTION, add_arguments, run, argv, EPILOG)
