"""Expert load per MoE layer as heatmaps, one panel per modality (layers x experts).

Each cell is the fraction of a modality's token-to-expert assignments in that layer that went
to that expert, so every row sums to 1. A perfectly balanced layer reads 1/E everywhere with one
shared pool, and 1/(experts the modality can reach) with VL-MoE's modality groups; the panel
title gives that reference. Experts a modality could reach but never used are crossed out in
red; experts it cannot reach at all (another modality's group) are hatched grey, a different
thing: that is the architecture, not a routing failure. This is the picture of LIMoE's Fig. 6
and VL-MoE's modality-expert analysis: whether image and text tokens settle on different
experts.

Shapes: L MoE layers, M modalities, E experts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.patches import Rectangle

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
    reachable_LME: np.ndarray | Sequence | None = None,
) -> Path:
    """Heatmaps of token assignments per (layer, expert), one panel per modality; a PNG.

    Args:
        counts_LME: (L, M, E) token-to-expert assignment counts (or fractions).
        layer_names: L row labels (default `layer 0..L-1`).
        modality_names: M panel titles.
        reachable_LME: (L, M, E) or (M, E) bool, which experts each modality can reach
            (`RoutingStats.reachable_LME`, `reachable_from_results`); None = all of them.
    """
    frac_LME = load_fractions(np.asarray(counts_LME))
    if frac_LME.ndim != 3:
        raise ValueError(
            f"plot_expert_load: expected (layers, modalities, experts), got {frac_LME.shape}"
        )
    L, M, E = frac_LME.shape
    counts_LME = np.asarray(counts_LME, dtype=float)
    reach_LME = np.ones((L, M, E), dtype=bool)
    if reachable_LME is not None:
        given = np.asarray(reachable_LME, dtype=bool)
        if given.shape[-1] != E or given.ndim not in (2, 3):
            raise ValueError(
                f"plot_expert_load: reachable_LME has shape {given.shape}, expected "
                f"({L}, {M}, {E}) or ({M}, {E})"
            )
        given = np.broadcast_to(given, (L, *given.shape[-2:])) if given.ndim == 2 else given
        reach_LME[:, : given.shape[1]] = given[:, :M]
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
    any_unreachable = not reach_LME[:, panels].all()
    for ax, m in zip(axes, panels):
        reach_LE = reach_LME[:, m, :]
        shown = np.ma.masked_array(frac_LME[:, m, :], mask=~reach_LE)
        ax.set_facecolor("0.85")  # masked (unreachable) cells show the background
        image = ax.imshow(shown, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
        ax.set_title(f"{modality_names[m]} tokens\n({_uniform_note(reach_LE)})", fontsize=10)
        ax.set_xlabel("expert")
        ax.set_xticks(range(E), [str(e) for e in range(E)], fontsize="small" if E <= 16 else 6)
        ax.set_yticks(range(L), layer_names)
        annotate = L * E <= 160
        for (l, e), v in np.ndenumerate(frac_LME[:, m, :]):
            if not reach_LE[l, e]:  # another modality's group: not a routing failure
                ax.add_patch(
                    Rectangle((e - 0.5, l - 0.5), 1, 1, fill=False, hatch="///", ec="0.6", lw=0)
                )
            elif counts_LME[l, m, e] == 0:  # reachable, but this modality never used it
                ax.text(e, l, "×", ha="center", va="center", fontsize=9, color="red")
            elif annotate:
                color = "black" if v > 0.6 * vmax else "white"
                ax.text(e, l, f"{v:.2f}", ha="center", va="center", fontsize=7, color=color)
    axes[0].set_ylabel("MoE layer")
    cbar = fig.colorbar(image, ax=list(axes), shrink=0.9)
    cbar.set_label("fraction of tokens")
    note = "red × = reachable but no tokens"
    if any_unreachable:
        note += "; grey hatched = this modality cannot reach the expert"
    fig.suptitle(f"{title}\n({note})" if title else note, fontsize=11)
    return save_png(fig, out_path)


def _uniform_note(reach_LE: np.ndarray) -> str:
    """The balanced reference of one panel: 1/(experts the modality can reach)."""
    sizes = sorted({int(n) for n in reach_LE.sum(-1) if n > 0})
    if len(sizes) == 1:
        return f"uniform = 1/{sizes[0]} = {1 / sizes[0]:.3f}"
    return "uniform = " + ", ".join(f"1/{n}" for n in sizes) + " by layer"


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


def reachable_from_results(
    results: dict,
    counts_LME: np.ndarray,
    layer_names: Sequence[str],
    prefix: str = "routing/",
    modality_names: Sequence[str] = DEFAULT_MODALITIES,
) -> np.ndarray | None:
    """(L, M, E) bool from the `<prefix><layer>/<modality>/reachable_expert_ids` entries that a
    `RoutingEvaluator` writes for layers with modality groups; None when there are none.
    Shapes follow `load_from_results`'s `counts_LME` and `layer_names`."""
    L, M, E = np.shape(counts_LME)
    reach = np.ones((L, M, E), dtype=bool)
    found = False
    for i, layer in enumerate(layer_names):
        for m, modality in enumerate(modality_names[:M]):
            ids = results.get(f"{prefix}{layer}/{modality}/reachable_expert_ids")
            if ids is not None:
                reach[i, m] = False
                reach[i, m, [e for e in ids if 0 <= e < E]] = True
                found = True
    return reach if found else None
