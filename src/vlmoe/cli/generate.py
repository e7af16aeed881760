"""`vlmoe generate`: text from a decoder model after an image (captions, continuations), or
images from a diffusion transformer for a class label or a caption (a PNG grid)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vlmoe.cli.common import check_file, command_main
from vlmoe.cli.predict import IMAGE_SUFFIXES

HELP = "generate text from a decoder given an image, or images from a diffusion transformer"
DESCRIPTION = """\
Generate text with a decoder (MoE-LLaVA style) model: the image's tokens, then <bos> and the
optional --prompt, then up to --max-new-tokens tokens (greedy unless --temperature > 0),
using the KV cache.

Generate images with a diffusion transformer (DiT): --num images of class --label or of the
caption --prompt, sampled from noise in --steps steps (Euler or Heun) with classifier-free
guidance --cfg, written as one PNG grid to --out.
"""
EPILOG = """\
examples:
  vlmoe generate runs/captioner --image scene.png
  vlmoe generate runs/captioner --image scene.png --prompt "a red" --temperature 0.8 --seed 1
  vlmoe generate runs/digits --label 7 --num 16 --steps 30 --cfg 3 --out grid.png
  vlmoe generate runs/scenes --prompt "a red circle" --num 16 --steps 30 --cfg 3 --out grid.png
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="run directory, model directory or checkpoint directory")
    p.add_argument("--image", help="image file (decoder models)")
    p.add_argument(
        "--prompt", help="decoder: text to continue (default: start a caption); DiT: the caption"
    )
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    images = p.add_argument_group("image generation (diffusion transformer models)")
    images.add_argument("--label", type=int, help="class id to generate")
    images.add_argument("--num", type=int, default=16, help="number of images (default 16)")
    same = "default: the run's own (its config.yaml flow settings)"
    images.add_argument("--steps", type=int, help=f"sampling steps ({same})")
    images.add_argument("--cfg", type=float, help=f"guidance scale, 1 = none ({same})")
    images.add_argument("--sampler", choices=["euler", "heun"], help=same)
    images.add_argument("--out", default="grid.png", help="PNG grid to write (default grid.png)")


def run_images(args: argparse.Namespace, directory) -> int:
    """Sample a grid of images from a DiT model directory."""
    import math

    from tqdm.auto import tqdm

    from vlmoe.cli.common import CLIError
    from vlmoe.models.flow import generate_images, generation_conditions
    from vlmoe.recipes.run import load_trained
    from vlmoe.viz.generation import save_image_grid

    for name, low in (("num", 1), ("steps", 1)):
        if getattr(args, name) is not None and getattr(args, name) < low:
            raise CLIError(f"--{name} must be >= {low}, got {getattr(args, name)}")
    if args.cfg is not None and args.cfg < 0:
        raise CLIError(f"--cfg must be >= 0, got {args.cfg}")
    if not args.out.lower().endswith(".png"):
        raise CLIError(f"--out must name a .png file, got {args.out!r}")
    model, task = load_trained(directory)  # a checkpoint's EMA weights when the run kept them
    steps = task.flow.steps if args.steps is None else args.steps
    cfg_scale = task.flow.cfg_scale if args.cfg is None else args.cfg
    sampler = args.sampler or task.flow.sampler
    if model.config.num_classes and args.label is None:
        raise CLIError(
            f"this model generates classes 0..{model.config.num_classes - 1}: pass --label"
        )
    if model.config.text is not None and args.prompt is None:
        raise CLIError("this model generates from captions: pass --prompt")
    try:  # checks the label / prompt before any sampling starts
        generation_conditions(
            model, 1, label=args.label, prompt=args.prompt, tokenizer=model.tokenizer
        )
    except ValueError as e:
        raise CLIError(str(e)) from None
    bar = tqdm(total=steps, desc="sampling", unit="step", disable=args.quiet)

    def progress(step: int, total: int) -> None:
        bar.update(1)

    with bar:
        images = generate_images(
            model,
            args.num,
            label=args.label,
            prompt=args.prompt,
            tokenizer=model.tokenizer,
            steps=steps,
            sampler=sampler,
            cfg_scale=cfg_scale,
            seed=args.seed,
            progress=progress,
        )
    path = save_image_grid(images, args.out, nrow=math.ceil(math.sqrt(args.num)))
    print(f"wrote {args.num} images to {path} ({steps} {sampler} steps, guidance {cfg_scale:g})")
    return 0


def run(args: argparse.Namespace) -> int:
    from vlmoe.cli.common import CLIError
    from vlmoe.data.images import load_image
    from vlmoe.models.checkpoint import read_config
    from vlmoe.recipes.run import load_trained, resolve_model_dir

    directory = resolve_model_dir(args.model)
    if read_config(directory)[0] == "dit":
        return run_images(args, directory)
    if args.image is None:
        raise CLIError("--image is required for a decoder model (the image to describe)")
    check_file(args.image, "image", IMAGE_SUFFIXES)
    if args.max_new_tokens < 1:
        raise CLIError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise CLIError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    model, task = load_trained(args.model)
    if not hasattr(task, "generate"):
        raise CLIError(
            f"{args.model} holds a {task.info.architecture} model for {task.name!r}, which does "
            "not generate text; use `vlmoe predict` (generation needs a decoder model)"
        )
    ids = task.generate(
        model,
        load_image(args.image),
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    print(task.tokenizer.decode(ids).strip())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command_main("vlmoe generate", DESCRIPTION, add_arguments, run, argv, EPILOG)
