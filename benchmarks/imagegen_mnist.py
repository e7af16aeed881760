"""Class-conditional MNIST-5k generation with a diffusion transformer: dense vs MoE twins.

Trains each preset (default `dit-small`, `dit-small-moe`) for a fixed number of steps with
rectified flow (`vlmoe.models.flow`) on the 4,000 training digits, for several seeds, then
generates 100 digits per class from the EMA weights and scores them with a judge CNN trained
on the same training digits (`vlmoe.eval.image_generation`): conditional accuracy and Fréchet
distance to the 1,000 held-out digits, next to the floor (real train vs held-out) and the
ceiling (noise). Prints a table of mean ± std over seeds and the training time of each run.

Resumable: each trained run writes OUT/<preset>-s<seed>/model (EMA weights) and train.json, and
is only evaluated again next time; each evaluated run writes result.json and is skipped;
the judge is cached in OUT/judge.safetensors.

    OMP_NUM_THREADS=1 python benchmarks/imagegen_mnist.py --out runs/imagegen --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vlmoe.data.real import MnistDataset
from vlmoe.eval.image_generation import (
    ClassConditionalEvaluator,
    judge_outputs,
    load_judge,
    reference_distances,
    save_judge,
    train_judge,
)
from vlmoe.models import count_parameters, load_model
from vlmoe.models.flow import FlowConfig, flow_loss
from vlmoe.models.registry import create_model
from vlmoe.moe.losses import load_balance_loss
from vlmoe.train.ema import EMA
from vlmoe.viz.generation import save_image_grid

log = logging.getLogger("imagegen")


def mnist_tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, 28, 28) pixels in [-1, 1], (N,) labels."""
    ds = MnistDataset(split)
    images = torch.from_numpy(ds.images).float().div(127.5).sub(1.0)[:, None]
    return images, torch.from_numpy(ds.labels)


def get_judge(out: Path, train, test, epochs: int) -> tuple:
    path = out / "judge.safetensors"
    if path.exists():
        judge = load_judge(path)
    else:
        t0 = time.perf_counter()
        judge = train_judge(*train, epochs=epochs)
        save_judge(judge, path)
        log.info("judge trained in %.0f s", time.perf_counter() - t0)
    _, preds = judge_outputs(judge, test[0])
    acc = float((preds == test[1]).float().mean())
    return judge, acc


def train_one(preset: str, seed: int, args, train) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = create_model(preset)
    flow = FlowConfig(cond_dropout=0.1, ema_decay=args.ema)
    ema = EMA(model, flow.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    warmup = 50

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    images, labels = train
    model.train()
    t0 = time.perf_counter()
    losses = []
    for step in range(args.steps):
        idx = torch.randint(0, len(images), (args.batch,), generator=g)
        out = flow_loss(model, images[idx], flow, labels=labels[idx], generator=g)
        balance = sum(
            (load_balance_loss(a) for a in out.moe_aux if a.router == "topk"),
            torch.zeros(()),
        )
        loss = out.loss + args.balance * balance
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update(model)
        losses.append(out.loss.item())
        if (step + 1) % 50 == 0:
            log.info(
                "%s s%d step %d/%d loss %.4f (%.0f s)",
                preset,
                seed,
                step + 1,
                args.steps,
                np.mean(losses[-50:]),
                time.perf_counter() - t0,
            )
    train_s = time.perf_counter() - t0
    total, active = count_parameters(model)
    return ema.model, {
        "train_s": train_s,
        "final_loss": float(np.mean(losses[-50:])),
        "params_total": total,
        "params_active": active,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/imagegen")
    p.add_argument("--presets", nargs="+", default=["dit-small", "dit-small-moe"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--balance", type=float, default=0.01)
    p.add_argument("--num-per-class", type=int, default=100)
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=2.0)
    p.add_argument("--judge-epochs", type=int, default=15)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"CPU: {platform.processor() or platform.machine()}, torch threads "
        f"{torch.get_num_threads()}"
    )
    train, test = mnist_tensors("train"), mnist_tensors("test")
    judge, judge_acc = get_judge(out, train, test, args.judge_epochs)
    num = args.num_per_class * 10
    refs = reference_distances(judge, train[0], test[0], num)
    print(
        f"judge held-out accuracy {judge_acc:.4f}; FD floor {refs['fd_floor']:.2f}, "
        f"ceiling {refs['fd_ceiling']:.1f} (N={num})",
        flush=True,
    )
    evaluator = ClassConditionalEvaluator(
        judge,
        test[0],
        num_per_class=args.num_per_class,
        steps=args.sample_steps,
        cfg_scale=args.cfg,
    )
    rows = {}
    for preset in args.presets:
        for seed in args.seeds:
            run_dir = out / f"{preset}-s{seed}"
            result_path = run_dir / "result.json"
            train_path = run_dir / "train.json"
            if result_path.exists():
                result = json.loads(result_path.read_text())
            else:
                if train_path.exists():  # trained before; evaluate again (e.g. a new judge)
                    model, result = (
                        load_model(run_dir / "model"),
                        json.loads(train_path.read_text()),
                    )
                else:
                    model, result = train_one(preset, seed, args, train)
                    model.save_pretrained(run_dir / "model")
                    train_path.write_text(json.dumps(result, indent=2))
                t0 = time.perf_counter()
                result.update(dict(evaluator.run(model)))
                result["sample_s"] = time.perf_counter() - t0
                result.update(refs, judge_accuracy=judge_acc)
                per_class = evaluator.last_images.unflatten(0, (10, args.num_per_class))
                k = min(10, args.num_per_class)  # one row per class
                save_image_grid(per_class[:, :k].flatten(0, 1), run_dir / "samples.png", nrow=k)
                result_path.write_text(json.dumps(result, indent=2))
            log.info("%s s%d: %s", preset, seed, result)
            rows.setdefault(preset, []).append(result)
    print("\n| model | active / total params | accuracy | FD | FD / floor | train s |")
    print("|---|---|---|---|---|---|")
    for preset, results in rows.items():
        acc = np.array([r["gen_accuracy"] for r in results]) * 100
        fd = np.array([r["gen_fd"] for r in results])
        ts = np.array([r["train_s"] for r in results])
        r0 = results[0]
        print(
            f"| {preset} | {r0['params_active'] / 1e6:.2f}M / {r0['params_total'] / 1e6:.2f}M "
            f"| {acc.mean():.1f}±{acc.std():.1f} | {fd.mean():.2f}±{fd.std():.2f} "
            f"| {fd.mean() / refs['fd_floor']:.2f} | {ts.mean():.0f} |"
        )
    print(
        f"\nfloor (real vs real) {refs['fd_floor']:.2f}, ceiling (noise) "
        f"{refs['fd_ceiling']:.1f}; {len(args.seeds)} seed(s), {args.steps} steps of "
        f"batch {args.batch}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
