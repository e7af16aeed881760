"""The data path at scale: peak memory of training does not grow with the dataset, and how fast
scenes are made.

    .venv/bin/python benchmarks/data_pipeline.py            # 2,000 vs 20,000 images (~5 min)
    .venv/bin/python benchmarks/data_pipeline.py --quick    # 200 vs 2,000 (~1 min)

1. Writes two JSONL manifests of scene-world images (`vlmoe data shapes`), N and 10 N images of
   64x64 pixels, then trains `vit-debug-moe` for the same number of steps on each in a fresh
   process (`vlmoe train --data jsonl`) and reads that process's peak resident memory
   (`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`). Images are decoded per item in the
   DataLoader, so the difference should be the per-record metadata only (a few hundred bytes an
   image); the goal is < 150 MB between 2,000 and 20,000 images.
2. Times scene generation (`make_sample`, drawing included) and metadata-only description
   (`describe`, what tasks read to list examples).

Prints one table: peak RSS per size and the difference, then scenes/s.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vlmoe.data.shapes import ShapesConfig
from vlmoe.data.shapes_data import make_sample, write_shapes
from vlmoe.nn.machine import this_cpu


def peak_rss_mb(manifest: Path, steps: int, out: Path) -> float:
    """Peak RSS (MB) of a fresh `vlmoe train` process on `manifest`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    cmd = [
        sys.executable, "-m", "vlmoe", "train", "--preset", "vit-debug-moe", "--task",
        "classification", "--data", "jsonl", "--data-path", str(manifest), "--steps", str(steps),
        "--out", str(out), "--set", "data.eval_fraction=0.01", "--set", "train.batch_size=32",
        "--set", "eval.max_examples=64", "--set", "model.image_size=32", "-q",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of the children is the max over all of them: run the small set first.
    return max(after, before) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="200 vs 2,000 images")
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    n = 200 if args.quick else 2000
    cfg = ShapesConfig(image_size=64)
    print(f"CPU: {this_cpu().model}  python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for size in (n, 10 * n):
            t = time.perf_counter()
            report = write_shapes(Path(tmp) / f"data{size}", size, cfg=cfg)
            write_s = time.perf_counter() - t
            rss = peak_rss_mb(report.manifest, args.steps, Path(tmp) / f"run{size}")
            rows.append((size, write_s, rss))
        print(f"{'images':>8} {'write s':>9} {'peak RSS MB':>12}")
        for size, write_s, rss in rows:
            print(f"{size:>8} {write_s:>9.1f} {rss:>12.0f}")
        diff = rows[1][2] - rows[0][2]
        print(f"peak RSS difference, {10 * n} vs {n} images: {diff:.0f} MB (goal < 150 MB)")
    t = time.perf_counter()
    for i in range(300):
        make_sample(cfg, "train", i)
    drawn = 300 / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(300):
        make_sample(cfg, "train", i, draw=False)
    described = 300 / (time.perf_counter() - t)
    print(f"scenes/s: {drawn:.0f} drawn, {described:.0f} described (no image)")


if __name__ == "__main__":
    main()
