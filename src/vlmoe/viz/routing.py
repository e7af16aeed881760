"""Which expert each image patch and text token went to, drawn over the image, per MoE layer.

For each MoE layer one panel: the image with every patch filled in the colour of its top-1
expert (the kept expert with the largest routing weight), its opacity following the router's
confidence (the token's probability for that expert), and with top-k routing the k-th expert as
the k-th nested square inside the patch; under it the text tokens as labels filled with their
first expert's colour and framed in their second's. The legend names each expert's modality
group (VL-MoE's image / text / shared experts) when the layer has groups. This is the picture of
V-MoE (Riquelme et al. 2021, Fig. 8) and LIMoE (Mustafa et al. 2022, Fig. 7), where experts
specialise to image regions and to modalities.

The image is downscaled once to at most `MAX_DRAW_SIDE` pixels a side before anything is drawn,
so memory and time do not grow with the input's resolution (a panel is ~270 pixels wide).

Legend: T tokens, K experts per token, E experts, gh x gw patch grid.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from matplotlib.patches import Patch
from PIL import Image
from torch import Tensor

from vlmoe.moe.layer import MoEAux
from vlmoe.viz.common import expert_colors, new_figure, save_png

DROPPED_COLOR = (0.0, 0.0, 0.0, 1.0)  # black: in no qualitative palette used for experts
MAX_DRAW_SIDE = 512  # pixels: a panel is 2.7 in at 100 dpi, so more would never be seen
MODALITY_GROUP_NAMES: tuple[str, ...] = ("image", "text")

# A PIL image, an (H, W[, C]) array or a (C, H, W) tensor.
ImageLike = Any


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
    _, j_T = w_TK.max(dim=1)
    expert_T = ids_TK.gather(1, j_T[:, None]).squeeze(1)
    has_T = kept_TK.any(dim=1)
    expert_T = torch.where(has_T, expert_T, -1).long()
    p_TE = aux.probs_TE.float()
    p_TE = p_TE / p_TE.sum(-1, keepdim=True).clamp_min(1e-20)
    conf_T = p_TE.gather(1, expert_T.clamp_min(0)[:, None]).squeeze(1)
    return expert_T.detach(), torch.where(has_T, conf_T, 0.0).detach()


def token_ranked(aux: MoEAux) -> Tensor:
    """(T, K) int64: every token's kept experts by decreasing routing weight, -1 after them
    (dropped pairs, unused slots). Column 0 is `token_top1`'s expert."""
    ids_TK = aux.expert_ids_TK
    kept_TK = aux.kept_TK & (ids_TK >= 0)
    w_TK = torch.where(kept_TK, aux.weights_TK.float(), float("-inf"))
    order_TK = w_TK.argsort(dim=1, descending=True, stable=True)
    ranked_TK = ids_TK.gather(1, order_TK)
    return torch.where(kept_TK.gather(1, order_TK), ranked_TK, -1).long().detach()


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
    patch_ranked: np.ndarray | None = None  # (gh, gw, K) int: experts by weight, -1 = none
    token_ranked: np.ndarray | None = None  # (N, K) int
    allowed_ME: np.ndarray | None = None  # (M, E) bool: modality groups, None = one pool


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
    ranked_TK = token_ranked(aux)
    patch_expert = patch_conf = token_expert = token_conf = patch_ranked = token_ranks = None
    if image_index is not None:
        patch_expert = expert_T[image_index].reshape(gh, gw).cpu().numpy()
        patch_conf = conf_T[image_index].reshape(gh, gw).cpu().numpy()
        patch_ranked = ranked_TK[image_index].reshape(gh, gw, -1).cpu().numpy()
    if text_aux is not None:
        expert_T, conf_T = token_top1(text_aux)
        ranked_TK = token_ranked(text_aux)
        _, guess_text = default_token_split(text_aux, gh * gw, num_text)
    text_index = guess_text if text_index is None else text_index
    if text_index is not None and text_index.numel():
        token_expert = expert_T[text_index].cpu().numpy()
        token_conf = conf_T[text_index].cpu().numpy()
        token_ranks = ranked_TK[text_index].cpu().numpy()
    allowed = None if aux.allowed_ME is None else aux.allowed_ME.cpu().numpy()
    return LayerRouting(
        name,
        aux.num_experts,
        patch_expert,
        patch_conf,
        token_expert,
        token_conf,
        patch_ranked,
        token_ranks,
        allowed,
    )


