"""`inspect_model`: run one image (and text) through a model and draw where its tokens went.

This is what `vlmoe inspect RUN_OR_MODEL --image X [--text Y]` calls. The model's task makes
the prediction (`Task.predict`: the same pre-processing and tokenization as training), and the
routing of that forward pass is drawn into `out_dir`:

- `routing.png`: per MoE layer, the image with each patch coloured by its top-1 expert and the
  text tokens coloured the same way (`vlmoe.viz.routing.draw_patch_routing`);
- `expert_load.png`: this example's tokens per expert, per layer and modality;
- `routing.json`: the same top-1 routing as numbers (per layer: the patch grid of expert ids,
  and a list of (token, expert, confidence)).

A captioning model given no text captions the image first and inspects the caption's tokens.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vlmoe.data.images import load_image, to_rgb_array
from vlmoe.eval.routing import RoutingStats, moe_layer_names
from vlmoe.moe.layer import MoEAux
from vlmoe.nn.modality import MODALITY_TEXT
from vlmoe.viz.expert_load import plot_expert_load
from vlmoe.viz.routing import LayerRouting, draw_patch_routing, layer_routing

logger = logging.getLogger(__name__)


@dataclass
class InspectResult:
    """What `inspect_model` wrote, and the routing it drew."""

    routing_png: Path
    expert_load_png: Path | None
    routing_json: Path
    layers: list[LayerRouting]
    text_tokens: list[str] = field(default_factory=list)
    caption: str | None = None  # the generated caption, for a captioning model given no text

    def paths(self) -> list[Path]:
        return [p for p in (self.routing_png, self.expert_load_png, self.routing_json) if p]


def load_rgb(image: str | Path | Image.Image | np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 array from a path (via `vlmoe.data.images.load_image`), PIL or array."""
    if isinstance(image, str | Path):
        return load_image(image)
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"))
    return to_rgb_array(np.asarray(image))


def _layer_indices(out: Any, aux: MoEAux) -> tuple[Tensor | None, Tensor | None]:
    """Patch and text positions of an aux's tokens when it saw the output's sequence."""
    mask = getattr(out, "image_token_mask", None)
    modality = getattr(out, "modality", None)
    if mask is None or mask.shape[0] != 1 or aux.expert_ids_TK.shape[0] != mask.shape[1]:
        return None, None
    image_index = torch.nonzero(mask[0]).flatten()
    text_index = None
    if modality is not None and aux.modality_T is not None:
        text_index = torch.nonzero(modality[0] == MODALITY_TEXT).flatten()
    return image_index, text_index


@torch.no_grad()
def inspect_model(
    model: torch.nn.Module,
    task: Any,
    image: str | Path | Image.Image | np.ndarray,
    text: str | None = None,
    out_dir: str | Path = "inspect",
    *,
    confidence: Literal["alpha", "none"] = "alpha",
) -> InspectResult:
    """Route one image (+ text) through `model` via its `task` and write the routing plots.

    Args:
        model: a vlmoe model with MoE layers.
        task: the model's `vlmoe.tasks.Task` (`vlmoe.recipes.run.load_trained` gives both).
        image: an image path, PIL image or (H, W, 3) uint8 array.
        text: a question, caption or prompt; a captioning model given none captions the image.
    Raises:
        ValueError: the model has no MoE layers.
        vlmoe.data.errors.DataError: an unreadable image file.
    """
    layer_names = moe_layer_names(model)
    if not layer_names:
        raise ValueError(
            f"{type(model).__name__} has no MoE layers: nothing to inspect (dense model)"
        )
    rgb = load_rgb(image)
    was_training = model.training
    model.eval()
    try:
        pred = task.predict(model, rgb, text)
    finally:
        model.train(was_training)
    caption = pred.text if pred.kind == "caption" and not text else None
    return _write(pred.output, layer_names, rgb, pred.tokens, caption, Path(out_dir), confidence)


def _write(out, layer_names, rgb, tokens, caption, out_dir: Path, confidence) -> InspectResult:
    aux_list: list[MoEAux] = list(out.moe_aux)
    text_aux = list(getattr(out, "text_moe_aux", []) or [])
    if text_aux:  # contrastive: the image pass and the text pass are separate lists
        aux_list = list(out.image_moe_aux) or aux_list[: len(layer_names)]
    names = (
        layer_names
        if len(layer_names) == len(aux_list)
        else [f"moe{i}" for i in range(len(aux_list))]
    )
    grid = getattr(out, "patch_grid", None) or _grid_from_mask(out)
    layers = []
    for i, aux in enumerate(aux_list):
        image_index, text_index = _layer_indices(out, aux)
        layers.append(
            layer_routing(
                aux,
                grid,
                names[i],
                image_index=image_index,
                text_index=text_index,
                text_aux=text_aux[i] if i < len(text_aux) else None,
                num_text=len(tokens) or None,
            )
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    title = "Which expert each image patch and text token went to"
    if caption is not None:
        title += (
            f"\n(generated caption: {caption!r})"
            if caption
            else "\n(the generated caption is empty)"
        )
    side = max(256, *rgb.shape[:2])  # what the model saw (a square resize), drawn sharp
    shown = np.asarray(Image.fromarray(rgb).resize((side, side), Image.LANCZOS))
    routing_png = draw_patch_routing(
        shown,
        layers,
        tokens or None,
        out_dir / "routing.png",
        confidence=confidence,
        title=title,
    )
    stats = RoutingStats(names)
    stats.update(aux_list + text_aux)
    load_png = plot_expert_load(
        stats.load_LME(),
        out_dir / "expert_load.png",
        layer_names=names,
        title="Expert load for this example",
    )
    routing_json = out_dir / "routing.json"
    routing_json.write_text(json.dumps(_routing_record(layers, tokens, caption), indent=1) + "\n")
    logger.debug("wrote %s, %s and %s", routing_png, load_png, routing_json)
    return InspectResult(routing_png, load_png, routing_json, layers, tokens, caption)


def _grid_from_mask(out: Any) -> tuple[int, int]:
    """A square patch grid from the number of image tokens (external vision encoders)."""
    mask = getattr(out, "image_token_mask", None)
    n = int(mask[0].sum()) if mask is not None else 0
    side = int(np.sqrt(n))
    if n == 0 or side * side != n:
        raise ValueError(
            f"cannot tell the patch layout of {n} image tokens (the model reports no patch_grid)"
        )
    return side, side


def _routing_record(layers: Sequence[LayerRouting], tokens: Sequence[str], caption) -> dict:
    record: dict[str, Any] = {"caption": caption, "layers": []}
    for layer in layers:
        entry: dict[str, Any] = {"name": layer.name, "num_experts": layer.num_experts}
        if layer.patch_expert is not None:
            entry["patch_experts"] = layer.patch_expert.tolist()
            entry["patch_confidence"] = np.round(layer.patch_conf, 4).tolist()
        if layer.token_expert is not None:
            entry["tokens"] = [
                {"token": t, "expert": int(e), "confidence": round(float(c), 4)}
                for t, e, c in zip(tokens, layer.token_expert, layer.token_conf)
            ]
        record["layers"].append(entry)
    return record
