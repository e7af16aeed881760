"""Class-conditional MNIST-5k generation with a diffusion transformer: dense vs MoE twins.

Trains each preset (default `dit-small`, `dit-small-moe`: equal active parameters) for several
seeds with the recipe of `vlmoe.recipes.demos.generation` (`vlmoe train --task
image-generation` on the 4,000 training digits, EMA weights), then generates 100 digits per
class from the EMA weights and scores them with a judge CNN trained on the same training digits:
conditional accuracy and Fréchet distance to the 1,000 held-out digits, next to the floor (real
training vs held-out) and the ceiling (noise). For MoE models it also measures where the
routers send patches while sampling: the normalized mutual information between expert and
noise level, patch position and class, and the busiest expert's share of the routed pairs.
Prints a table of mean ± std over seeds, training time and steps/s.

Resumable: each run writes OUT/<preset>-s<seed>/ (the `vlmoe train` run directory, its model
the EMA weights), then OUT/<preset>-s<seed>.json with its scores; a run with a result file is
skipped, one with a trained model is only scored. The judge is cached in OUT/judge.safetensors.

    OMP_NUM_THREADS=2 python benchmarks/imagegen_mnist.py --out runs/imagegen --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from vlmoe.eval.image_generation import reference_distances, routing_counts, routing_dependence
from vlmoe.io import write_json_atomic
from vlmoe.models import load_model
from vlmoe.nn.machine import this_cpu
from vlmoe.recipes.demos.generation import (
    RECIPE,
    get_judge,
    mnist_tensors,
    score,
    train_generator,
)
from vlmoe.viz.generation import save_image_grid

log = logging.getLogger("imagegen")


def routing_facts(model: torch.nn.Module, seed: int) -> dict[str, list[float]]:
    """Per MoE block, while sampling 10 digits of each class: NMI(expert; time / position /
    class) and the busiest expert's share of the routed (patch, expert) pairs."""
    labels = torch.arange(10).repeat_interleave(10)
    counts = routing_counts(model, labels, steps=RECIPE.sample_steps, seed=seed)
    dep = routing_dependence(counts)
    load_LE = counts["time_LTE"].sum(1)
    share = load_LE.max(1) / load_LE.sum(1)
    return {
        **{f"nmi_{k}": [round(float(x), 4) for x in v] for k, v in dep.items()},
        "max_expert_share": [round(float(x), 4) for x in share],
    }


def run_one(preset: str, seed: int, out: Path, judge, recipe, num: int) -> dict:
    run_dir = out / f"{preset}-s{seed}"
    facts_path = run_dir / "train_facts.json"
    if facts_path.is_file():  # trained before: score again
        model = load_model(run_dir / "model").eval()
        facts = json.loads(facts_path.read_text())
    else:
        model, facts = train_generator(preset, run_dir, recipe, seed)
        write_json_atomic(facts_path, facts)
    scores, images = score(model, judge, recipe, num)
    result = {"preset": preset, "seed": seed, **facts, **scores}
    if any(getattr(b, "is_moe", False) for b in model.blocks):
        result["routing"] = routing_facts(model, seed)
    per_class = images.unflatten(0, (10, num))
    k = min(10, num)
    save_image_grid(per_class[:, :k].flatten(0, 1), out / f"{preset}-s{seed}.png", nrow=k)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/imagegen")
    p.add_argument("--presets", nargs="+", default=["dit-small", "dit-small-moe"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=RECIPE.steps)
    p.add_argument("--num-per-class", type=int, default=100)
    p.add_argument("--sample-steps", type=int, default=RECIPE.sample_steps)
    p.add_argument("--cfg", type=float, default=RECIPE.cfg_scale)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = dataclasses.replace(
        RECIPE, steps=args.steps, sample_steps=args.sample_steps, cfg_scale=args.cfg
    )
    print(f"CPU: {this_cpu().describe()}, torch threads {torch.get_num_threads()}")
    print(f"recipe: {recipe}")
    judge, judge_acc = get_judge(out / "judge.safetensors")
    num = args.num_per_class * 10
    refs = reference_distances(judge, mnist_tensors("train")[0], mnist_tensors("test")[0], num)
    print(
        f"judge held-out accuracy {judge_acc:.4f}; FD floor {refs['fd_floor']:.2f}, "
        f"ceiling {refs['fd_ceiling']:.1f} (N={num})",
        flush=True,
    )
    rows: dict[str, list[dict]] = {}
    for seed in args.seeds:  # seed by seed, so that a cut run has both models of a seed
        for preset in args.presets:
            path = out / f"{preset}-s{seed}.json"
            if path.is_file():
                result = json.loads(path.read_text())
            else:
                result = run_one(preset, seed, out, judge, recipe, args.num_per_class)
                write_json_atomic(path, {**result, **refs, "judge_accuracy": judge_acc})
            log.info("%s s%d: %s", preset, seed, result)
            rows.setdefault(preset, []).append(result)
    print(format_table(rows, refs["fd_floor"]))
    print(
        f"\nfloor (real vs real) {refs['fd_floor']:.2f}, ceiling (noise) "
        f"{refs['fd_ceiling']:.1f}; seeds {args.seeds}, {recipe.steps} steps of batch "
        f"{recipe.batch_size}, sampled with {recipe.sample_steps} {recipe.sampler} steps, "
        f"guidance {recipe.cfg_scale}"
    )
    for preset, results in rows.items():
        routing = [r["routing"] for r in results if "routing" in r]
        if routing:
            print(f"\n{preset} routing while sampling (mean over seeds, per MoE block):")
            for key in ("nmi_time", "nmi_position", "nmi_class", "max_expert_share"):
                values = np.mean([r[key] for r in routing], axis=0)
                print(f"  {key:<17} " + " ".join(f"{v:.3f}" for v in values))
    return 0


def format_table(rows: dict[str, list[dict]], floor: float) -> str:
    lines = [
        "\n| model | active / total params | accuracy % | FD | FD / floor | train s | steps/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for preset, results in rows.items():
        acc = np.array([r["gen_accuracy"] for r in results]) * 100
        fd = np.array([r["gen_fd"] for r in results])
        r0 = results[0]
        lines.append(
            f"| {preset} | {r0['params_active'] / 1e6:.2f}M / {r0['params_total'] / 1e6:.2f}M "
            f"| {acc.mean():.1f} ± {acc.std():.1f} | {fd.mean():.1f} ± {fd.std():.1f} "
            f"| {fd.mean() / floor:.2f} | {np.mean([r['train_s'] for r in results]):.0f} "
            f"| {np.mean([r['steps_per_s'] for r in results]):.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
