"""Peak memory and time of `inspect_model` as the input image grows (issue 19 #8).

Each size runs in a fresh process (peak RSS is per process), on a PNG written beforehand. The
reference row is the same command on a 256 x 256 image, measured in the same run: the ratio
column says how much a large input costs over a small one. The goal: under 1 GB peak RSS for any
accepted image (at most 64 megapixels, `vlmoe.data.images.DEFAULT_MAX_PIXELS`).

    PYTHONPATH=src python benchmarks/inspect_memory.py [--preset vit-debug-moe] [--sizes ...]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

_CHILD = """
import resource, sys, time
import torch
from vlmoe.models.registry import create_model
from vlmoe.tasks import TaskInfo, build_task, default_task
from vlmoe.viz.inspect import inspect_model
torch.manual_seed(0)
model = create_model(sys.argv[2])
vision = getattr(model.config, "vision", None) or model.config
arch = model.architecture
task = build_task(TaskInfo(default_task(arch).name, arch, vision.image_size, 16))
start = time.perf_counter()
inspect_model(model, task, sys.argv[1], None, sys.argv[3])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.perf_counter() - start)
"""


def write_image(path: Path, width: int, height: int) -> None:
    """A gradient-and-stripes PNG, written in strips of rows to keep this process small."""
    x = (np.arange(width) * 255 // max(1, width - 1)).astype(np.uint8)
    img = np.empty((height, width, 3), np.uint8)
    for y0 in range(0, height, 512):
        y = (np.arange(y0, min(height, y0 + 512)) * 255 // max(1, height - 1)).astype(np.uint8)
        img[y0 : y0 + 512, :, 0] = x[None]
        img[y0 : y0 + 512, :, 1] = y[:, None]
        img[y0 : y0 + 512, :, 2] = (x[None] // 64 + y[:, None] // 64) % 2 * 255
    Image.fromarray(img).save(path, compress_level=1)


def measure(path: Path, preset: str, out_dir: Path) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of one fresh process inspecting `path`."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), preset, str(out_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    rss, seconds = done.stdout.split()[-2:]
    return float(rss), float(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vit-debug-moe")
    parser.add_argument(
        "--sizes", nargs="+", default=["1000x1000", "3000x3000", "7999x8000"], help="WxH"
    )
    args = parser.parse_args(argv)
    print(f"CPU: {platform.processor() or platform.machine()}, {platform.platform()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        rows = []
        for size in ["256x256", *args.sizes]:
            w, h = (int(v) for v in size.lower().split("x"))
            path = tmp_dir / f"{size}.png"
            write_image(path, w, h)
            rss, seconds = measure(path, args.preset, tmp_dir / f"out-{size}")
            rows.append((size, rss, seconds))
            path.unlink()
    ref_rss = rows[0][1]
    print(f"\ninspect_model({args.preset}) peak RSS per input size (reference: 256x256)")
    print(f"{'image':>12} {'peak RSS MB':>12} {'x reference':>12} {'seconds':>9} {'< 1 GB':>7}")
    for size, rss, seconds in rows:
        ok = "yes" if rss < 1024 else "NO"
        print(f"{size:>12} {rss:>12.0f} {rss / ref_rss:>12.2f} {seconds:>9.1f} {ok:>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
