"""`vlmoe train`: train a model from a preset or a YAML config, with --set overrides."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from vlmoe.cli.common import CLIError, command_main

HELP = "train a model (preset or YAML config) on the scene world, MNIST, or your own files"
DESCRIPTION = """\
Train a model and write a run directory: config.yaml, metrics.jsonl, checkpoints/,
eval.json and model/ (load it with `vlmoe predict`, `vlmoe eval`, `vlmoe inspect`).

The config is built from defaults, then CONFIG.yaml, then the flags below, then --set
overrides (any field: `--set optim.lr=3e-4`, `--set train.precision=bf16`,
`--set model.transformer.num_layers=6`). The resolved config is saved as config.yaml.
MoE balance losses are on by default (losses.load_balance=0.01, losses.z_loss=0.001).
A bad image or line in your data stops the run naming the file and line; with
`--set data.on_error=skip` bad samples are left out and counted instead. The scene world is
configured under data.shapes (`--set data.shapes.max_objects=6`), training augmentation under
data.augment (`--set data.augment.crop=keep_boxes`, `--set data.augment.hflip=swap_text`).
An --out that holds a run is never touched unless you pass --resume (continue it with its
saved config; only train.steps may grow) or --overwrite (delete it and start over).
"""
EPILOG = """\
examples:
  vlmoe train --preset fusion-debug-moe --steps 200 --out runs/fusion
  vlmoe train --preset vit-debug-moe --data mnist --out runs/mnist
  vlmoe train --preset fusion-debug --data jsonl --data-path my/train.jsonl --task classification
  vlmoe train runs/fusion/config.yaml --set train.steps=400 --out runs/fusion-long
  vlmoe train --out runs/fusion --resume          # continue from the latest checkpoint
  vlmoe train --preset fusion-debug-moe --nproc 2 --out runs/ep2   # 2 processes, experts split

Scale out: `--nproc N` starts torchrun's elastic agent, which runs N processes on this node
(gloo on CPU, nccl on GPUs); `torchrun --nproc-per-node N -m vlmoe train ...` does the same.
Experts are split over `--ep` ranks (default: all, when that divides the experts), the rest is
data parallel (`--dp ddp|fsdp`). train.batch_size is the global batch: each process takes its
share. Several nodes: the same command on each with `--nnodes M --rdzv-endpoint HOST:PORT`.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config", nargs="?", help="YAML run config (optional; see `vlmoe train --print-config`)"
    )
    p.add_argument("--preset", help="model preset, e.g. fusion-debug-moe (see --list-presets)")
    p.add_argument(
        "--init-from", metavar="MODEL_DIR", help="start from a saved model instead of a preset"
    )
    p.add_argument(
        "--task",
        help="classification | vqa | vqa+classification | captioning | contrastive | detection"
        " | grounding | image-generation | text-to-image (default: the model's own)",
    )
    p.add_argument("--data", help="shapes | mnist | digits | photos | jsonl | folder | coco")
    p.add_argument("--data-path", help="manifest / folder / COCO json for --data jsonl|folder|coco")
    p.add_argument(
        "--eval-path", help="held-out manifest/folder (default: hold out data.eval_fraction)"
    )
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"])
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field (repeatable)",
    )
    p.add_argument("--out", default=None, help="run directory (default: runs/<preset>)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its latest checkpoint, with its saved config "
        "(only train.steps may change, to train longer)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the run already in --out and start over (without it, an existing run is "
        "never touched)",
    )
    p.add_argument(
        "--print-config", action="store_true", help="print the resolved config as YAML and exit"
    )
    p.add_argument("--list-presets", action="store_true", help="list the model presets and exit")
    dist = p.add_argument_group("scale out (see the README's Scale out section)")
    dist.add_argument(
        "--nproc", type=int, default=None, help="processes on this node (torchrun's agent)"
    )
    dist.add_argument("--nnodes", type=int, default=1, help="nodes taking part (default 1)")
    dist.add_argument(
        "--rdzv-endpoint", metavar="HOST:PORT", help="c10d rendezvous for --nnodes > 1"
    )
    dist.add_argument("--ep", type=int, help="experts-parallel degree (parallel.ep)")
    dist.add_argument("--dp", choices=["ddp", "fsdp"], help="dense data parallel (parallel.dp)")


