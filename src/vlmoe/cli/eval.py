"""`vlmoe eval`: evaluate a trained model on held-out data; writes eval.json."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from vlmoe.cli.common import command_main

HELP = "evaluate a trained model (accuracy, VQA, BLEU-4, retrieval, routing stats)"
DESCRIPTION = """\
Evaluate a run or model directory on held-out data and write eval.json: the task's metrics
(classification accuracy, VQA accuracy, captioning BLEU-4, retrieval recall@1/5/10) and, for
MoE models, routing statistics per layer and modality (tokens per expert, drop rate, router
entropy, dead experts). The data defaults to the held-out split of the run's own data.
"""
EPILOG = """\
examples:
  vlmoe eval runs/fusion
  vlmoe eval runs/mine/model --data jsonl --data-path test.jsonl --out runs/mine/test.json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="run directory, model directory or checkpoint directory")
    p.add_argument(
        "--data", help="shapes | mnist | digits | jsonl | folder | coco (default: the run's data)"
    )
    p.add_argument("--data-path", help="held-out manifest / folder / COCO json (all of it is used)")
    p.add_argument("--max-examples", type=int, help="evaluate on at most this many examples")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--out", help="where to write eval.json (default: RUN/eval.json or MODEL/eval.json)"
    )


def run(args: argparse.Namespace) -> int:
    from vlmoe.recipes.run import evaluate, prepare_eval, resolve_model_dir
    from vlmoe.train.config import DataSelection

    data = None
    if args.data or args.data_path:
        fields = {"name": args.data or "jsonl", "path": args.data_path}
        if args.data_path:  # a given file is all held-out: evaluate on all of it
            fields.update(eval_path=args.data_path)
        data = DataSelection.from_dict({k: v for k, v in fields.items() if v is not None})
    r = prepare_eval(args.model, data)
    model_dir = resolve_model_dir(args.model)
    out = (
        Path(args.out)
        if args.out
        else (Path(args.model) if Path(args.model) != model_dir else model_dir) / "eval.json"
    )
    results = evaluate(r, out, max_examples=args.max_examples, batch_size=args.batch_size)
    for key, value in results.items():
        if isinstance(value, int | float) and not key.endswith("/seconds") and key.count("/") <= 1:
            print(f"{key:<32} {value:.4f}" if isinstance(value, float) else f"{key:<32} {value}")
    print(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command_main("vlmoe eval", DESCRIPTION, add_arguments, run, argv, EPILOG)
