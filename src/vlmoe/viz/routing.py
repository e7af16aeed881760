"""Which expert each image patch and text token went to, drawn over the image, per MoE layer.

For each MoE layer one row: the image with every patch filled in the colour of its top-1
expert (the kept expert with the largest routing weight), its opacity following the router's
confidence (the token's probability for that expert), and beside it the text tokens as labels
coloured the same way. This is the picture of V-MoE (Riquelme et al. 2021, Fig. 8) and LIMoE
(Mustafa et al. 2022, Fig. 7), where experts specialise to image regions and to modalities.

Legend: T tokens, K experts per token, E experts, gh x gw patch grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from matplotlib.patches import Patch
from torch import Tensor

from vlmoe.moe.layer import MoEAux
from vlmoe.viz.common import expert_colors, new_figure, save_png

DROPPED_COLOR = (0.55, 0.55, 0.55, 1.0)


def token_top1(aux: MoEAux) -> tuple[Tensor, Tensor]:
    """Top-1 kept expert of every token and the router's probability for it.

    Returns:
        expert_T: (T,) int64, -1 where no expert computed the token (dropped by capacity, or not
            chosen by any expert under expert choice).
        confidence_T: (T,) fp32 in [0, 1], the normalized router score of that expert (0 if none).
    """
    ids_TK = aux.expert_ids_TK
    kept_TK = aux.kept_TK & (ids_TK >= 0)
    w_TK = torch.where(kept_TK, aux.weights_TK.float(), float("-inf"))
    best_T, j_T = w_TK.max(dim=1)
    expert_T = ids_TK.gather(1, j_T[:, None]).squeeze(1)
    has_T = kept_TK.any(dim=1)
    expert_T = torch.where(has_T, expert_T, -1).long()
    p_TE = aux.probs_TE.float()
    p_TE = p_TE / p_TE.sum(-1, keepdim=True).clamp_min(1e-20)
    conf_T = p_TE.gather(1, expert_T.clamp_min(0)[:, None]).squeeze(1)
    return expert_T.detach(), torch.where(has_T, conf_T, 0.0).detach()


def default_token_split(
    aux: MoEAux, num_patches: int, num_text: int | None = None
) -> tuple[Tensor | None, Tensor | None]:
    """Guess which of a single example's tokens are the image patches and the text tokens.

    With modality ids, image patches are the last `num_patches` image tokens (a class token or
    registers come first) and text tokens are the text-modality tokens. Without them, a stack of
    `num_patches` (+ a few prefix tokens) is an image, anything else is text.

    Returns:
        (image_index, text_index): index tensors into T (patches in raster order), or None.
    """
    T = aux.expert_ids_TK.shape[0]
    if aux.modality_T is not None:
        image = torch.nonzero(aux.modality_T == 0).flatten()
        text = torch.nonzero(aux.modality_T == 1).flatten()
        image_index = image[-num_patches:] if image.numel() >= num_patches else None
        text_index = text[:num_text] if text.numel() else None
        return image_index, text_index
    if num_patches <= T <= num_patches + 4:
        return torch.arange(T - num_patches, T), None
    return None, torch.arange(T)[:num_text]


@dataclass(frozen=True)
class LayerRouting:
    """One layer's top-1 routing of one example, ready to draw (numpy, host)."""

    name: str
    num_experts: int
    patch_expert: np.ndarray | None  # (gh, gw) int, -1 = no expert
    patch_conf: np.ndarray | None  # (gh, gw) float
    token_expert: np.ndarray | None  # (N,) int
    token_conf: np.ndarray | None  # (N,) float


def layer_routing(
    aux: MoEAux,
    patch_grid: tuple[int, int],
    name: str,
    *,
    image_index: Tensor | None = None,
    text_index: Tensor | None = None,
    text_aux: MoEAux | None = None,
    num_text: int | None = None,
) -> LayerRouting:
    """Top-1 routing of one example's patches (as a grid) and text tokens in one layer.

    `aux` must come from a batch of one example. Indices default to `default_token_split`;
    `text_aux` is the same layer's aux from a separate text pass (contrastive tower).
    """
    gh, gw = patch_grid
    guess_image, guess_text = default_token_split(aux, gh * gw, num_text)
    image_index = guess_image if image_index is None else image_index
    expert_T, conf_T = token_top1(aux)
    patch_expert = patch_conf = token_expert = token_conf = None
    if image_index is not None:
        patch_expert = expert_T[image_index].reshape(gh, gw).cpu().numpy()
        patch_conf = conf_T[image_index].reshape(gh, gw).cpu().numpy()
    if text_aux is not None:
        expert_T, conf_T = token_top1(text_aux)
        _, guess_text = default_token_split(text_aux, gh * gw, num_text)
    text_index = guess_text if text_index is None else text_index
    if text_index is not None and text_index.numel():
        token_expert = expert_T[text_index].cpu().numpy()
        token_conf = conf_T[text_index].cpu().numpy()
    return LayerRouting(name, aux.num_experts, patch_expert, patch_conf, token_expert, token_conf)