def build_config(args: argparse.Namespace):
    from vlmoe.train.config import RunConfig, apply_overrides

    if args.config:
        path = Path(args.config)
        if path.suffix.lower() not in (".yaml", ".yml", ".json"):
            raise CLIError(
                f"config {path}: expected a .yaml file, got {path.suffix or 'no extension'!r}"
            )
        cfg = RunConfig.from_yaml(path)
    elif args.resume and args.out and (Path(args.out) / "config.yaml").is_file():
        cfg = RunConfig.from_yaml(Path(args.out) / "config.yaml")
    else:
        cfg = RunConfig()
    flags = {
        "model.preset": args.preset,
        "model.init_from": args.init_from,
        "task": args.task,
        "data.name": args.data,
        "data.path": args.data_path,
        "data.eval_path": args.eval_path,
        "train.steps": args.steps,
        "train.batch_size": args.batch_size,
        "optim.lr": args.lr,
        "train.precision": args.precision,
        "parallel.ep": getattr(args, "ep", None),
        "parallel.dp": getattr(args, "dp", None),
    }
    given = {k: v for k, v in flags.items() if v is not None}
    # Flags are plain strings: keep them from being read as YAML (a path like "2024.jsonl").
    cfg = cfg.with_overrides(given) if given else cfg
    cfg = apply_overrides(cfg, args.overrides)
    data_set = (
        args.config
        or any(k.startswith("data.") for k in given)
        or any(o.strip().startswith("data.") for o in args.overrides)
    )
    if args.init_from and not data_set and not args.resume:
        # Fine-tuning a saved model: by default on the data its run was trained on.
        from vlmoe.recipes.run import data_of_run

        data = data_of_run(args.init_from)
        if data is not None:
            cfg = cfg.replace(data=data)
    return cfg


def run(args: argparse.Namespace) -> int:
    if args.list_presets:
        from vlmoe.models.registry import get_preset, list_presets

        for name in list_presets():
            print(f"{name:<24} {get_preset(name).description}")
        return 0
    cfg = build_config(args)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    from vlmoe.recipes.run import describe_run, start_run, train

    if args.resume and args.overwrite:
        raise CLIError("--resume and --overwrite contradict each other: choose one")
    out = Path(
        args.out
        or f"runs/{Path(cfg.model.init_from).name if cfg.model.init_from else cfg.model.preset}"
    )
    if (args.nproc or 1) > 1 or args.nnodes > 1:
        return _launch(args, cfg, out)
    # Under torchrun, rank 0 alone checks (and with --overwrite clears) the run directory,
    # prints and reports; every rank trains.
    rank0 = os.environ.get("RANK", "0") == "0"
    cfg, run = start_run(cfg, out, args.resume, args.overwrite, check_dir=rank0)
    if not rank0:
        train(cfg, out, resume=args.resume, run=run)
        return 0
    for line in describe_run(run, out):
        print(line, flush=True)
    result = train(cfg, out, resume=args.resume, run=run)
    speed = f"{result.seconds:.0f}s ({result.examples_per_s:.0f} examples/s)"
    window = result.losses[-min(10, len(result.losses)) :] or [float("nan")]
    print(
        f"trained to step {result.steps} in {speed}; loss at the last step "
        f"{result.losses[-1] if result.losses else float('nan'):.4f}, mean of the last "
        f"{len(window)} steps {sum(window) / len(window):.4f}"
    )
    for key, value in result.eval.items():
        if (
            isinstance(value, float)
            and not key.endswith("seconds")
            and "/" in key
            and key.count("/") == 1
        ):
            print(f"  {key}: {value:.4f}")
    print(f"model: {out / 'model'}")
    print(f"run:   {out}  (metrics.jsonl, eval.json, checkpoints/)")
    return 0


def _launch(args: argparse.Namespace, cfg, out: Path) -> int:
    """Run this training on --nproc processes through torchrun's elastic agent."""
    from vlmoe.distributed import DistributedError
    from vlmoe.distributed.launch import launch
    from vlmoe.models.checkpoint import write_text_atomic
    from vlmoe.recipes.run import check_run_dir

    if "WORLD_SIZE" in os.environ:
        raise CLIError("--nproc inside a torchrun worker: start either torchrun or --nproc")
    nproc = args.nproc or 1
    if cfg.train.batch_size % (nproc * args.nnodes):
        raise CLIError(
            f"train.batch_size={cfg.train.batch_size} does not split over "
            f"{nproc * args.nnodes} processes; use a multiple of {nproc * args.nnodes}"
        )
    # Checked (and with --overwrite cleared) once, here: the workers find it ready.
    check_run_dir(out, args.resume, args.overwrite)
    # Every worker reads the same resolved config.
    out.mkdir(parents=True, exist_ok=True)
    config = out / "launch.yaml"
    write_text_atomic(config, cfg.to_yaml())
    command = ["-m", "vlmoe", "train", str(config), "--out", str(out)]
    command += ["--resume"] if args.resume else []
    command += ["-v"] * args.verbose + (["-q"] if args.quiet else [])
    try:
        launch(
            command, nproc, args.nnodes, args.rdzv_endpoint, join_timeout_s=cfg.parallel.timeout_s
        )
    except DistributedError as e:
        world = nproc * args.nnodes
        raise CLIError(f"training on {world} processes stopped: {e}", code=1) from None
    print(f"trained on {nproc * args.nnodes} processes")
    print(f"model: {out / 'model'}")
    print(f"run:   {out}  (metrics.jsonl, eval.json, checkpoints/)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return command_main("vlmoe train", DESCRIPTION, add_arguments, run, argv, EPILOG)
