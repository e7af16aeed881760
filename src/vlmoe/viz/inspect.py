"""`inspect_model`: run one image (and text) through a model and draw where its tokens went.

This is what `vlmoe inspect RUN_OR_MODEL --image X [--text Y]` calls. It prepares the image at
the model's input size, tokenizes the text with the model's tokenizer, runs one forward pass,
and writes into `out_dir`:

- `routing.png`: per MoE layer, the image with each patch coloured by its top-1 expert and the
  text tokens coloured the same way (`vlmoe.viz.routing.plot_patch_routing`);
- `expert_load.png`: this example's tokens per expert, per layer and modality;
- `routing.json`: the same routing as numbers (per layer: the patch grid of top-1 expert ids
  and of all kept top-k experts, and per token its top-1 expert, confidence and all experts).

A decoder model given no text captions the image first and inspects the caption's tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vlmoe.eval.routing import RoutingStats, moe_layer_names
from vlmoe.io import write_json_atomic
from vlmoe.moe.layer import MoEAux
from vlmoe.viz.expert_load import plot_expert_load
from vlmoe.viz.routing import (
    MAX_DRAW_SIDE,
    LayerRouting,
    default_title,
    draw_patch_routing,
    layer_routing,
)

logger = logging.getLogger(__name__)

Preprocess = Callable[[np.ndarray], Tensor]
DISPLAY_MIN_SIDE = 256  # a 32-pixel model input is drawn enlarged, pixels kept sharp


@dataclass
class InspectResult:
    """What `inspect_model` wrote, and the routing it drew."""

    routing_png: Path
    expert_load_png: Path | None
    routing_json: Path
    layers: list[LayerRouting]
    text_tokens: list[str] = field(default_factory=list)
    caption: str | None = None  # the generated caption, for a decoder given no text

    def paths(self) -> list[Path]:
        return [p for p in (self.routing_png, self.expert_load_png, self.routing_json) if p]


def model_image_size(model: torch.nn.Module) -> tuple[int, int]:
    """(image_size, in_channels) the model expects, from its config."""
    cfg = model.config
    vision = getattr(cfg, "vision", None) if not hasattr(cfg, "image_size") else cfg
    if vision is None:
        raise ValueError(
            "this model's vision encoder is external (config.vision is null); pass `preprocess` "
            "to inspect_model to prepare images for it"
        )
    return vision.image_size, vision.in_channels


def load_rgb(image: str | Path | Image.Image | np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 array from a path (via `vlmoe.data.images.load_image`), PIL or array."""
    if isinstance(image, str | Path):
        from vlmoe.data.images import load_image

        return load_image(image)
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return arr if arr.ndim == 3 else np.repeat(arr[..., None], 3, axis=-1)


def default_preprocess(image_size: int, in_channels: int = 3) -> Preprocess:
    """What training does (`vlmoe.data.transforms`): a bilinear resize to image_size x
    image_size, then `(x / 255 - 0.5) / 0.5`, giving (C, H, W) float in [-1, 1]."""
    from vlmoe.data.transforms import resize_image, to_tensor

    def preprocess(rgb: np.ndarray) -> Tensor:
        x = to_tensor(np.array(resize_image(rgb, (image_size, image_size))))  # a writable copy
        return x.mean(0, keepdim=True) if in_channels == 1 else x

    return preprocess


def tokenize(tokenizer: Any, text: str, max_len: int | None = None) -> tuple[list[int], list[str]]:
    """(ids, token strings) of `text` as training encodes it.

    With vlmoe's `Tokenizer` (`vlmoe.data.tokenizer`): `encode(text, add_special=True)`, so the
    ids are wrapped in <bos> ... <eos> as in training. With a plain `tokenizers.Tokenizer`:
    its own `encode`.
    """
    if hasattr(tokenizer, "backend") and hasattr(tokenizer, "bos_id"):
        ids = tokenizer.encode(text, add_special=True, max_len=max_len)
        return ids, [_token_string(tokenizer, i) for i in ids]
    enc = tokenizer.encode(text)
    ids, tokens = list(enc.ids), list(enc.tokens)
    if max_len is not None:
        ids, tokens = ids[:max_len], tokens[:max_len]
    return ids, tokens


def _token_string(tokenizer: Any, i: int) -> str:
    backend = getattr(tokenizer, "backend", tokenizer)
    token = (
        str(backend.id_to_token(i)) if hasattr(backend, "id_to_token") else tokenizer.decode([i])
    )
    # BPE word-start markers (Metaspace "▁", byte-level "Ġ") are not part of the word.
    return token.replace("▁", "").replace("Ġ", "") or token


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids))


def _special_id(tokenizer: Any, role: str) -> int | None:
    """The id of "bos" or "eos": vlmoe's `bos_id`/`eos_id`, else a `[BOS]`/`<bos>` token."""
    value = getattr(tokenizer, f"{role}_id", None)
    if isinstance(value, int):
        return value
    if hasattr(tokenizer, "token_to_id"):
        for tok in (f"[{role.upper()}]", f"<{role}>", f"<|{role}|>"):
            i = tokenizer.token_to_id(tok)
            if i is not None:
                return int(i)
    return None


def _forward(model, images, ids, mask):
    arch = getattr(model, "architecture", None)
    if arch == "vit":
        return model(images)
    if ids is None and arch in ("fusion", "contrastive", "decoder"):
        return model(images=images)
    return model(images=images, input_ids=ids, attention_mask=mask)


