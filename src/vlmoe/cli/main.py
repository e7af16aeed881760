"""`vlmoe`: the command line. One subcommand a module; this file only dispatches.

Subcommand modules import torch and the library lazily, inside `run`, so `vlmoe --help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from vlmoe.cli.common import add_common_flags, run_guarded

# name -> module; order = order in --help
COMMANDS = {
    "demo": "vlmoe.cli.demo",
    "train": "vlmoe.cli.train",
    "eval": "vlmoe.cli.eval",
    "predict": "vlmoe.cli.predict",
    "generate": "vlmoe.cli.generate",
    "inspect": "vlmoe.cli.inspect",
    "upcycle": "vlmoe.cli.upcycle",
    "import": "vlmoe.cli.import_",
    "serve": "vlmoe.cli.serve",
    "data": "vlmoe.cli.data",
}

DESCRIPTION = """\
vlmoe: sparse Mixture-of-Experts (MoE) vision-language models in PyTorch.

In an MoE model, each feed-forward layer holds several "experts"; a router sends every image
patch and text token to a few of them (e.g. 2 of 8), so the model has many parameters but
each token only uses some. vlmoe builds, trains, evaluates and inspects such models on one CPU
or GPU.

Start here:
  vlmoe demo --quick        2-minute tour: dense vs MoE models on a synthetic scene world
  vlmoe demo                the full demo (~10 min on 2 CPU cores); writes runs/demo/report.md
  vlmoe demo mnist          a top-2-of-8 MoE digit classifier on MNIST, vs its dense twin
"""

EPILOG = """\
examples:
  vlmoe train --preset fusion-debug --data shapes --out runs/my-run
  vlmoe train my.yaml --set train.steps=500 --set optim.lr=3e-4
  vlmoe train --data jsonl --data-path train.jsonl --task classification --out runs/mine
  vlmoe eval runs/my-run
  vlmoe predict runs/my-run --image cat.png --question "what colour is the cat?"
  vlmoe generate runs/captioner --image scene.png
  vlmoe inspect runs/my-run --image scene.png --text "a red circle"
  vlmoe upcycle runs/dense-run runs/moe-init --num-experts 8 --top-k 2
  vlmoe data shapes data/shapes --num 200
  vlmoe serve runs/my-run --port 8000

Run `vlmoe COMMAND --help` for the options of one command.
"""


def _module(name: str):
    return importlib.import_module(COMMANDS[name])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlmoe",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in COMMANDS:
        mod = _module(name)
        p = sub.add_parser(
            name,
            help=mod.HELP,
            description=mod.DESCRIPTION,
            epilog=getattr(mod, "EPILOG", None),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        add_common_flags(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `vlmoe` console script; returns the exit code."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if args.version:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"vlmoe {version('vlmoe')}")
        except PackageNotFoundError:
            print("vlmoe (not installed)")
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    return run_guarded(args._run, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
