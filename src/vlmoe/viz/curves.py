"""Training curves from `metrics.jsonl` files: several runs (dense vs MoE) on shared axes.

Panels carry readable titles (`metric_title`: `train/loss/vqa` -> "VQA loss (train)"), the grid
has no empty cells (the last row's panels widen), and by default the MoE curves the trainer logs
(aux losses, effective top-k, load imbalance) get panels of their own.

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
_BREAKDOWN = re.compile(r"^(eval/)?[^/]+/accuracy/")
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


Panel = str | tuple[str, ...]  # one metric, or several drawn together in one panel


def default_metrics(runs: Mapping[str, Series], max_panels: int = 12) -> list[Panel]:
    """The panels worth drawing by default, in order.

    1. the task loss (`loss/task`, comparable between a dense run and an MoE run, whose total
       `loss` also holds the router losses), else the total loss;
    2. held-out quality: `<evaluator>/accuracy`, `zero_shot_accuracy`, `bleu4`, `mean_recall`
       (not their per-question-type breakdowns);
    3. training accuracy;
    4. the MoE curves, when logged: load-balance loss, router z-loss, effective top-k (experts a
       token really uses), load imbalance (max / mean expert load), and the entropy losses
       together in one panel.
    Anything else matching loss/accuracy/BLEU/recall fills the remaining panels.
    """
    keys = sorted({k for s in runs.values() for k in s if not _SKIP.search(k)})
    chosen: list[Panel] = []

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
    take(r"(^|/)loss/moe/z_loss$")
    take(r"(^|/)moe/effective_top_k$")
    take(r"(^|/)moe/max_load_ratio$")
    entropy = tuple(k for k in keys if re.search(r"(^|/)loss/moe/\w+_entropy(/|$)", k))
    if entropy:
        chosen.append(entropy)
    grouped = set(entropy)
    keys = [k for k in keys if not _BREAKDOWN.search(k)]  # per-question-type: eval.json has them
    for pattern in _DEFAULT_PATTERNS:
        take(pattern)
    return [p for p in chosen if p not in grouped][:max_panels]


_TITLES = {
    "loss": "total loss",
    "loss/task": "task loss",
    "loss/moe/load_balance": "load-balance loss",
    "loss/moe/z_loss": "router z-loss",
    "moe/effective_top_k": "effective top-k (experts used per token)",
    "moe/max_load_ratio": "load imbalance (max / mean expert load)",
    "accuracy": "accuracy",
}
_WORDS = {
    "vqa": "VQA",
    "cls": "classification",
    "acc": "accuracy",
    "bleu4": "BLEU-4",
    "moe": "MoE",
    "mean_recall": "mean recall",
    "zero_shot_accuracy": "zero-shot accuracy",
}
_SPLITS = {"train": "train", "eval": "held-out"}


def _words(key: str) -> str:
    return " ".join(_WORDS.get(w, w.replace("_", " ")) for w in key.split("/"))


def metric_title(metric: str) -> str:
    """A readable panel title for a metric key: `train/loss/vqa` -> "VQA loss (train)",
    `eval/vqa/accuracy` -> "VQA accuracy (held-out)"."""
    split, _, rest = metric.partition("/")
    if split not in _SPLITS or not rest:
        split, rest = "", metric
    if rest in _TITLES:
        name = _TITLES[rest]
    elif m := re.fullmatch(r"loss/moe/(\w+)_entropy(?:/(.+))?", rest):
        name = f"{m[1]} entropy loss" + (f" ({m[2]})" if m[2] else "")
    elif m := re.fullmatch(r"loss/(.+)", rest):
        name = f"{_words(m[1])} loss"
    elif m := re.fullmatch(r"acc/(?:train_)?(\w+)", rest):
        name = f"{_words(m[1])} accuracy"
    elif m := re.fullmatch(r"([^/]+)/([^/]+)/(.+)", rest):
        name = f"{_words(m[1])} {_words(m[2])}: {m[3].replace('_', ' ')}"
    else:
        name = _words(rest)
    return f"{name} ({_SPLITS[split]})" if split else name


def _panel_title(panel: Panel) -> str:
    if isinstance(panel, str):
        return metric_title(panel)
    if all(re.search(r"_entropy(/|$)", k) for k in panel):
        return "entropy losses" + (" (train)" if all(k.startswith("train/") for k in panel) else "")
    return ", ".join(metric_title(k) for k in panel)


def _grid(fig, n: int):
    """n axes with no empty cell: up to 3 a row, and the last row's panels widened to fill it."""
    ncols = n if n <= 3 else (2 if n == 4 else 3)
    nrows = math.ceil(n / ncols)
    last = n - (nrows - 1) * ncols
    cols = math.lcm(ncols, last)
    grid = fig.add_gridspec(nrows, cols)
    axes = []
    for i in range(n):
        r, c = divmod(i, ncols)
        span = cols // (last if r == nrows - 1 else ncols)
        axes.append(fig.add_subplot(grid[r, c * span : (c + 1) * span]))
    return axes


