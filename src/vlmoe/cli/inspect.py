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

A diffusion transformer (DiT) needs no image: it samples --num images of every class in
--steps steps and writes where its MoE layers sent the patches by timestep, by position and by
class (routing_factors.png), with the normalized mutual information between expert and each
factor (routing_factors.json).
"""
EPILOG = """\
examples:
  vlmoe inspect runs/fusion --image scene.png --text "what colour is the star?"
  vlmoe inspect runs/captioner --image scene.png --out inspect/
  vlmoe inspect runs/digits-dit --num 8 --steps 20
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="run directory, model directory or checkpoint directory")
    p.add_argument("--image", help="image file (required except for diffusion transformers)")
    p.add_argument("--text", help="question, caption or prompt to route with the image")
    p.add_argument("--out", help="output folder (default: RUN/inspect)")
    p.add_argument("--num", type=int, default=8, help="DiT: images per class (default 8)")
    p.add_argument("--steps", type=int, default=20, help="DiT: sampling steps (default 20)")


def run_dit(args: argparse.Namespace, directory: Path, out: Path) -> int:
    """Routing of a class-conditional DiT's patches vs timestep, position and class."""
    import json

    import torch

    from vlmoe.cli.common import CLIError
    from vlmoe.eval.image_generation import routing_counts, routing_dependence
    from vlmoe.models.checkpoint import write_text_atomic
    from vlmoe.recipes.run import load_trained
    from vlmoe.viz.generation import plot_routing_factors

    if args.num < 1 or args.steps < 1:
        raise CLIError(f"--num and --steps must be >= 1, got {args.num} and {args.steps}")
    model, _ = load_trained(directory)  # a checkpoint's EMA weights when the run kept them
    if model.num_moe_blocks() == 0:
        raise CLIError(f"{directory}: a dense DiT has no routing to inspect")
    if not model.config.num_classes:
        raise CLIError(f"{directory}: routing inspection needs a class-conditional DiT")
    labels = torch.arange(model.config.num_classes).repeat_interleave(args.num)
    counts = routing_counts(model, labels, steps=args.steps)
    dependence = routing_dependence(counts)
    out.mkdir(parents=True, exist_ok=True)
    png = plot_routing_factors(
        counts, counts["times_T"], model.config.grid_size, out / "routing_factors.png", dependence
    )
    data = {k: v.tolist() for k, v in counts.items()}
    data["nmi"] = {k: v.tolist() for k, v in dependence.items()}
    write_text_atomic(out / "routing_factors.json", json.dumps(data))
    for factor, values in dependence.items():
        print(f"NMI(expert; {factor}) per MoE layer: " + " ".join(f"{v:.3f}" for v in values))
    print(f"wrote {png}")
    print(f"wrote {out / 'routing_factors.json'}")
    return 0


def run(args: argparse.Namespace) -> int:
    from vlmoe.cli.common import CLIError
    from vlmoe.data.images import load_image
    from vlmoe.models.checkpoint import read_config
    from vlmoe.recipes.run import load_trained, resolve_model_dir
    from vlmoe.viz.inspect import inspect_model

    model_dir = resolve_model_dir(args.model)
    out = (
        Path(args.out)
        if args.out
        else (Path(args.model) if Path(args.model) != model_dir else model_dir) / "inspect"
    )
    if read_config(model_dir)[0] == "dit":
        return run_dit(args, model_dir, out)
    if args.image is None:
        raise CLIError("--image is required (the image to route through the model)")
    check_file(args.image, "image", IMAGE_SUFFIXES)
    model, task = load_trained(args.model)
    image = load_image(args.image)
    result = inspect_model(model, task, image, args.text, out)
    if result.caption:
        print(f"caption: {result.caption}")
    for path in result.paths():
        print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command_main("vlmoe inspect", DESCRIPTION, add_arguments, run, argv, EPILOG)
