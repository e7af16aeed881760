"""`vlmoe generate`: text from a decoder model after an image (captions, continuations)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vlmoe.cli.common import check_file, command_main
from vlmoe.cli.predict import IMAGE_SUFFIXES

HELP = "generate text from a decoder model given an image (and an optional prompt)"
DESCRIPTION = """\
Generate text with a decoder (MoE-LLaVA style) model: the image's tokens, then <bos> and the
optional --prompt, then up to --max-new-tokens tokens (greedy unless --temperature > 0),
using the KV cache.
"""
EPILOG = """\
examples:
  vlmoe generate runs/captioner --image scene.png
  vlmoe generate runs/captioner --image scene.png --prompt "a red" --temperature 0.8 --seed 1
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="run directory, model directory or checkpoint directory")
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--prompt", help="text to continue (default: start a caption)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from vlmoe.cli.common import CLIError
    from vlmoe.data.images import load_image
    from vlmoe.recipes.run import load_trained

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