def plot_curves(
    runs: Mapping[str, str | Path | Series],
    out_path: str | Path,
    metrics: Sequence[Panel] | None = None,
    title: str | None = None,
    smooth: int = 1,
) -> Path:
    """One panel per metric, one line per run; a PNG at `out_path`.

    Args:
        runs: {label: metrics.jsonl path or already-read series}, e.g. {"dense": ..., "moe": ...}.
        metrics: which metrics to draw (default: `default_metrics`); an entry may be a tuple of
            keys drawn in one panel. Metrics no run logged are left out (with a warning), so no
            panel is ever empty.
        smooth: moving-average window in logged points (1 = raw).
    """
    series = {label: r if isinstance(r, dict) else read_metrics(r) for label, r in runs.items()}
    panels = list(metrics) if metrics is not None else default_metrics(series)
    logged = {k for s in series.values() for k in s}
    keep = [p for p in panels if any(k in logged for k in ((p,) if isinstance(p, str) else p))]
    if len(keep) < len(panels):
        missing = [p for p in panels if p not in keep]
        logger.warning("plot_curves: not logged by any run, left out: %s", missing)
    if not keep:
        raise ValueError(f"plot_curves: no metrics to plot in runs {sorted(series)}")
    ncols = min(3, len(keep)) if len(keep) != 4 else 2
    nrows = math.ceil(len(keep) / ncols)
    fig = new_figure(4.2 * ncols, 3.2 * nrows + (0.4 if title else 0))
    color = {label: f"C{i % 10}" for i, label in enumerate(series)}  # a run keeps its colour
    for ax, panel in zip(_grid(fig, len(keep)), keep):
        keys = (panel,) if isinstance(panel, str) else panel
        for j, key in enumerate(keys):
            for label, s in series.items():
                if key not in s:
                    continue
                steps, values = s[key]
                if smooth > 1:
                    values = _moving_average(values, smooth)
                name = label if len(keys) == 1 else f"{label}: {_short(key)}"
                ax.plot(
                    steps,
                    values,
                    label=name,
                    color=color[label] if len(keys) == 1 else None,
                    linestyle="-" if len(keys) == 1 else ("-", "--", ":", "-.")[j % 4],
                    marker="o" if len(steps) <= 20 else None,
                    ms=3,
                )
        ax.set_title(_panel_title(panel), fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(_axis_label(keys[0]))
        ax.grid(alpha=0.3)
        if len(keys) == 1 and "loss" in keys[0] and _positive(series, keys[0]):
            ax.set_yscale("log")
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return save_png(fig, out_path)


def _short(key: str) -> str:
    """The part of a grouped metric's title that tells it from the others in its panel."""
    title = metric_title(key)
    return re.sub(r" \((train|held-out)\)$", "", title)


def _axis_label(metric: str) -> str:
    if "effective_top_k" in metric:
        return "experts per token"
    if "max_load_ratio" in metric:
        return "max / mean load"
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