def bounded_image(image: ImageLike, max_side: int = MAX_DRAW_SIDE) -> ImageLike:
    """`image` downscaled (aspect kept) so that no side exceeds `max_side`; as it was if it fits.

    PIL images and uint8 arrays are resampled with a box filter over each output pixel's
    footprint (what a display does); other arrays and tensors are subsampled.
    """
    if isinstance(image, Image.Image):
        w, h = image.size
        if max(w, h) <= max_side:
            return image
        scale = max_side / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return image.resize(size, Image.BOX, reducing_gap=2.0)
    if isinstance(image, Tensor) and image.dim() == 3 and image.shape[0] in (1, 3):
        h, w = image.shape[1:]
        step = int(np.ceil(max(h, w) / max_side))
        return image[:, ::step, ::step] if step > 1 else image
    arr = np.asarray(image)
    h, w = arr.shape[:2]
    if max(h, w) <= max_side:
        return arr
    if arr.dtype == np.uint8 and (arr.ndim == 2 or arr.shape[-1] in (1, 3, 4)):
        pil = Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr)
        return np.asarray(bounded_image(pil, max_side))
    step = int(np.ceil(max(h, w) / max_side))
    return arr[::step, ::step]


def _as_rgb(image: ImageLike) -> np.ndarray:
    """PIL image, (H, W[, C]) array or (C, H, W) tensor → (H, W, 3) float in [0, 1], at most
    `MAX_DRAW_SIDE` pixels a side."""
    image = bounded_image(image)
    if isinstance(image, Tensor):
        image = image.detach().float().cpu()
        if image.dim() == 3 and image.shape[0] in (1, 3):
            image = image.permute(1, 2, 0)
        image = image.numpy()
    arr = np.asarray(image)
    integer = np.issubdtype(arr.dtype, np.integer)
    arr = arr.astype(float)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    arr = arr[..., :3]
    if integer or arr.max() > 1.0 + 1e-6:
        arr = arr / 255.0
    elif arr.min() < 0:  # normalized input: stretch back to [0, 1] for display
        arr = (arr - arr.min()) / max(arr.max() - arr.min(), 1e-9)
    return np.clip(arr, 0, 1)


def _overlay_rgba(
    expert_hw: np.ndarray,
    conf_hw: np.ndarray,
    colors_E4: np.ndarray,
    num_experts: int,
    confidence: str,
) -> np.ndarray:
    rgba = np.where(
        expert_hw[..., None] >= 0, colors_E4[np.clip(expert_hw, 0, None)], DROPPED_COLOR
    )
    if confidence == "alpha":
        lo = 1.0 / num_experts
        c = np.clip((conf_hw - lo) / max(1.0 - lo, 1e-9), 0, 1)
        rgba[..., 3] = 0.35 + 0.5 * c
    else:
        rgba[..., 3] = 0.7
    rgba[expert_hw < 0, 3] = 0.7
    return rgba


def _draw_tokens(
    ax, fig, tokens: Sequence[str], colors: Sequence, edges: Sequence | None = None
) -> None:
    """Tokens as rounded labels in reading order, wrapped to the axes width; … on overflow.
    `edges`: a frame colour per token (its second expert), drawn thick; None = thin grey."""
    ax.set_axis_off()
    renderer = fig.canvas.get_renderer()
    to_axes = ax.transAxes.inverted()
    box = ax.get_window_extent(renderer)
    gap_x, gap_y = 12 / max(box.width, 1), 9 / max(box.height, 1)  # px between label boxes
    x, y, line_h = 0.0, 1.0, 0.0
    edges = edges if edges is not None else [None] * len(tokens)
    for tok, color, edge in zip(tokens, colors, edges):
        frame = dict(ec="0.6", lw=0.5) if edge is None else dict(ec=edge, lw=2.5)
        lum = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        t = ax.text(
            x,
            y,
            tok,
            transform=ax.transAxes,
            va="top",
            ha="left",
            fontsize=9,
            color="black" if lum > 0.55 else "white",
            bbox=dict(boxstyle="round,pad=0.25", fc=color, **frame),
        )
        bb = to_axes.transform(t.get_window_extent(renderer))
        w, h = bb[1, 0] - bb[0, 0], bb[1, 1] - bb[0, 1]
        if x > 0 and x + w > 1.0:  # wrap to the next line, or stop when there is none
            if y - line_h - gap_y - h < 0:
                t.remove()
                ax.text(1.0, y, "…", transform=ax.transAxes, va="top", ha="right", fontsize=10)
                return
            x, y = 0.0, y - line_h - gap_y
            t.set_position((x, y))
        x += w + gap_x
        line_h = max(line_h, h)