def _as_rgb(image) -> np.ndarray:
    """PIL image, (H, W[, C]) array or (C, H, W) tensor → (H, W, 3) float in [0, 1]."""
    if isinstance(image, Tensor):
        image = image.detach().float().cpu()
        if image.dim() == 3 and image.shape[0] in (1, 3):
            image = image.permute(1, 2, 0)
        image = image.numpy()
    arr = np.asarray(image, dtype=float)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    arr = arr[..., :3]
    if arr.max() > 1.0 + 1e-6:
        arr = arr / 255.0
    elif arr.min() < 0:  # normalized input: stretch back to [0, 1] for display
        arr = (arr - arr.min()) / max(arr.max() - arr.min(), 1e-9)
    return np.clip(arr, 0, 1)


def _overlay_rgba(expert_hw: np.ndarray, conf_hw: np.ndarray, colors_E4: np.ndarray,
                  num_experts: int, confidence: str) -> np.ndarray:
    rgba = np.where(expert_hw[..., None] >= 0, colors_E4[np.clip(expert_hw, 0, None)], DROPPED_COLOR)
    if confidence == "alpha":
        lo = 1.0 / num_experts
        c = np.clip((conf_hw - lo) / max(1.0 - lo, 1e-9), 0, 1)
        rgba[..., 3] = 0.25 + 0.5 * c
    else:
        rgba[..., 3] = 0.6
    rgba[expert_hw < 0, 3] = 0.6
    return rgba


def _draw_tokens(ax, fig, tokens: Sequence[str], experts: np.ndarray, conf: np.ndarray,
                 colors_E4: np.ndarray) -> None:
    """Tokens as rounded labels in reading order, wrapped to the axes width."""
    ax.set_axis_off()
    renderer = fig.canvas.get_renderer()
    to_axes = ax.transAxes.inverted()
    x, y, line_h = 0.0, 0.95, 0.0
    for tok, e, c in zip(tokens, experts, conf):
        color = colors_E4[e] if e >= 0 else DROPPED_COLOR
        lum = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        label = tok if e >= 0 else f"{tok} (dropped)"
        t = ax.text(x, y, label, transform=ax.transAxes, va="top", ha="left", fontsize=9,
                    color="black" if lum > 0.55 else "white",
                    bbox=dict(boxstyle="round,pad=0.25", fc=color, ec="none"))
        bb = to_axes.transform(t.get_window_extent(renderer))
        w, h = bb[1, 0] - bb[0, 0], bb[1, 1] - bb[0, 1]
        if x > 0 and x + w > 1.0:  # wrap
            x, y = 0.0, y - line_h - 0.04
            t.set_position((x, y))
        x += w + 0.025
        line_h = max(line_h, h)


