"""Pictures of image generation: sample grids, and where a diffusion transformer's MoE layers
send image patches as a function of the timestep, the patch position and the class.

DiT-MoE (Fei et al. 2024) reports that expert choice follows the noise level and the spatial
position far more than the class; `plot_routing_factors` shows the three views side by side
for every MoE layer, from the counts of `vlmoe.eval.image_generation.routing_counts`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vlmoe.viz.common import expert_cmap, new_figure, save_png


def image_grid(images_BCHW: Tensor, nrow: int, pad: int = 2) -> np.ndarray:
    """Images in [-1, 1] -> one (H', W', 3) uint8 grid, `nrow` images a row, white padding."""
    x = ((images_BCHW.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    B, _, H, W = x.shape
    rows = (B + nrow - 1) // nrow
    grid = np.full((rows * (H + pad) + pad, nrow * (W + pad) + pad, 3), 255, dtype=np.uint8)
    for i in range(B):
        r, c = divmod(i, nrow)
        y0, x0 = pad + r * (H + pad), pad + c * (W + pad)
        grid[y0 : y0 + H, x0 : x0 + W] = x[i].permute(1, 2, 0).numpy()
    return grid


def save_image_grid(images_BCHW: Tensor, out_path: str | Path, nrow: int, scale: int = 2) -> Path:
    """Write `image_grid` as a PNG (upscaled `scale` times, nearest), atomically."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(image_grid(images_BCHW, nrow))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    tmp = out_path.with_name(out_path.name + ".tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, out_path)
    return out_path


def plot_routing_factors(
    counts: dict[str, np.ndarray],
    times: np.ndarray,
    grid: tuple[int, int],
    out_path: str | Path,
    dependence: dict[str, np.ndarray] | None = None,
) -> Path:
    """One row per MoE layer: expert share vs timestep (stacked), the most used expert at each
    patch position (map), and the expert share per class (stacked bars).

    `counts["time_LTE"]`, `counts["position_LNE"]`, `counts["class_LCE"]`: routed (token,
    expert) pairs per layer and factor value. `dependence[factor]` (L,) values are printed in
    the titles (normalized mutual information between expert and factor).
    """
    time_LTE, pos_LNE, cls_LCE = counts["time_LTE"], counts["position_LNE"], counts["class_LCE"]
    L, _, E = time_LTE.shape
    colors = expert_cmap(E).colors
    fig = new_figure(11, 2.6 * L)
    axes = fig.subplots(L, 3, squeeze=False)

    def share(c: np.ndarray) -> np.ndarray:
        return c / np.maximum(c.sum(-1, keepdims=True), 1)

    def title(name: str, layer: int) -> str:
        if dependence is None:
            return name
        return f"{name} (NMI {dependence[name.split()[-1]][layer]:.3f})"

    times = np.asarray(times)

    for layer in range(L):
        ax = axes[layer, 0]
        ax.stackplot(times, share(time_LTE[layer]).T, colors=colors)
        ax.set_xlim(times.min(), times.max())
        ax.set_ylim(0, 1)
        ax.set_xlabel("t (0 = data, 1 = noise)")
        ax.set_ylabel(f"MoE layer {layer}\nexpert share")
        ax.set_title(title("by time", layer), fontsize=9)
        ax = axes[layer, 1]
        top_N = pos_LNE[layer].argmax(-1).reshape(grid)
        ax.imshow(top_N, cmap=expert_cmap(E), vmin=-0.5, vmax=E - 0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title("top expert by position", layer), fontsize=9)
        ax = axes[layer, 2]
        s_CE = share(cls_LCE[layer])
        bottom = np.zeros(s_CE.shape[0])
        for e in range(E):
            ax.bar(np.arange(s_CE.shape[0]), s_CE[:, e], bottom=bottom, color=colors[e])
            bottom += s_CE[:, e]
        ax.set_ylim(0, 1)
        ax.set_xticks(np.arange(s_CE.shape[0]))
        ax.set_xlabel("class")
        ax.set_title(title("by class", layer), fontsize=9)
    return save_png(fig, out_path)
