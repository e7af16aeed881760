"""Expert load per MoE layer as heatmaps, one panel per modality (layers x experts).

Each cell is the fraction of a modality's token-to-expert assignments in that layer that went
to that expert, so every row sums to 1 and a perfectly balanced layer reads 1/E everywhere.
Experts that received nothing are crossed out. This is the picture of LIMoE's Fig. 6 and
VL-MoE's modality-expert analysis: whether image and text tokens settle on different experts.

Shapes: L MoE layers, M modalities, E experts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vlmoe.viz.common import new_figure, save_png

DEFAULT_MODALITIES: tuple[str, ...] = ("image", "text")


def load_fractions(counts_LME: np.ndarray) -> np.ndarray:
    """Counts → per-(layer, modality) fractions; rows with no tokens stay zero."""
    counts_LME = np.asarray(counts_LME, dtype=float)
    totals_LM1 = counts_LME.sum(axis=-1, keepdims=True)
    return np.divide(counts_LME, totals_LM1, out=np.zeros_like(counts_LME), where=totals_LM1 > 0)


def plot_expert_load(
    counts_LME: np.ndarray | Sequence,
    out_path: str | Path,
    layer_names: Sequence[str] | None = None,
    modality_names: Sequence[str] = DEFAULT_MODALITIES,
    title: str | None = "Expert load per MoE layer",
) -> Path:
    """Heatmaps of token assignments per (layer, expert), one panel per modality; a PNG.

    Args:
        counts_LME: (L, M, E) token-to-expert assignment counts (or fractions).
        layer_names: L row labels (default `layer 0..L-1`).
        modality_names: M panel titles.
    """
    frac_LME = load_fractions(np.asarray(counts_LME))
    if frac_LME.ndim != 3:
        raise ValueError(
            f"plot_expert_load: expected (layers, modalities, experts), got {frac_LME.shape}"
        )
    L, M, E = frac_LME.shape
    counts_LME = np.asarray(counts_LME, dtype=float)
    has_tokens_M = counts_LME.sum(axis=(0, 2)) > 0
    panels = [m for m in range(M) if has_tokens_M[m]] or list(range(M))
    layer_names = list(layer_names) if layer_names is not None else [f"layer {i}" for i in range(L)]
    modality_names = [
        modality_names[m] if m < len(modality_names) else f"modality {m}" for m in range(M)
    ]
    vmax = max(float(frac_LME.max()), 1e-9)

    cell = 0.45 if E <= 16 else 0.22
    width = max(3.0, cell * E + 1.2) * len(panels) + 1.2
    height = max(2.4, cell * L + 1.4) + 0.5
    fig = new_figure(width, height)
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    image = None
    for ax, m in zip(axes, panels):
        image = ax.imshow(frac_LME[:, m, :], cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
        ax.set_title(f"{modality_names[m]} tokens")
        ax.set_xlabel("expert")
        ax.set_xticks(range(E), [str(e) for e in range(E)], fontsize="small" if E <= 16 else 6)
        ax.set_yticks(range(L), layer_names)
        annotate = L * E <= 160
        for (l, e), v in np.ndenumerate(frac_LME[:, m, :]):
            if counts_LME[l, m, e] == 0:  # an expert this modality never reached
                ax.text(e, l, "×", ha="center", va="center", fontsize=9, color="red")
            elif annotate:
                color = "black" if v > 0.6 * vmax else "white"
                ax.text(e, l, f"{v:.2f}", ha="center", va="center", fontsize=7, color=color)
    axes[0].set_ylabel("MoE layer")
    cbar = fig.colorbar(image, ax=list(axes), shrink=0.9)
    cbar.set_label("fraction of tokens")
    note = f"uniform = 1/{E} = {1 / E:.3f}; × = no tokens"
    fig.suptitle(f"{title}\n({note})" if title else note, fontsize=11)
    return save_png(fig, out_path)


def load_from_results(
    results: dict, prefix: str = "routing/", modality_names: Sequence[str] = DEFAULT_MODALITIES
) -> tuple[np.ndarray, list[str]]:
    """(counts_LME, layer_names) from `eval.json`-style results of a `RoutingEvaluator`.

    Reads the `<prefix><layer>/<modality>/tokens_per_expert` entries; a modality a layer has no
    entry for counts zero.
    """
    suffix = "/tokens_per_expert"
    found: dict[str, dict[int, list]] = {}
    for key, value in results.items():
        if not (key.startswith(prefix) and key.endswith(suffix)):
            continue
        layer, _, modality = key[len(prefix) : -len(suffix)].rpartition("/")
        if modality in modality_names and layer:
            found.setdefault(layer, {})[list(modality_names).index(modality)] = value
    if not found:
        raise ValueError(f"no '{prefix}<layer>/<modality>{suffix}' entries in the results")
    names = list(found)
    E = max(len(v) for per in found.values() for v in per.values())
    counts = np.zeros((len(names), len(modality_names), E))
    for i, name in enumerate(names):
        for m, v in found[name].items():
            counts[i, m, : len(v)] = v
    return counts, names