def _token_colors(experts: np.ndarray, colors_E4: np.ndarray) -> list:
    return [colors_E4[e] if e >= 0 else DROPPED_COLOR for e in experts]


def _token_edges(layer: LayerRouting, n: int, colors_E4: np.ndarray) -> list | None:
    """Each token's second expert's colour (None where it has none), or None with top-1."""
    if layer.token_ranked is None or layer.token_ranked.shape[1] < 2:
        return None
    return [colors_E4[e] if e >= 0 else None for e in layer.token_ranked[:n, 1]]


def expert_group_names(
    allowed_ME: np.ndarray | None, modality_names: Sequence[str] = MODALITY_GROUP_NAMES
) -> list[str] | None:
    """The group of each expert: the modality that owns it, or "cross-modal" when every
    modality may reach it (VL-MoE); None without modality groups."""
    if allowed_ME is None:
        return None
    allowed_ME = np.asarray(allowed_ME, dtype=bool)
    names = []
    for e in range(allowed_ME.shape[1]):
        owners = np.flatnonzero(allowed_ME[:, e])
        if len(owners) == allowed_ME.shape[0] and allowed_ME.shape[0] > 1:
            names.append("cross-modal")
        elif len(owners) == 1:
            m = int(owners[0])
            names.append(modality_names[m] if m < len(modality_names) else f"modality {m}")
        else:
            names.append("+".join(modality_names[m] for m in owners))
    return names


def _legend_note(top_k: int, confidence: str, has_text: bool) -> str:
    """What fill, nested squares, frames and opacity mean."""
    ordinal = {2: "2nd", 3: "3rd"}
    if top_k <= 1:
        note = "colour = expert"
    else:
        inner = ", ".join(f"{ordinal.get(j + 1, f'{j + 1}th')}" for j in range(1, top_k))
        note = (
            f"fill = 1st expert; nested squares = {inner} expert"
            + ("s" if top_k > 2 else "")
            + ("; token frame = 2nd expert" if has_text else "")
        )
    return note + (", opacity = router confidence" if confidence == "alpha" else "")


def _token_rows_inches(token_strings: Sequence[str] | None, width_in: float) -> float:
    """Height to reserve under each image for its wrapped token labels."""
    if not token_strings:
        return 0.0
    chars = sum(len(t) + 2 for t in token_strings)  # label padding and gaps
    lines = max(1, int(np.ceil(chars * 0.065 / width_in)))
    return 0.15 + 0.3 * lines


def _note(ax: Any, text: str, y: float) -> None:
    """A grey note centred in an empty panel."""
    ax.text(
        0.5, y, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="gray"
    )


