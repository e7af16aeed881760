"""`vlmoe upcycle`: turn a dense model into its MoE twin whose experts start as FFN copies."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from vlmoe.cli.common import CLIError, command_main

HELP = "turn a dense model into an MoE model (sparse upcycling: experts start as FFN copies)"
DESCRIPTION = """\
Sparse upcycling (Komatsuzaki et al. 2023; MoE-LLaVA): every chosen dense feed-forward layer
becomes an MoE layer of --num-experts copies of it plus a fresh router; every other weight is
copied. With top-k routing the new model starts out computing what the dense one did. Train it
further with `vlmoe train --init-from OUT` (e.g. MoE-LLaVA's stage III:
`--set "train.stages=[{name: moe, steps: 200, trainable: [moe]}]"`).
"""
EPILOG = """\
examples:
  vlmoe upcycle runs/fusion-dense runs/fusion-upcycled --num-experts 8 --top-k 2
  vlmoe upcycle runs/captioner runs/captioner-moe --towers text --moe-every 2
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dense", help="dense run / model / checkpoint directory")
    p.add_argument("out", help="output model directory")
    p.add_argument("--num-experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument(
        "--moe-every", type=int, help="MoE in every N-th block (default: the model's setting)"
    )
    p.add_argument("--towers", help="comma-separated towers to upcycle, e.g. text or vision,text")
    p.add_argument("--noise", type=float, default=0.0, help="relative noise on the expert copies")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="MoE layer options, e.g. --set router=expert_choice (fields of MoEConfig)",
    )


def run(args: argparse.Namespace) -> int:
    import shutil

    from vlmoe.config import MoEConfig
    from vlmoe.models import count_parameters, upcycle_model
    from vlmoe.recipes.run import load_trained, resolve_model_dir
    from vlmoe.tasks.base import TASK_FILE

    if args.num_experts < 1 or not 1 <= args.top_k <= args.num_experts:
        raise CLIError(
            f"need 1 <= --top-k <= --num-experts, got --top-k {args.top_k} "
            f"and --num-experts {args.num_experts}"
        )
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise CLIError(f"output directory {out} exists and is not empty")
    moe = MoEConfig(num_experts=args.num_experts, top_k=args.top_k).with_overrides(args.overrides)
    dense, task = load_trained(args.dense)
    tokenizer = task.tokenizer
    towers = [t.strip() for t in args.towers.split(",")] if args.towers else None
    model = upcycle_model(dense, moe, moe_every=args.moe_every, towers=towers, noise_std=args.noise)
    model.save_pretrained(out, tokenizer)
    task = resolve_model_dir(args.dense) / TASK_FILE
    if task.is_file():
        shutil.copyfile(task, out / TASK_FILE)
    (t0, a0), (t1, a1) = count_parameters(dense), count_parameters(model)
    print(f"dense:     {t0:>10,} parameters ({a0:,} active per token)")
    print(
        f"upcycled:  {t1:>10,} parameters ({a1:,} active per token), "
        f"{args.num_experts} experts, top-{args.top_k}"
    )
    print(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command_main("vlmoe upcycle", DESCRIPTION, add_arguments, run, argv, EPILOG)
