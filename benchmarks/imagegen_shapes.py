"""Caption-conditioned scene generation: does a text-to-image DiT draw the colour, the shape
and the place its caption asks for ("a large red circle at the top left")?

Trains each preset (default `dit-small-text-xattn`) with the recipe of
`vlmoe.recipes.demos.scene_generation` (`vlmoe train --task text-to-image` on one-object 32x32
scenes whose caption names the object's 3x3 grid cell), then generates one image for each
caption of the first `--num` held-out scenes and judges them with three CNNs trained on real
training scenes (colour, shape, position cell), each scored on real held-out scenes first.
Prints per-attribute accuracies (and colour+shape, all three) next to the judges' own, and
writes a grid: one row per caption, `--per-caption` samples each.

Resumable: OUT/judge-<attribute>.safetensors, OUT/<preset>-s<seed>/ (the run; its model is the
EMA weights), OUT/<preset>-s<seed>.json (the scores); a run with a result file is skipped, one
with a trained model is only scored.

    OMP_NUM_THREADS=1 python benchmarks/imagegen_shapes.py --out runs/imagegen-shapes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import torch

from vlmoe.io import write_json_atomic
from vlmoe.models.base import count_parameters
from vlmoe.nn.machine import this_cpu
from vlmoe.recipes.demos.scene_generation import (
    SCENE_RECIPE,
    caption_grid,
    get_scene_judges,
    scene_generation_config,
    score_scenes,
)
from vlmoe.recipes.run import load_trained, train
from vlmoe.viz.generation import save_image_grid

log = logging.getLogger("imagegen_shapes")

GRID_CAPTIONS = (
    "a large red circle at the top left",
    "a large blue square at the bottom right",
    "a large yellow triangle in the centre",
    "a large green star on the left",
    "a large purple circle at the top",
    "a large orange square on the right",
)


def train_one(preset: str, seed: int, run_dir: Path, recipe) -> dict:
    """Train (or find trained) `preset` into `run_dir`; the training facts."""
    facts_path = run_dir / "train_facts.json"
    if facts_path.is_file():
        return json.loads(facts_path.read_text())
    t0 = time.perf_counter()
    c0 = time.process_time()
    result = train(
        scene_generation_config(preset, recipe, seed), run_dir, overwrite=run_dir.exists()
    )
    wall = time.perf_counter() - t0
    model, _ = load_trained(run_dir / "model")
    total, active = count_parameters(model)
    facts = {
        "train_s": result.steps * recipe.batch_size / result.examples_per_s,
        "run_wall_s": wall,
        "run_cpu_s": time.process_time() - c0,
        "final_loss": sum(result.losses[-25:]) / len(result.losses[-25:]),
        "params_total": total,
        "params_active": active,
    }
    write_json_atomic(facts_path, facts)
    return facts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/imagegen-shapes")
    p.add_argument("--presets", nargs="+", default=["dit-small-text-xattn"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--steps", type=int, default=SCENE_RECIPE.steps)
    p.add_argument("--num", type=int, default=500, help="held-out captions to generate")
    p.add_argument("--per-caption", type=int, default=8, help="grid samples per caption")
    p.add_argument("--sample-steps", type=int, default=SCENE_RECIPE.sample_steps)
    p.add_argument("--cfg", type=float, default=SCENE_RECIPE.cfg_scale)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = dataclasses.replace(
        SCENE_RECIPE, steps=args.steps, sample_steps=args.sample_steps, cfg_scale=args.cfg
    )
    print(f"CPU: {this_cpu().describe()}, torch threads {torch.get_num_threads()}")
    print(f"recipe: {recipe}")
    judges, judge_acc = get_scene_judges(out)
    print(
        "judges on real held-out scenes: " + ", ".join(f"{k} {v:.4f}" for k, v in judge_acc.items())
    )
    rows = []
    for seed in args.seeds:
        for preset in args.presets:
            name = f"{preset}-s{seed}"
            path = out / f"{name}.json"
            if path.is_file():
                rows.append(json.loads(path.read_text()))
                continue
            facts = train_one(preset, seed, out / name, recipe)
            model, task = load_trained(out / name / "model")
            scores, _, _ = score_scenes(model, task.tokenizer, judges, args.num, recipe, seed)
            grid = caption_grid(
                model, task.tokenizer, list(GRID_CAPTIONS), args.per_caption, recipe, seed
            )
            save_image_grid(grid, out / f"{name}.png", nrow=args.per_caption)
            result = {
                "preset": preset,
                "seed": seed,
                "steps": recipe.steps,
                "num": args.num,
                **facts,
                **scores,
                "judge_accuracy": judge_acc,
                "grid_captions": list(GRID_CAPTIONS),
            }
            write_json_atomic(path, result)
            rows.append(result)
    print(
        "\n| model | seed | steps | colour % | shape % | position % | colour+shape % | all % "
        "| train s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['seed']} | {r['steps']} | {100 * r['colour']:.1f} "
            f"| {100 * r['shape']:.1f} | {100 * r['position']:.1f} "
            f"| {100 * r['colour+shape']:.1f} | {100 * r['all']:.1f} | {r['train_s']:.0f} |"
        )
    print(
        f"\n{args.num} held-out captions, one image each, {recipe.sample_steps} "
        f"{recipe.sampler} steps, guidance {recipe.cfg_scale}; grids: one row per caption of "
        + "; ".join(GRID_CAPTIONS)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