def _layer_indices(out: Any, aux: MoEAux) -> tuple[Tensor | None, Tensor | None]:
    """Patch and text positions of an aux's tokens when it saw the output's sequence."""
    mask = getattr(out, "image_token_mask", None)
    modality = getattr(out, "modality", None)
    if mask is None or mask.shape[0] != 1 or aux.expert_ids_TK.shape[0] != mask.shape[1]:
        return None, None
    image_index = torch.nonzero(mask[0]).flatten()
    text_index = None
    if modality is not None and aux.modality_T is not None:
        text_index = torch.nonzero(modality[0] == 1).flatten()
    return image_index, text_index


@torch.no_grad()
def inspect_model(
    model: torch.nn.Module,
    image: str | Path | Image.Image | np.ndarray,
    text: str | None = None,
    out_dir: str | Path = "inspect",
    *,
    tokenizer: Any = None,
    preprocess: Preprocess | None = None,
    confidence: Literal["alpha", "none"] = "alpha",
    max_new_tokens: int = 16,
) -> InspectResult:
    """Route one image (+ text) through `model` and write the routing plots into `out_dir`.

    Args:
        model: a vlmoe model (vit, fusion, contrastive or decoder) with MoE layers.
        image: an image path, PIL image or (H, W, 3) uint8 array.
        text: a question, caption or prompt; a decoder given none captions the image first.
        tokenizer: defaults to `model.tokenizer`.
        preprocess: (H, W, 3) uint8 -> (C, H, W) float tensor; defaults to training's: a
            bilinear resize to the model's image size, scaled to [-1, 1].
    Raises:
        ValueError: the model has no MoE layers, or text is given but no tokenizer is known.
        vlmoe.data.errors.DataError: an unreadable image file.
    """
    layer_names = moe_layer_names(model)
    if not layer_names:
        raise ValueError(
            f"{type(model).__name__} has no MoE layers: nothing to inspect (dense model)"
        )
    rgb = load_rgb(image)
    if preprocess is None:
        preprocess = default_preprocess(*model_image_size(model))
    device = next(model.parameters()).device
    images = preprocess(rgb)[None].to(device)
    shown = display_image(rgb)  # drawn from here on: the full-size image is no longer needed
    del rgb
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    arch = getattr(model, "architecture", None)
    was_training = model.training
    model.eval()
    try:
        caption = None
        if text is None and arch == "decoder" and tokenizer is not None:
            caption = _caption(model, tokenizer, images, max_new_tokens)
            text = _decode(tokenizer, caption[0][1:]).strip()
        ids = mask = None
        tokens: list[str] = []
        if text is not None and arch != "vit":
            if tokenizer is None:
                raise ValueError("text given but the model has no tokenizer: pass `tokenizer`")
            max_len = getattr(model.config, "max_seq_len", None)
            if caption is not None:  # the decoder's own caption, after <bos> as generated
                ids_list, tokens = caption
            else:
                ids_list, tokens = tokenize(tokenizer, text, max_len)
            ids = torch.tensor([ids_list], dtype=torch.long, device=device)
            mask = torch.ones_like(ids)
        out = _forward(model, images, ids, mask)
    finally:
        model.train(was_training)
    return _write(
        out, layer_names, shown, tokens, text if caption else None, Path(out_dir), confidence
    )


def _caption(model, tokenizer, images: Tensor, max_new_tokens: int) -> tuple[list[int], list[str]]:
    """Greedy caption after <bos>: (ids with <bos> first, token strings), <eos> left out."""
    bos, eos = _special_id(tokenizer, "bos"), _special_id(tokenizer, "eos")
    bos = bos if bos is not None else 0
    prompt = torch.tensor([[bos]], device=images.device)
    new = model.generate(
        prompt,
        images=images,
        max_new_tokens=max_new_tokens,
        stop_tokens=(eos,) if eos is not None else (),
    )
    ids = [bos]
    for i in new[0].tolist():
        if i == eos:
            break
        ids.append(i)
    return ids, [_token_string(tokenizer, i) for i in ids]


def display_image(rgb: np.ndarray) -> np.ndarray:
    """What the model saw (a square resize) for drawing: `DISPLAY_MIN_SIDE` to `MAX_DRAW_SIDE`
    pixels a side, so a huge input is downscaled once, here, and never drawn at full size."""
    side = int(np.clip(max(rgb.shape[:2]), DISPLAY_MIN_SIDE, MAX_DRAW_SIDE))
    image = Image.fromarray(rgb)
    if max(rgb.shape[:2]) > side:  # box-reduce first: a 64-megapixel input costs one pass
        return np.asarray(image.resize((side, side), Image.BOX, reducing_gap=2.0))
    return np.asarray(image.resize((side, side), Image.LANCZOS))  # small inputs drawn sharp


def _write(out, layer_names, shown, tokens, caption, out_dir: Path, confidence) -> InspectResult:
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
    title = default_title(
        any(x.patch_expert is not None for x in layers),
        bool(tokens) and any(x.token_expert is not None for x in layers),
    )
    if caption is not None:
        title += (
            f"\n(generated caption: {caption!r})"
            if caption
            else "\n(the generated caption is empty)"
        )
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
        reachable_LME=stats.reachable_LME(),
    )
    routing_json = out_dir / "routing.json"
    write_json_atomic(routing_json, _routing_record(layers, tokens, caption), indent=1)
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
            if layer.patch_ranked is not None:  # (gh, gw, K): every kept expert, by weight
                entry["patch_experts_topk"] = layer.patch_ranked.tolist()
        if layer.token_expert is not None:
            ranked = layer.token_ranked
            entry["tokens"] = [
                {"token": t, "expert": int(e), "confidence": round(float(c), 4)}
                | ({"experts": [int(x) for x in ranked[i] if x >= 0]} if ranked is not None else {})
                for i, (t, e, c) in enumerate(zip(tokens, layer.token_expert, layer.token_conf))
            ]
        record["layers"].append(entry)
    return record
