"""The entry points of `vlmoe.models.hf`: import a directory by its `model_type`, export an LM.
See the package docstring."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from vlmoe.data.tokenizer import Tokenizer
from vlmoe.models.base import PretrainedModel
from vlmoe.models.checkpoint import save_tokenizer
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


def _tokenizer(directory: Path, model: PretrainedModel) -> Tokenizer | None:
    """The directory's `tokenizer.json` as a vlmoe `Tokenizer` (which adds an `<image>` token
    when missing); a text model's vocabulary grows to cover any token it adds."""
    if not (directory / "tokenizer.json").is_file():
        return None
    tokenizer = Tokenizer.from_pretrained(directory)
    if isinstance(model, TextTransformer) and tokenizer.vocab_size > model.config.vocab_size:
        grow_vocab(model, tokenizer.vocab_size)
    return tokenizer


@torch.no_grad()
def grow_vocab(lm: TextTransformer, vocab_size: int) -> None:
    """Give `lm` rows for token ids up to `vocab_size`; new input and output rows start at the
    mean of the existing ones (as LLaVA does for its added tokens)."""
    old = lm.config.vocab_size
    if vocab_size <= old:
        return
    log.info(
        "growing the vocabulary from %d to %d tokens for added special tokens", old, vocab_size
    )
    lm.config = dataclasses.replace(lm.config, vocab_size=vocab_size)
    lm.embed = _grown(
        lm.embed.weight, vocab_size, nn.Embedding(vocab_size, lm.embed.weight.shape[1])
    )
    if lm.lm_head is not None:
        head = nn.Linear(lm.lm_head.in_features, vocab_size, bias=lm.lm_head.bias is not None)
        lm.lm_head = _grown(lm.lm_head.weight, vocab_size, head)
        if head.bias is not None:
            head.bias[old:] = 0.0


def _grown(weight: Tensor, vocab_size: int, module: nn.Module) -> nn.Module:
    module = module.to(device=weight.device, dtype=weight.dtype)
    module.weight[: weight.shape[0]] = weight
    module.weight[weight.shape[0] :] = weight.mean(0)
    return module


def export_model(
    model: PretrainedModel,
    directory: str | Path,
    *,
    max_shard_size: int | None = None,
    tokenizer: Tokenizer | None = None,
) -> Path:
    """Write a vlmoe LM (or a `Decoder`'s LM) as a Hugging Face directory that `transformers`
    loads: Llama, Qwen2, Mixtral or Qwen2-MoE, whichever its config maps onto exactly; with
    `tokenizer` (or the model's own), its tokenizer.json too. Shards past `max_shard_size`
    bytes."""
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
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is not None:
        save_tokenizer(tokenizer, directory)
    log.info("exported the LM as %s to %s", family, directory)
    return directory
