"""The entry points of `vlmoe.models.hf`: import a directory by its `model_type`, export an LM,
compose a decoder VLM. See the package docstring."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from vlmoe.models.base import PretrainedModel
from vlmoe.models.decoder import Decoder
from vlmoe.models.hf import bert, causal_lm, vision
from vlmoe.models.hf.files import HFImportError, load_tensors, read_config, save_directory
from vlmoe.models.text import TextTransformer

log = logging.getLogger(__name__)


def model_types() -> dict[str, str]:
    """Supported Hugging Face `model_type`s -> what they become in vlmoe."""
    types = {t: "text (causal LM)" for t in causal_lm.MODEL_TYPES}
    types.update({t: "text (encoder)" for t in bert.MODEL_TYPES})
    types.update({t: "vit (vision tower)" for t in vision.MODEL_TYPES})
    return types


def import_model(directory: str | Path, *, feature_layer: int | None = None) -> PretrainedModel:
    """The vlmoe model for a local Hugging Face directory, weights loaded, tokenizer attached.

    Args:
        feature_layer: vision towers only: None for `last_hidden_state`, a negative n for
            `hidden_states[n]` (LLaVA / MoE-LLaVA use -2); see `vlmoe.models.hf.vision`.
    Raises:
        HFImportError: the directory, its config or its weights cannot be imported exactly.
    """
    directory = Path(directory)
    cfg = read_config(directory)
    mt = cfg["model_type"]
    source = str(directory)
    if feature_layer is not None and mt not in vision.MODEL_TYPES:
        raise HFImportError(f"{source}: feature_layer applies to vision towers, not {mt!r}")
    if mt in causal_lm.MODEL_TYPES:
        model = causal_lm.import_causal_lm(cfg, load_tensors(directory), source)
    elif mt in bert.MODEL_TYPES:
        model = bert.import_bert(cfg, load_tensors(directory), source)
    elif mt in vision.MODEL_TYPES:
        model = vision.import_vision(cfg, load_tensors(directory), source, feature_layer)
    else:
        raise HFImportError(
            f"{directory / 'config.json'}: model_type {mt!r} is not supported; supported: "
            f"{sorted(model_types())}"
        )
    model.tokenizer = _tokenizer(directory, model)
    log.info("imported %s from %s", mt, directory)
    return model.eval()


def _tokenizer(directory: Path, model: PretrainedModel) -> Any:
    return None


def export_model(
    model: PretrainedModel,
    directory: str | Path,
    *,
    max_shard_size: int | None = None,
) -> Path:
    """Write a vlmoe LM (or a `Decoder`'s LM) as a Hugging Face directory that `transformers`
    loads: Llama, Qwen2, Mixtral or Qwen2-MoE, whichever its config maps onto exactly."""
    lm = model.lm if isinstance(model, Decoder) else model
    if not isinstance(lm, TextTransformer):
        raise HFImportError(
            f"only language models export to Hugging Face, got {type(model).__name__}"
        )
    family = causal_lm.export_family(lm.config)
    directory = save_directory(
        directory,
        causal_lm.hf_config(lm.config, family),
        causal_lm.hf_state_dict(lm, family),
        max_shard_size,
    )
    log.info("exported the LM as %s to %s", family, directory)
    return directory


def compose_decoder(*args: Any, **kwargs: Any) -> Decoder:
    raise NotImplementedError