def draw_patch_routing(
    image: ImageLike,
    layers: Sequence[LayerRouting],
    token_strings: Sequence[str] | None,
    out_path: str | Path,
    *,
    confidence: Literal["alpha", "none"] = "alpha",
    title: str | None = None,
    max_cols: int = 4,
) -> Path:
    """Draw precomputed `LayerRouting` cells (see `plot_patch_routing`); a PNG at `out_path`.

    One cell per layer, after a first cell with the input: the image with its patches coloured
    by top-1 expert, and under it the text tokens as labels coloured the same way.
    """
    if not layers:
        raise ValueError("draw_patch_routing: no MoE layers to draw (is the model dense?)")
    rgb = _as_rgb(image)
    H, W = rgb.shape[:2]
    E = max(layer.num_experts for layer in layers)
    colors_E4 = expert_colors(E)
    has_text = bool(token_strings) and any(layer.token_expert is not None for layer in layers)
    has_image = any(layer.patch_expert is not None for layer in layers)
    top_k = max(
        (
            r.shape[-1]
            for layer in layers
            for r in (layer.patch_ranked, layer.token_ranked)
            if r is not None
        ),
        default=1,
    )
    groups = next(
        (expert_group_names(x.allowed_ME) for x in layers if x.allowed_ME is not None), None
    )
    cells = 1 + len(layers)
    ncols = min(max_cols, cells)
    nrows = int(np.ceil(cells / ncols))
    cell_w, img_h = 2.7, 2.7 * H / W
    tok_h = _token_rows_inches(token_strings, cell_w) if has_text else 0.0
    fig_w = cell_w * ncols + 0.3
    title = title or default_title(has_image, has_text)
    title = "\n".join(textwrap.fill(line, width=int(fig_w * 12)) for line in title.split("\n"))
    legend_rows = int(np.ceil((E + 1) / max(1, int(fig_w / (1.7 if groups else 1.15)))))
    top_in = 0.35 + 0.2 * (title.count("\n") + 1)
    bottom_in = 0.45 + 0.2 * legend_rows
    ratios = [img_h, tok_h] * nrows if has_text else [img_h] * nrows
    gap_in = 0.4  # between grid rows: room for the next panel's title
    fig = new_figure(fig_w, sum(ratios) + gap_in * (len(ratios) - 1) + top_in + bottom_in)
    fig.set_layout_engine("none")
    fig_h = fig.get_figheight()
    grid = fig.add_gridspec(
        len(ratios),
        ncols,
        height_ratios=ratios,
        left=0.15 / fig.get_figwidth(),
        right=1 - 0.15 / fig.get_figwidth(),
        top=1 - top_in / fig_h,
        bottom=bottom_in / fig_h,
        hspace=gap_in / float(np.mean(ratios)),
        wspace=0.08,
    )
    step = 2 if has_text else 1

    def cell_axes(c: int):
        r, col = divmod(c, ncols)
        img_ax = fig.add_subplot(grid[r * step, col])
        tok_ax = fig.add_subplot(grid[r * step + 1, col]) if has_text else None
        img_ax.set_axis_off()
        if tok_ax is not None:
            tok_ax.set_axis_off()
        return img_ax, tok_ax

    ax, tax = cell_axes(0)
    ax.imshow(rgb, interpolation="nearest")
    ax.set_title("input", fontsize=10)
    if tax is not None:
        _draw_tokens(tax, fig, token_strings, [(1.0, 1.0, 1.0, 1.0)] * len(token_strings))
    used: set[int] = set()
    any_dropped = False
    for c, layer in enumerate(layers, start=1):
        ax, tax = cell_axes(c)
        ax.set_title(layer.name, fontsize=10)
        if layer.patch_expert is not None:
            _draw_patches(ax, rgb, layer, colors_E4, confidence)
            used.update(int(e) for e in np.unique(layer.patch_expert) if e >= 0)
            any_dropped |= bool((layer.patch_expert < 0).any())
        else:
            _note(ax, "no image tokens\nin this layer", y=0.5)
        if tax is not None and layer.token_expert is not None:
            n = min(len(token_strings), len(layer.token_expert))
            _draw_tokens(
                tax,
                fig,
                token_strings[:n],
                _token_colors(layer.token_expert[:n], colors_E4),
                _token_edges(layer, n, colors_E4),
            )
            used.update(int(e) for e in layer.token_expert[:n] if e >= 0)
            any_dropped |= bool((layer.token_expert[:n] < 0).any())
        elif tax is not None:
            _note(tax, "no text tokens in this layer", y=0.6)
    for layer in layers:  # later choices are drawn too: they belong in the legend
        for r in (layer.patch_ranked, layer.token_ranked):
            if r is not None:
                used.update(int(e) for e in np.unique(r) if e >= 0)
    handles = [
        Patch(color=colors_E4[e], label=f"expert {e}" + (f" ({groups[e]})" if groups else ""))
        for e in range(E)
        if e in used or E <= 16
    ]
    if any_dropped:
        handles.append(Patch(color=DROPPED_COLOR, label="dropped (no expert)"))
    note = _legend_note(top_k, confidence, has_text)
    if groups:
        note += "\nmodality groups: " + "; ".join(
            f"{g}: {_ranges([e for e in range(E) if groups[e] == g])}"
            for g in dict.fromkeys(groups)
        )
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=max(1, min(len(handles), int(fig_w / (1.7 if groups else 1.15)))),
        fontsize=8,
        frameon=False,
        title=note,
        title_fontsize=8,
    )
    fig.suptitle(title, fontsize=11, y=1 - 0.1 / fig_h, va="top")
    return save_png(fig, out_path)


