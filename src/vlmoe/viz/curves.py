"""Training curves from `metrics.jsonl` files: several runs (dense vs MoE) on shared axes.

A metrics file holds one JSON object a line, each with a `step`, optionally a `split`
("train" | "eval", as `vlmoe.train` writes them) and any number of named numbers. A metric is
named `<split>/<key>` when the line has a split (`train/loss`, `eval/accuracy`), else `<key>`.
Lines that are not JSON objects are skipped with a warning, so a run killed mid-write still
plots.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from vlmoe.viz.common import new_figure, save_png

logger = logging.getLogger(__name__)

Series = dict[str, tuple[list[float], list[float]]]  # metric -> (steps, values)
# Metrics worth a panel by default: losses first, then task quality.
_DEFAULT_PATTERNS = (r"(^|/)loss$", r"acc", r"bleu", r"recall|r@", r"loss")
_SKIP = re.compile(r"lr|learning_rate|throughput|per_s|seconds|time|epoch|step|grad_norm")


def read_metrics(path: str | Path, step_key: str = "step") -> Series:
    """{metric: (steps, values)} from a metrics.jsonl (or a run directory holding one).

    Rows without `step_key` use their line index as the step.
    """
    series: Series = {}
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s:%d: not JSON, skipped", path, i + 1)
            continue
        if not isinstance(row, dict):
            continue
        step = row.get(step_key, i)
        split = row.get("split")
        prefix = f"{split}/" if isinstance(split, str) and split else ""
        for key, value in row.items():
            if key == step_key or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if not math.isfinite(value):
                continue
            steps, values = series.setdefault(prefix + key, ([], []))
            steps.append(float(step))
            values.append(float(value))
    return series


def default_metrics(runs: Mapping[str, Series], max_panels: int = 6) -> list[str]:
    """The panels worth drawing by default, in order.

    1. the task loss (`loss/task`, comparable between a dense run and an MoE run, whose total
       `loss` also holds the router losses), else the total loss;
    2. held-out quality: `<evaluator>/accuracy`, `zero_shot_accuracy`, `bleu4`, `mean_recall`
       (not their per-question-type breakdowns);
    3. training accuracy; then the load-balance loss.
    Anything else matching loss/accuracy/BLEU/recall fills the remaining panels.
    """
    keys = sorted({k for s in runs.values() for k in s if not _SKIP.search(k)})
    chosen: list[str] = []

    def take(pattern: str, first_only: bool = False) -> None:
        for k in keys:
            if re.search(pattern, k) and k not in chosen:
                chosen.append(k)
                if first_only:
                    return

    take(r"^(train/)?loss/task$", first_only=True)
    if not chosen:
        take(r"^(train/)?loss$", first_only=True)
    take(r"^(eval/)?[^/]+/(accuracy|zero_shot_accuracy|bleu4|mean_recall)$")
    take(r"^(eval/)?(accuracy|bleu4)$")
    take(r"^(train/)?(acc|accuracy)(/|$)")
    take(r"load_balance$")
    for pattern in _DEFAULT_PATTERNS:
        take(pattern)
    return chosen[:max_panels]


def plot_curves(
    runs: Mapping[str, str | Path | Series],
    out_path: str | Path,
    metrics: Sequence[str] | None = None,
    title: str | None = None,
    smooth: int = 1,
) -> Path:
    """One panel per metric, one line per run; a PNG at `out_path`.

    Args:
        runs: {label: metrics.jsonl path or already-read series}, e.g. {"dense": ..., "moe": ...}.
        metrics: which metrics to draw (default: the losses, accuracies, BLEU and recalls found).
        smooth: moving-average window in logged points (1 = raw).
    """
    series = {label: r if isinstance(r, dict) else read_metrics(r) for label, r in runs.items()}
    metrics = list(metrics) if metrics is not None else default_metrics(series)
    if not metrics:
        raise ValueError(f"plot_curves: no metrics to plot in runs {sorted(series)}")
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig = new_figure(4.2 * ncols, 3.2 * nrows + (0.4 if title else 0))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, metric in zip(axes, metrics):
        for label, s in series.items():
            if metric not in s:
                continue
            steps, values = s[metric]
            if smooth > 1:
                values = _moving_average(values, smooth)
            ax.plot(steps, values, label=label, marker="o" if len(steps) <= 20 else None, ms=3)
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.set_ylabel(_axis_label(metric))
        ax.grid(alpha=0.3)
        if "loss" in metric and _positive(series, metric):
            ax.set_yscale("log")
        if ax.has_data():
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return save_png(fig, out_path)


def _axis_label(metric: str) -> str:
    for word, label in (
        ("bleu", "BLEU-4"),
        ("recall", "recall"),
        ("r@", "recall"),
        ("acc", "accuracy"),
        ("loss", "loss"),
    ):
        if word in metric.rsplit("/", 1)[-1] or word in metric:
            return label
    return metric.rsplit("/", 1)[-1]


def _moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _positive(series: Mapping[str, Series], metric: str) -> bool:
    values = [v for s in series.values() if metric in s for v in s[metric][1]]
    return bool(values) and min(values) > 0 and max(values) / min(values) > 20
