"""Table and plots of the scaling study from its JSON (`benchmarks/scaling.py`).

`write_report(json_path)` writes, next to the JSON: `<stem>.md` (per task and model: held-out
quality as mean ± std over seeds, total and active parameters, training throughput, routing
health; then MoE-vs-dense verdicts and the task-1 ablations), `<stem>_experts.png` (quality vs
number of experts) and `<stem>_flops.png` (quality vs estimated training FLOPs, from the
held-out points measured during training).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from scaling_tasks import TASKS

ORDER = (
    "dense",
    "e4k2",
    "e8k2",
    "e16k2",
    "e8k1",
    "dense-wide",
    "dense-narrow",
    "e8k2-pool",
    "e8k2-nobal",
    "e8k2-noent",
    "e8k2-bias",
    "e8k2-cap1.0",
    "e8k2-cap1.25",
    "e8k1-upcycled",
)
MAIN = ORDER[:7]
EXTRA = ORDER[7:]
EXTRA_LABELS = {"vqa/accuracy": "test-split acc"}  # the compositional task's in-distribution score
COLOURS = {
    "e4k2": "C0",
    "e8k2": "C1",
    "e16k2": "C2",
    "e8k1": "C3",
    "e8k1-upcycled": "C4",
    "dense-wide": "C7",
    "dense-narrow": "C8",
}


def _stats(values: list[float]) -> tuple[float, float, int]:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return float("nan"), float("nan"), 0
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), sd, len(values)


def _fmt(mean: float, sd: float, n: int, scale: float = 100.0, digits: int = 1) -> str:
    if n == 0:
        return "—"
    if n == 1:
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {sd * scale:.{digits}f}"


def _scale(metric: str) -> float:
    return 1.0 if metric.endswith("bleu4") else 100.0  # BLEU is already 0-100


def _params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def group(runs: dict[str, Any]) -> dict[tuple[str, str], list[dict]]:
    cells: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in runs.values():
        cells[(r["task"], r["variant"])].append(r)
    return cells


def verdicts(cells: dict[tuple[str, str], list[dict]]) -> list[str]:
    """MoE E=8 top-2 vs dense per task, and whether quality falls from E=4 to E=16."""
    lines = []
    for task, spec in TASKS.items():
        dense, moe = cells.get((task, "dense")), cells.get((task, "e8k2"))
        if not dense or not moe:
            continue
        d = _stats([r["metric"] for r in dense])
        m = _stats([r["metric"] for r in moe])
        diff, spread = m[0] - d[0], max(d[1], m[1])
        s = _scale(spec.metric)
        if min(d[2], m[2]) < 2:
            word = "MoE ahead" if diff > 0 else "MoE not ahead"
            note = "(one seed: no spread measured)"
        elif diff > spread:
            word, note = "**MoE wins**", f"(by more than the seed spread {spread * s:.1f})"
        elif diff > 0:
            word, note = "MoE ahead, within noise", f"(seed spread {spread * s:.1f})"
        else:
            word, note = "**MoE does not win**", f"(seed spread {spread * s:.1f})"
        gap = f"{diff * s:+.1f} {spec.metric_label}"
        line = f"- {spec.title}: E=8 top-2 − dense = {gap}: {word} {note}"
        trend = [
            _stats([r["metric"] for r in cells.get((task, v), [])])
            for v in ("e4k2", "e8k2", "e16k2")
        ]
        if all(t[2] for t in trend):
            vals = ", ".join(f"{t[0] * s:.1f}" for t in trend)
            falls = trend[2][0] < trend[0][0] - max(trend[0][1], trend[2][1])
            line += f"; E=4/8/16: {vals} ({'falls' if falls else 'does not fall'} with E)"
        wide = _stats([r["metric"] for r in cells.get((task, "dense-wide"), [])])
        narrow = _stats([r["metric"] for r in cells.get((task, "dense-narrow"), [])])
        if wide[2]:
            more = wide[0] - d[0] > max(d[1], wide[1])
            line += (
                f"; capacity controls: dense with E=8's total FFN width − dense = "
                f"{(wide[0] - d[0]) * s:+.1f}"
            )
            if narrow[2]:
                line += f", with a 1/4-wide FFN − dense = {(narrow[0] - d[0]) * s:+.1f}"
            line += ": FFN capacity " + (
                "**binds** here" if more else "does not bind here (wider is not better)"
            )
        lines.append(line)
    return lines


def table(
    cells: dict[tuple[str, str], list[dict]],
    variants: tuple[str, ...],
    speed: dict[str, dict[str, float]] | None = None,
    only: str | None = None,
) -> list[str]:
    head = (
        "| task | model | held-out | other metrics | total params | active params | "
        "train ex/s | dead experts | load imbalance | router entropy | eff. k | seeds |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for task, spec in TASKS.items():
        if only is not None and task != only:
            continue
        for v in variants:
            rs = cells.get((task, v))
            if not rs:
                continue
            s = _scale(spec.metric)
            main = _fmt(*_stats([r["metric"] for r in rs]), scale=s)
            extra = []
            for key in spec.extra:
                st = _stats([r["metrics"].get(key) for r in rs])
                if st[2]:
                    name = EXTRA_LABELS.get(key, key.split("/")[-1])
                    extra.append(f"{name} {_fmt(*st, scale=_scale(key))}")
            routed = [r for r in rs if r["routing"] and r["num_experts"] > 1]
            drop = _stats([r["routing"].get("drop_rate") for r in routed])
            if drop[2] and drop[0] > 0:
                extra.append(f"dropped {_fmt(*drop)}%")
            dead = _stats([r["routing"].get("dead_experts") for r in routed])
            imb = _stats([r["routing"].get("load_imbalance") for r in routed])
            ent = _stats([r["routing"].get("router_entropy") for r in routed])
            eff = _stats([r["routing"].get("effective_top_k") for r in routed])
            rate = (speed or {}).get(task, {}).get(v)
            if rate is None:
                rate = _stats([r["examples_per_s"] for r in rs])[0]
            lines.append(
                f"| {task} | {rs[0]['label']} | {spec.metric_label} {main} | {'; '.join(extra)} | "
                f"{_params(rs[0]['total_params'])} | {_params(rs[0]['active_params'])} | "
                f"{rate:.0f} | {_fmt(*dead, scale=1, digits=1) if routed else '—'} | "
                f"{_fmt(*imb, scale=1, digits=2) if routed else '—'} | "
                f"{_fmt(*ent, scale=1, digits=2) if routed else '—'} | "
                f"{_fmt(*eff, scale=1, digits=2)} | {len(rs)} |"
            )
    return lines


# Per-kind metrics (issue 17): what each model gets right, by question type, caption attribute
# or caption kind; the column is the key's last part.
KIND_PREFIXES = (
    ("vqa/accuracy/", "VQA accuracy per question type"),
    ("comp/accuracy/", "compositional VQA accuracy per question type"),
    ("captioning/attr/", "caption attributes"),
    ("retrieval/i2t_r@1/", "image->text R@1 per caption kind"),
    ("retrieval/t2i_r@1/", "text->image R@1 per caption kind"),
)


def per_kind_tables(cells: dict[tuple[str, str], list[dict]]) -> list[str]:
    """One table per task and kind family: mean ± std over seeds, a row per main variant."""
    out: list[str] = []
    for task, spec in TASKS.items():
        for prefix, title in KIND_PREFIXES:
            rows = [v for v in MAIN if (task, v) in cells]
            kinds = sorted(
                {
                    k.removeprefix(prefix)
                    for v in rows
                    for r in cells[(task, v)]
                    for k in r.get("metrics", {})
                    if k.startswith(prefix) and k.removeprefix(prefix) != "num_scored"
                }
            )
            if not kinds:
                continue
            out += [f"### {spec.title}: {title}", "", "| model | " + " | ".join(kinds) + " |"]
            out.append("|---" * (len(kinds) + 1) + "|")
            for v in rows:
                stats = [
                    _stats([r.get("metrics", {}).get(prefix + k) for r in cells[(task, v)]])
                    for k in kinds
                ]
                out.append(f"| {v} | " + " | ".join(_fmt(*st) for st in stats) + " |")
            out.append("")
    return out


def markdown(data: dict[str, Any]) -> str:
    runs = data.get("runs", {})
    cells = group(runs)
    meta = data.get("meta", {})
    wall = sum(r.get("wall_seconds", 0) for r in runs.values())
    out = [
        "# Scaling study: sparse MoE vs dense at equal active parameters",
        "",
        f"{len(runs)} runs, {wall / 60:.0f} min of run time in all "
        f"(torch {meta.get('torch', '?')}). "
        "Held-out metric as mean ± std over seeds (percent, BLEU on its 0-100 scale). "
        "Routing columns: held-out evaluation, summed dead experts over MoE layers, "
        "max/mean load per layer, mean router entropy (nats), effective experts per token "
        "((sum w)^2 / sum w^2 of its combine weights: k when equal, 1 when one weight carries "
        "it; runs stored before this statistic existed show —). Train ex/s: "
        + (
            "measured back to back (`--throughput`: best 10-step window over 2 interleaved "
            f"rounds, {data.get('throughput_meta', {}).get('threads', '?')} threads; rows "
            "measured no such way: median window of their own runs)"
            if data.get("throughput")
            else "median logging window of the training run (noisy on a shared machine)"
        )
        + ".",
        "",
        *table(cells, MAIN, data.get("throughput")),
        "",
        "## Does MoE win?",
        "",
        *(verdicts(cells) or ["- not enough runs yet"]),
    ]
    kinds = per_kind_tables(cells)
    if kinds:
        out += ["", "## What the models get right, by kind", "", *kinds]
    out += [
        "",
        "## Wall time (this machine, shared with other jobs; torch threads per run)",
        "",
        "| task | runs | mean wall s / run | mean train s / run | total min | threads |",
        "|---|---|---|---|---|---|",
    ]
    for task in TASKS:
        rs = [r for r in runs.values() if r["task"] == task]
        if rs:
            w = [r["wall_seconds"] for r in rs]
            t = [r["train_seconds"] for r in rs]
            threads = ", ".join(sorted({str(r.get("threads", "?")) for r in rs}))
            out.append(
                f"| {task} | {len(rs)} | {statistics.fmean(w):.0f} | "
                f"{statistics.fmean(t):.0f} | {sum(w) / 60:.1f} | {threads} |"
            )
    for task, spec in TASKS.items():
        extra = [v for v in EXTRA if (task, v) in cells]
        if not extra:
            continue
        title = (
            "Task-1 routing ablations" if task == "vqa" else "Diagnostic runs"
        ) + f" ({spec.title}, E=8)"
        out += [
            "",
            f"## {title}",
            "",
            *table(cells, ("dense", "e8k2", "e8k1", *extra), data.get("throughput"), task),
        ]
    return "\n".join(out) + "\n"


def plot_experts(cells: dict[tuple[str, str], list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if (t, "dense") in cells]
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.0), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        spec = TASKS[task]
        s = _scale(spec.metric)
        d = _stats([r["metric"] for r in cells[(task, "dense")]])
        ax.axhline(d[0] * s, color="grey", ls="--", label="dense")
        if d[2] > 1:
            ax.axhspan((d[0] - d[1]) * s, (d[0] + d[1]) * s, color="grey", alpha=0.15)
        xs, ys, es = [], [], []
        for e, v in ((4, "e4k2"), (8, "e8k2"), (16, "e16k2")):
            st = _stats([r["metric"] for r in cells.get((task, v), [])])
            if st[2]:
                xs.append(e), ys.append(st[0] * s), es.append(st[1] * s)
        if xs:
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label="MoE top-2")
        st = _stats([r["metric"] for r in cells.get((task, "e8k1"), [])])
        if st[2]:
            ax.errorbar(
                [8], [st[0] * s], yerr=[st[1] * s], marker="s", capsize=3, ls="", label="MoE top-1"
            )
        # The capacity controls have no experts: horizontal lines, like dense.
        for v, ls, label in (
            ("dense-wide", "-.", "dense, E=8-wide FFN"),
            ("dense-narrow", ":", "dense, 1/4-wide FFN"),
        ):
            st = _stats([r["metric"] for r in cells.get((task, v), [])])
            if st[2]:
                ax.axhline(st[0] * s, color=COLOURS[v], ls=ls, lw=1.5, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks([4, 8, 16], ["4", "8", "16"])
        ax.set_xlabel("experts")
        ax.set_title(task, fontsize=10)
        ax.set_ylabel(spec.metric_label)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("held-out quality vs number of experts (equal active parameters)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_flops(cells: dict[tuple[str, str], list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if (t, "dense") in cells]
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.0), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        spec = TASKS[task]
        s = _scale(spec.metric)
        variants = list(MAIN) + (["e8k1-upcycled"] if (task, "e8k1-upcycled") in cells else [])
        for v in variants:
            rs = cells.get((task, v))
            if not rs:
                continue
            points: dict[int, list[tuple[float, float]]] = defaultdict(list)
            for r in rs:
                for p in r.get("curve", []):
                    if p["value"] is not None:
                        points[p["step"]].append((p["flops"], p["value"]))
            steps = sorted(points)
            xs = [statistics.fmean(f for f, _ in points[k]) / 1e12 for k in steps]
            ys = [statistics.fmean(y for _, y in points[k]) * s for k in steps]
            style = {"dense": dict(color="black", ls="--")}.get(v, {"color": COLOURS.get(v)})
            ax.plot(xs, ys, marker=".", label=rs[0]["label"].replace("MoE ", ""), **style)
        ax.set_xlabel("training TFLOPs (6 x active params x tokens)")
        ax.set_title(task, fontsize=10)
        ax.set_ylabel(spec.metric_label)
    axes[0][0].legend(fontsize=6)
    fig.suptitle("held-out quality vs training compute", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(json_path: Path) -> Path:
    data = json.loads(Path(json_path).read_text()) if Path(json_path).is_file() else {"runs": {}}
    stem = Path(json_path).with_suffix("")
    md = stem.with_suffix(".md")
    md.write_text(markdown(data))
    cells = group(data.get("runs", {}))
    plot_experts(cells, Path(f"{stem}_experts.png"))
    plot_flops(cells, Path(f"{stem}_flops.png"))
    return md
