"""Figure plumbing shared by the plots: Agg-only figures, PNG saving, expert colours.

Figures are built with `matplotlib.figure.Figure` directly (never `pyplot`), so plotting keeps
no global state, needs no display and works from threads and tests alike.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)

import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from vlmoe.io import atomic_path  # noqa: E402

DPI = 100


def new_figure(width_in: float, height_in: float) -> Figure:
    """A figure with the Agg canvas, `width_in` x `height_in` inches at `DPI`."""
    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas (text measuring needs a renderer)
    return fig


def save_png(fig: Figure, out_path: str | Path) -> Path:
    """Save as PNG (creating the folder, atomically via `vlmoe.io`) and return the path."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    return out_path


def expert_colors(num_experts: int) -> np.ndarray:
    """(E, 4) RGBA colours, one per expert: qualitative up to 20, then evenly spaced hues."""
    if num_experts <= 20:
        base = colormaps["tab10" if num_experts <= 10 else "tab20"].colors
        rgb_E3 = np.asarray(base, dtype=float)[:num_experts, :3]
        return np.concatenate([rgb_E3, np.ones((num_experts, 1))], axis=1)
    return colormaps["hsv"](np.linspace(0, 1, num_experts, endpoint=False))


def expert_cmap(num_experts: int) -> ListedColormap:
    """A colormap with one flat colour per expert index."""
    return ListedColormap(expert_colors(num_experts), name=f"experts{num_experts}")
