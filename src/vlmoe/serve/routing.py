"""The routing of one request, as JSON: for each MoE layer, the experts each image patch and
each text token went to, with their combine weights.

This is the per-example view of V-MoE (Riquelme et al. 2021, Fig. 8) and LIMoE (Mustafa et al.
2022, Fig. 7) that `vlmoe inspect` draws as a picture (`vlmoe.viz.routing`); here it goes back
to the client, and the web page colours the patches and tokens with it. One record per layer:

    {"layer": "lm.transformer.blocks.1.ffn", "num_experts": 4, "top_k": 2,
     "patch_grid": [4, 4],
     "patches": {"experts": [[2, 0], ...], "weights": [[0.61, 0.39], ...]},   # raster order
     "tokens": [{"token": "red", "experts": [1, 3], "weights": [0.7, 0.3]}, ...]}

Experts are listed by weight, largest first; a pair that capacity dropped is left out (an empty
list means no expert computed that token). `patches` or `tokens` is null in a layer that did
not see them (the vision encoder of a decoder sees no text).

Legend: T tokens, K experts per token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from vlmoe.eval.routing import moe_layer_names
from vlmoe.moe.layer import MoEAux
from vlmoe.viz.routing import default_token_split


def _pairs(aux: MoEAux, index_T: Tensor) -> dict[str, list[list[Any]]]:
    """Kept (expert, weight) pairs of the tokens at `index_T`, largest weight first."""
    ids_TK = aux.expert_ids_TK[index_T].cpu()
    kept_TK = aux.kept_TK[index_T].cpu() & (ids_TK >= 0)
    w_TK = torch.where(kept_TK, aux.weights_TK[index_T].float().cpu(), float("-inf"))
    w_TK, order_TK = w_TK.sort(dim=1, descending=True)
    ids_TK = ids_TK.gather(1, order_TK)
    experts, weights = [], []
    for ids, ws in zip(ids_TK.tolist(), w_TK.tolist()):
        keep = [j for j, w in enumerate(ws) if w != float("-inf")]
        experts.append([ids[j] for j in keep])
        weights.append([round(ws[j], 4) for j in keep])
    return {"experts": experts, "weights": weights}


def _indices(out: Any, aux: MoEAux, grid: tuple[int, int] | None, num_text: int):
    """(image_index, text_index) of an aux's tokens: from the output's masks when the aux saw
    the output's sequence, else guessed from the aux's modality ids."""
    mask = getattr(out, "image_token_mask", None)
    modality = getattr(out, "modality", None)
    T = aux.expert_ids_TK.shape[0]
    if mask is not None and mask.shape[0] == 1 and mask.shape[1] == T:
        image_index = torch.nonzero(mask[0]).flatten()
        text_index = torch.nonzero(modality[0] == 1).flatten() if modality is not None else None
        return image_index, text_index
    if grid is None:
        return None, torch.arange(T)
    return default_token_split(aux, grid[0] * grid[1], num_text or None)


def layer_record(
    name: str,
    aux: MoEAux,
    grid: tuple[int, int] | None,
    image_index: Tensor | None,
    text_index: Tensor | None,
    tokens: Sequence[str],
    text_aux: MoEAux | None = None,
) -> dict[str, Any]:
    """One layer's record (see the module docstring)."""
    record: dict[str, Any] = {
        "layer": name,
        "num_experts": aux.num_experts,
        "top_k": aux.top_k,
        "patch_grid": list(grid) if grid is not None else None,
        "patches": None,
        "tokens": None,
    }
    if grid is not None and image_index is not None and image_index.numel() == grid[0] * grid[1]:
        record["patches"] = _pairs(aux, image_index)
    if text_aux is not None:
        aux = text_aux
    if text_index is not None and text_index.numel() and tokens:
        text_index = text_index[: len(tokens)]
        pairs = _pairs(aux, text_index)
        record["tokens"] = [
            {"token": t, "experts": e, "weights": w}
            for t, e, w in zip(tokens, pairs["experts"], pairs["weights"])
        ]
    return record


def capture_routing(model: torch.nn.Module, out: Any, tokens: Sequence[str]) -> list[dict]:
    """Routing records of every MoE layer from the output of a forward over ONE example.

    Args:
        model: the model that produced `out` (for the layer names).
        out: a model output with `moe_aux` (a contrastive output's `image_moe_aux` and
            `text_moe_aux` are paired layer by layer).
        tokens: the text tokens' strings, in order, as the model saw them.
    """
    names = moe_layer_names(model)
    grid = getattr(out, "patch_grid", None)
    grid = tuple(grid) if grid is not None else None
    image_aux = list(getattr(out, "image_moe_aux", None) or [])
    text_aux = list(getattr(out, "text_moe_aux", None) or [])
    pairs: list[tuple[MoEAux, MoEAux | None]]
    if image_aux or text_aux:  # a shared tower: the image pass and the text pass, per layer
        n = max(len(image_aux), len(text_aux))
        pairs = [
            (image_aux[i] if i < len(image_aux) else text_aux[i], text_aux[i] if text_aux else None)
            for i in range(n)
        ]
    else:
        pairs = [(aux, None) for aux in out.moe_aux]
    if len(names) != len(pairs):
        names = [f"moe{i}" for i in range(len(pairs))]
    records = []
    for name, (aux, t_aux) in zip(names, pairs):
        image_index, text_index = _indices(out, aux, grid, len(tokens))
        if t_aux is not None:
            text_index = torch.nonzero(t_aux.valid_T).flatten()
        records.append(layer_record(name, aux, grid, image_index, text_index, tokens, t_aux))
    return records
