"""Detection on multi-object scenes: train detectors, score them by COCO mAP on held-out scenes.

Scenes: the scene world with 1-6 objects per image, up to 30% of an object's box covered by
another (`ShapesConfig(max_objects=6, occlusion=0.3, large_objects="any")`), 64x64 pixels,
24 classes ("colour shape"); held-out scenes are the `test` split (another seed stream).
Models: `det-small` presets (ViT width 128, 4 blocks, 8x8 patches behind a conv stem) with the
per-patch head or the DETR-style set head (`--head set`), dense or MoE (E=8 top-2 in every other
block, equal active parameters); `--set` changes their config. Training uses
`vlmoe.train.Trainer` with the `det-small` recipe (`vlmoe.models.presets.RECIPES`: AdamW,
warm-up + cosine, the MoE balance losses at their defaults) and horizontal flips that move the
boxes; evaluation `vlmoe.eval.detection` (pycocotools).

    OMP_NUM_THREADS=1 python benchmarks/detection.py --preset det-small-moe det-small \
        --seeds 0 1 2

Each run writes its metrics, steps, training seconds (wall and CPU) and steps/s to its own JSON
file under `--out` (resumable: runs with a file are skipped) and prints one row; the end prints
the mean ± standard deviation over seeds of each configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from vlmoe.data.shapes import ShapesConfig
from vlmoe.data.shapes_data import ShapesDataset
from vlmoe.data.transforms import ImageTransform
from vlmoe.eval.detection import DetectionEvaluator
from vlmoe.models.presets import RECIPES
from vlmoe.models.registry import create_model
from vlmoe.nn.machine import this_cpu
from vlmoe.tasks import TaskDataset, TaskInfo, eval_loader
from vlmoe.tasks.detection import Detection
from vlmoe.train.checkpoint import write_json_atomic
from vlmoe.train.config import OptimizerConfig, RunConfig, ScheduleConfig, TrainConfig
from vlmoe.train.trainer import Trainer

RECIPE = RECIPES["det-small"]
SCENES = ShapesConfig(image_size=64, seed=0, **RECIPE.world)


def run_one(
    preset: str,
    head: str,
    seed: int,
    steps: int,
    num_train: int,
    num_eval: int,
    lr: float,
    batch_size: int,
    run_dir: Path,
    overrides: dict | None = None,
    save_model: bool = False,
) -> dict:
    torch.manual_seed(seed)
    model = create_model(preset, head=head, **(overrides or {}))
    names = SCENES.box_label_names
    task = Detection(TaskInfo("detection", "detection", 64, 0, list(names)))
    train_set = ShapesDataset(SCENES, "train", num_train)
    test_set = ShapesDataset(SCENES, "test", num_eval)
    flip = ImageTransform(None, hflip="swap_text")  # mirrors boxes with the pixels
    train = TaskDataset(train_set, task.examples(train_set, "train"), 64, flip.augment, seed)
    test = TaskDataset(test_set, task.examples(test_set, "eval"), 64)
    cfg = RunConfig(
        optim=OptimizerConfig(lr=lr, weight_decay=RECIPE.weight_decay),
        schedule=ScheduleConfig(
            warmup_steps=min(RECIPE.warmup_steps, steps // 10),
            min_lr_ratio=RECIPE.min_lr_ratio,
        ),
        train=TrainConfig(
            steps=steps,
            batch_size=batch_size,
            seed=seed,
            num_threads=1,
            progress="none",
            tensorboard="none",
            log_every=50,
        ),
    )
    trainer = Trainer(
        model,
        task.loss,
        train,
        task.collate,
        cfg,
        run_dir,
        arch="vit",
        eval_at_end=False,
    )
    t0, c0 = time.perf_counter(), time.process_time()
    result = trainer.fit()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if save_model:  # e.g. to start a grounding decoder's vision tower (benchmarks/grounding.py)
        model.save_pretrained(run_dir / "model")
    loader = eval_loader(test, task.collate, 64)
    t1 = time.perf_counter()
    metrics = DetectionEvaluator(loader, names).compute(model)
    total, active = model.num_parameters()
    return {
        "preset": preset,
        "head": head,
        "overrides": overrides or {},
        "seed": seed,
        "steps": steps,
        "num_train": num_train,
        "num_eval": num_eval,
        "lr": lr,
        "batch_size": batch_size,
        "train_seconds": seconds,
        "steps_per_s": steps / seconds,
        "train_cpu_seconds": cpu,  # one thread: about the wall time on an idle machine
        "eval_seconds": time.perf_counter() - t1,
        "final_loss": result.losses[-1],
        "params_total": total,
        "params_active": active,
        "metrics": metrics,
    }


def parse_override(kv: str) -> tuple[str, object]:
    key, sep, value = kv.partition("=")
    if not sep:
        raise SystemExit(f"--set {kv!r}: expected KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def run_file(out: Path, key: str) -> Path:
    return out / (key.replace("/", "_") + ".json")


def summary(out: Path) -> list[str]:
    """Mean and spread over seeds of every (preset, head, steps, lr, overrides) in `out`."""
    groups: dict[str, list[dict]] = {}
    for path in sorted(out.glob("*.json")):
        r = json.loads(path.read_text())
        tag = "".join(f" {k}={v}" for k, v in r.get("overrides", {}).items())
        name = f"{r['preset']} {r['head']} {r['steps']} steps lr {r['lr']}{tag}"
        groups.setdefault(name, []).append(r)
    lines = []
    for name, runs in groups.items():
        cells = []
        for stat in ("mAP", "mAP50", "mAP75", "AR100"):
            v = [r["metrics"][stat] for r in runs]
            cells.append(f"{stat} {statistics.mean(v):.3f}±{statistics.pstdev(v):.3f}")
        cpu = statistics.mean(r["train_cpu_seconds"] for r in runs) / 60
        lines.append(f"{name} ({len(runs)} seeds): {', '.join(cells)}; {cpu:.1f} min CPU")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", nargs="+", default=["det-small-moe"])
    p.add_argument("--head", default="patch", choices=["patch", "set"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=RECIPE.steps)
    p.add_argument("--num-train", type=int, default=RECIPE.num_train)
    p.add_argument("--num-eval", type=int, default=500)
    p.add_argument("--lr", type=float, default=RECIPE.lr)
    p.add_argument("--batch-size", type=int, default=RECIPE.batch_size)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model config override, e.g. backbone.patch_embed=linear (JSON values)",
    )
    p.add_argument("--out", default="benchmarks/results/detection", help="one JSON file a run")
    p.add_argument("--save-model", action="store_true", help="write WORK/<run>/model")
    p.add_argument("--work", default="runs/detection")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    out = Path(args.out)
    overrides = dict(parse_override(kv) for kv in args.set)
    tag = "".join(f"/{k}={v}" for k, v in overrides.items())
    print(f"CPU: {this_cpu().model}; torch threads 1")
    for preset in args.preset:
        for seed in args.seeds:
            key = f"{preset}/{args.head}/seed{seed}/steps{args.steps}/lr{args.lr}{tag}"
            path = run_file(out, key)
            if not path.exists():  # resumable: finished runs are skipped
                result = run_one(
                    preset,
                    args.head,
                    seed,
                    args.steps,
                    args.num_train,
                    args.num_eval,
                    args.lr,
                    args.batch_size,
                    Path(args.work) / key.replace("/", "-"),
                    overrides,
                    args.save_model,
                )
                out.mkdir(parents=True, exist_ok=True)
                write_json_atomic(path, result)
            r = json.loads(path.read_text())
            m = r["metrics"]
            print(
                f"{key}: mAP {m['mAP']:.3f} mAP50 {m['mAP50']:.3f} mAP75 {m['mAP75']:.3f} "
                f"AR100 {m['AR100']:.3f} train {r['train_seconds'] / 60:.1f} min wall, "
                f"{r['train_cpu_seconds'] / 60:.1f} min CPU"
            )
    print("\n".join(summary(out)))


if __name__ == "__main__":
    main()
