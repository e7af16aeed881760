"""`vlmoe data`: write a built-in dataset to disk as a JSONL manifest (or COCO) + PNG images."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vlmoe.cli.common import CLIError, command_main

HELP = "write a dataset to disk (scene world, MNIST, digits) as JSONL + PNG images, or COCO"
DESCRIPTION = """\
Write a built-in dataset to disk in the formats `vlmoe train --data jsonl|coco` reads, so you
can look at it, edit it, or use it as a template for your own data:
  OUT/manifest.jsonl   one JSON object a line: image, caption, question/answer, label, boxes
  OUT/images/*.png     the images
  OUT/labels.txt, answers.txt, box_labels.txt   name orders
"""
EPILOG = """\
examples:
  vlmoe data shapes data/shapes --num 500
  vlmoe data shapes data/shapes-test --num 100 --split test
  vlmoe data mnist data/mnist --split test
  vlmoe data shapes data/shapes-coco --num 100 --format coco
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=["shapes", "mnist", "digits"], help="which dataset")
    p.add_argument("out", help="output folder")
    p.add_argument(
        "--num", type=int, help="how many samples (default: shapes 200, digits: all of the split)"
    )
    p.add_argument(
        "--split", default=None, help="shapes: train|val|test; mnist/digits: train|test|all"
    )
    p.add_argument("--seed", type=int, default=0, help="scene world seed")
    p.add_argument("--image-size", type=int, default=64, help="scene world image side in pixels")
    p.add_argument("--format", choices=["jsonl", "coco"], default="jsonl")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.num is not None and args.num < 1:
        raise CLIError(f"--num must be >= 1, got {args.num}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"output {out} exists and is not a folder")
    if args.name == "shapes" and args.format == "jsonl":
        from vlmoe.data.shapes_data import cli_write

        try:
            report = cli_write(
                out,
                args.num or 200,
                seed=args.seed,
                split=args.split or "train",
                image_size=args.image_size,
            )
        except ValueError as e:
            raise CLIError(str(e)) from None
        print(f"wrote {report.num} samples to {report.manifest} in {report.seconds:.1f}s")
        return 0
    if args.name == "shapes":
        from vlmoe.data.shapes import ShapesConfig
        from vlmoe.data.shapes_data import ShapesDataset

        ds = ShapesDataset(
            ShapesConfig(image_size=args.image_size, seed=args.seed),
            args.split or "train",
            args.num or 200,
        )
    else:
        from vlmoe.data.real import DigitsDataset, MnistDataset

        split = args.split or "train"
        if split not in ("train", "test", "all"):
            raise CLIError(f"--split for {args.name} must be train, test or all, got {split!r}")
        ds = (MnistDataset if args.name == "mnist" else DigitsDataset)(split)
    n = min(args.num or len(ds), len(ds))
    samples = (ds.get(i) for i in range(n))
    if args.format == "coco":
        from vlmoe.data.coco import write_coco

        captions, instances = write_coco(samples, out, categories=ds.box_label_names or None)
        print(f"wrote {n} samples to {captions} and {instances}")
    else:
        from vlmoe.data.manifest import write_manifest

        path = write_manifest(
            samples, out, label_names=ds.label_names or None, answer_vocab=ds.answer_vocab
        )
        print(f"wrote {n} samples to {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command_main("vlmoe data", DESCRIPTION, add_arguments, run, argv, EPILOG)