def draw_patch_routing(
    image,
    layers: Sequence[LayerRouting],
    token_strings: Sequence[str] | None,
    out_path: str | Path,
    *,
    confidence: Literal["alpha", "none"] = "alpha",
    title: str | None = None,
) -> Path:
    """Draw precomputed `LayerRouting` rows (see `plot_patch_routing`); a PNG at `out_path`."""
    if not layers:
        raise ValueError("draw_patch_routing: no MoE layers to draw (is the model dense?)")
    rgb = _as_rgb(image)
    H, W = rgb.shape[:2]
    E = max(layer.num_experts for layer in layers)
    colors_E4 = expert_colors(E)
    has_text = token_strings is not None and any(layer.token_expert is not None for layer in layers)
    rows = 1 + len(layers)
    fig = new_figure(3.0 + (4.6 if has_text else 0), 2.7 * rows + 0.9)
    fig.set_layout_engine("none")
    grid = fig.add_gridspec(rows, 2 if has_text else 1, width_ratios=[3.0, 4.6] if has_text else None,
                            left=0.04, right=0.98, top=1 - 0.45 / fig.get_figheight(),
                            bottom=0.65 / fig.get_figheight(), hspace=0.3, wspace=0.05)
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(rgb, interpolation="nearest")
    ax.set_title("input image", fontsize=10)
    ax.set_axis_off()
    if has_text:
        tax = fig.add_subplot(grid[0, 1])
        tax.set_axis_off()
        tax.set_title("input text", fontsize=10)
        tax.text(0, 0.9, " ".join(token_strings), transform=tax.transAxes, va="top", wrap=True, fontsize=9)
    used: set[int] = set()
    any_dropped = False
    for r, layer in enumerate(layers, start=1):
        ax = fig.add_subplot(grid[r, 0])
        ax.set_axis_off()
        if layer.patch_expert is not None:
            gh, gw = layer.patch_expert.shape
            ax.imshow(rgb, interpolation="nearest")
            ax.imshow(_overlay_rgba(layer.patch_expert, layer.patch_conf, colors_E4, layer.num_experts,
                                    confidence),
                      extent=(-0.5, W - 0.5, H - 0.5, -0.5), interpolation="nearest")
            for i in range(1, gh):
                ax.axhline(i * H / gh - 0.5, color="white", lw=0.4, alpha=0.6)
            for j in range(1, gw):
                ax.axvline(j * W / gw - 0.5, color="white", lw=0.4, alpha=0.6)
            if gh * gw <= 64:
                for (i, j), e in np.ndenumerate(layer.patch_expert):
                    ax.text((j + 0.5) * W / gw - 0.5, (i + 0.5) * H / gh - 0.5, str(e) if e >= 0 else "×",
                            ha="center", va="center", fontsize=7, color="white", fontweight="bold")
            used.update(int(e) for e in np.unique(layer.patch_expert) if e >= 0)
            any_dropped |= bool((layer.patch_expert < 0).any())
        else:
            ax.text(0.5, 0.5, "no image tokens\nin this layer", ha="center", va="center",
                    transform=ax.transAxes, fontsize=9, color="gray")
        ax.set_title(f"{layer.name}: patches", fontsize=10)
        if has_text:
            tax = fig.add_subplot(grid[r, 1])
            tax.set_title(f"{layer.name}: text tokens", fontsize=10)
            if layer.token_expert is not None:
                n = min(len(token_strings), len(layer.token_expert))
                _draw_tokens(tax, fig, token_strings[:n], layer.token_expert[:n], layer.token_conf[:n],
                             colors_E4)
                used.update(int(e) for e in layer.token_expert[:n] if e >= 0)
                any_dropped |= bool((layer.token_expert[:n] < 0).any())
            else:
                tax.set_axis_off()
                tax.text(0.5, 0.5, "no text tokens in this layer", ha="center", va="center",
                         transform=tax.transAxes, fontsize=9, color="gray")
    handles = [Patch(color=colors_E4[e], label=f"expert {e}") for e in range(E)
               if e in used or E <= 16]
    if any_dropped:
        handles.append(Patch(color=DROPPED_COLOR, label="dropped"))
    note = "colour = top-1 expert" + (", opacity = router confidence" if confidence == "alpha" else "")
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8,
               frameon=False, title=note, title_fontsize=8)
    fig.suptitle(title or "Routing of image patches and text tokens", fontsize=11)
    return save_png(fig, out_path)


def plot_patch_routing(
    image,
    aux_list: Sequence[MoEAux],
    patch_grid: tuple[int, int],
    token_strings: Sequence[str] | None,
    out_path: str | Path,
    *,
    layer_names: Sequence[str] | None = None,
    text_aux_list: Sequence[MoEAux] | None = None,
    image_index: Tensor | None = None,
    text_index: Tensor | None = None,
    confidence: Literal["alpha", "none"] = "alpha",
    title: str | None = None,
) -> Path:
    """Which expert each patch (over the image) and each text token went to, per MoE layer.

    Args:
        image: what the model saw, as a PIL image, (H, W, C) array or (C, H, W) tensor.
        aux_list: one `MoEAux` per MoE layer from a forward over a batch of one example.
        patch_grid: (gh, gw) patches per column and row.
        token_strings: the text tokens as strings, in order (None: no text panel).
        layer_names: a label per layer (default `moe0`, ...).
        text_aux_list: the aux list of a separate text pass (contrastive tower), per layer.
        image_index / text_index: explicit token positions of the patches (raster order) and of
            the text tokens in every layer's T (default: guessed from modality ids).
        confidence: "alpha" makes a patch more opaque the surer the router was.
    """
    names = list(layer_names) if layer_names is not None else [f"moe{i}" for i in range(len(aux_list))]
    num_text = len(token_strings) if token_strings is not None else None
    layers = [
        layer_routing(
            aux, patch_grid, names[i], image_index=image_index, text_index=text_index,
            text_aux=text_aux_list[i] if text_aux_list is not None and i < len(text_aux_list) else None,
            num_text=num_text,
        )
        for i, aux in enumerate(aux_list)
    ]
    return draw_patch_routing(image, layers, token_strings, out_path, confidence=confidence, title=title)