def _nested_squares(ranked_hwk: np.ndarray, colors_E4: np.ndarray) -> np.ndarray:
    """(gh*n, gw*n, 4) RGBA with n = 2K: choice j >= 1 of each patch as the j-th nested square
    (centred, side (K - j) / K of the patch); transparent elsewhere and where j has no expert."""
    gh, gw, K = ranked_hwk.shape
    n = 2 * K
    out = np.zeros((gh, n, gw, n, 4))
    for j in range(1, K):
        e_hw = ranked_hwk[..., j]
        rgba = np.where(e_hw[..., None] >= 0, colors_E4[np.clip(e_hw, 0, None)], 0.0)
        rgba[..., 3] = np.where(e_hw >= 0, 0.9, 0.0)
        out[:, j : n - j, :, j : n - j] = rgba[:, None, :, None]
    return out.reshape(gh * n, gw * n, 4)


def default_title(has_image: bool, has_text: bool) -> str:
    """The picture's title, naming only what it shows."""
    what = " and ".join(
        w for w, shown in (("image patch", has_image), ("text token", has_text)) if shown
    )
    return f"Which expert each {what or 'token'} went to"


def _ranges(ids: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    parts, start = [], None
    for i, e in enumerate(ids):
        if start is None:
            start = e
        if i + 1 == len(ids) or ids[i + 1] != e + 1:
            parts.append(f"{start}" if start == e else f"{start}-{e}")
            start = None
    return ", ".join(parts)


def _draw_patches(
    ax, rgb: np.ndarray, layer: LayerRouting, colors_E4: np.ndarray, confidence: str
) -> None:
    H, W = rgb.shape[:2]
    gh, gw = layer.patch_expert.shape
    ax.imshow(rgb, interpolation="nearest")
    overlay = _overlay_rgba(
        layer.patch_expert, layer.patch_conf, colors_E4, layer.num_experts, confidence
    )
    extent = (-0.5, W - 0.5, H - 0.5, -0.5)
    ax.imshow(overlay, extent=extent, interpolation="nearest")
    if layer.patch_ranked is not None and layer.patch_ranked.shape[-1] > 1:
        squares = _nested_squares(layer.patch_ranked, colors_E4)
        ax.imshow(squares, extent=extent, interpolation="nearest")
    for i in range(1, gh):
        ax.axhline(i * H / gh - 0.5, color="white", lw=0.4, alpha=0.5)
    for j in range(1, gw):
        ax.axvline(j * W / gw - 0.5, color="white", lw=0.4, alpha=0.5)
    if gh * gw <= 64 and (layer.patch_ranked is None or layer.patch_ranked.shape[-1] == 1):
        for (i, j), e in np.ndenumerate(layer.patch_expert):
            ax.text(
                (j + 0.5) * W / gw - 0.5,
                (i + 0.5) * H / gh - 0.5,
                str(e) if e >= 0 else "×",
                ha="center",
                va="center",
                fontsize=7,
                color="white",
                fontweight="bold",
            )


def plot_patch_routing(
    image: ImageLike,
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
    names = (
        list(layer_names) if layer_names is not None else [f"moe{i}" for i in range(len(aux_list))]
    )
    num_text = len(token_strings) if token_strings is not None else None
    layers = [
        layer_routing(
            aux,
            patch_grid,
            names[i],
            image_index=image_index,
            text_index=text_index,
            text_aux=text_aux_list[i]
            if text_aux_list is not None and i < len(text_aux_list)
            else None,
            num_text=num_text,
        )
        for i, aux in enumerate(aux_list)
    ]
    return draw_patch_routing(
        image, layers, token_strings, out_path, confidence=confidence, title=title
    )
