"""`vlmoe demo`: the guided tour. Dense vs MoE on scenes, MNIST, detection, or generation."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from vlmoe.cli.common import command_main

HELP = "train dense vs MoE models and write a report (start here; `demo mnist` for digits)"
DESCRIPTION = """\
vlmoe demo        trains four small models on a synthetic world of coloured shapes: a fusion
                  encoder answering questions and classifying scenes, and a decoder writing
                  captions, each dense and as a sparse MoE (8 experts, top-2) with the same
                  active parameters; evaluates them on held-out scenes; writes
                  runs/demo/report.md with the results table and plots. About 5-10 minutes on
                  2 CPU cores (--quick: about 2 minutes, too short to compare, checks that
                  everything works).
vlmoe demo mnist  a top-2-of-8 MoE digit classifier (a real router and balance loss) on the
                  MNIST 5k set, against the same model dense.
vlmoe demo detection
                  per-patch object detectors (dense and MoE backbone) on crowded scenes of 1-6
                  shapes; writes the COCO table (pycocotools) and boxes.png, the predicted
                  boxes and labels over held-out scenes, to runs/demo-detection/report.md.
                  About 5-10 minutes on 2 CPU cores (--quick: about 2-3 minutes).
vlmoe demo generation
                  a class-conditional diffusion transformer (rectified flow) generating
                  MNIST digits, dense vs DiT-MoE (shared expert + top-2 of 8) at equal active
                  parameters: writes samples.png (per digit, dense left, MoE right) and
                  report.md with judge accuracy and Fréchet distance. About 30 minutes on 2
                  idle CPU cores (--quick: 100 steps per model, a pipeline check; 12 minutes
                  on a 2-core CPU busy with other jobs).
"""
EPILOG = """\
examples:
  vlmoe demo --quick
  vlmoe demo
  vlmoe demo mnist
  vlmoe demo detection --quick
  vlmoe demo generation --quick
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "which",
        nargs="?",
        choices=["scenes", "mnist", "detection", "generation"],
        default="scenes",
        help="scenes (default), mnist, detection or generation",
    )
    p.add_argument("--quick", action="store_true", help="a ~2 minute version (pipeline check)")
    p.add_argument(
        "--out",
        help="output folder (default: runs/demo, runs/demo-mnist, runs/demo-detection, "
        "runs/demo-generation)",
    )
    p.add_argument(
        "--precision", choices=["fp32", "bf16"], default="fp32", help="fp32, or bf16 autocast"
    )
    p.add_argument(
        "--epochs", type=float, default=None, help="mnist: training epochs (default 12, quick 0.25)"
    )


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if args.which == "generation":
        from vlmoe.recipes.demos import generation

        out = args.out or "runs/demo-generation"
        recipe = generation.QUICK if args.quick else generation.RECIPE
        print(
            f"training a dense and an MoE diffusion transformer on MNIST digits "
            f"({recipe.steps} steps each), then generating and scoring digits ...",
            flush=True,
        )
        results = generation.run(out, quick=args.quick)
        print(generation.format_results(results))
        print(f"samples: {out}/samples.png, report: {out}/report.md")
        print(f"done in {time.perf_counter() - start:.0f}s")
        return 0
    if args.which == "mnist":
        from vlmoe.recipes.demos import mnist

        out = args.out or "runs/demo-mnist"
        epochs = args.epochs or (0.25 if args.quick else mnist.DEFAULT_EPOCHS)
        print(
            f"training the MoE digit classifier and its dense twin ({epochs:g} epochs each) ...",
            flush=True,
        )
        results = mnist.run(out, epochs=epochs)
        print(mnist.format_results(results))
        print(f"runs in {out}/ ({time.perf_counter() - start:.0f}s)")
        return 0
    if args.which == "detection":
        return _detection(args, start)
    from vlmoe.recipes.demos.scenes import run_demo

    out = args.out or "runs/demo"
    print(
        f"training 4 models on the scene world{' (quick)' if args.quick else ''}; "
        f"this takes about {'2' if args.quick else '5-10'} minutes on 2 CPU cores ...",
        flush=True,
    )
    from vlmoe.recipes.demos.scenes import ModelResult, results_table

    def on_done(r: ModelResult, seconds: float) -> None:
        shown = ", ".join(f"{k} {v:.3f}" for k, v in r.metrics.items())
        print(f"  [{seconds / 60:4.1f} min] {r.name} done: {shown}", flush=True)

    summary = run_demo(out, quick=args.quick, precision=args.precision, on_done=on_done)

    table = results_table({k: ModelResult(**v, eval={}) for k, v in summary["models"].items()})
    print(table)
    print(f"done in {summary['wall_seconds'] / 60:.1f} min. Report: {summary['report']}")
    return 0


def _detection(args: argparse.Namespace, start: float) -> int:
    from vlmoe.recipes.demos import detection
    from vlmoe.recipes.demos.scenes import ModelResult

    out = args.out or "runs/demo-detection"
    print(
        f"training 2 detectors (dense and MoE backbone){' (quick)' if args.quick else ''}; "
        f"this takes about {'2-3' if args.quick else '5-10'} minutes on 2 CPU cores ...",
        flush=True,
    )

    def on_done(r: ModelResult, seconds: float) -> None:
        shown = ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in r.metrics.items())
        print(f"  [{seconds / 60:4.1f} min] {r.name} done: {shown}", flush=True)

    summary = detection.run_demo(out, quick=args.quick, on_done=on_done)
    results = {k: ModelResult(**v) for k, v in summary["models"].items()}
    print(detection.coco_table(results))
    print(f"boxes over held-out scenes: {summary['picture']}")
    print(f"done in {(time.perf_counter() - start) / 60:.1f} min. Report: {summary['report']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command_main("vlmoe demo", DESCRIPTION, add_arguments, run, argv, EPILOG)
