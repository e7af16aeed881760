"""What the two single-tower image-text models share (VLMo, Bao et al. 2022; LIMoE, Mustafa et
al. 2022): patch and token embeddings into one width, each tagged with a learned modality-type
embedding and a modality id (image 0, text 1, padding -1) for the MoE layers.

`FusionModel` concatenates the two embedded sequences and runs them together; `ContrastiveModel`
runs them through the tower in separate passes. Both inherit the embedding step from here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vlmoe.models.base import PretrainedModel
from vlmoe.models.config import ImageTextConfig
from vlmoe.models.embed import ImageEmbed, TokenEmbed, text_modality, valid_mask
from vlmoe.nn.attention import positions_from_mask

IMAGE, TEXT = 0, 1


class ImageTextModel(PretrainedModel):
    """Base of the fusion and contrastive models: `embed_image` and `embed_text`."""

    config: ImageTextConfig  # FusionConfig or ContrastiveConfig, both with a `transformer`

    def __init__(self, config: ImageTextConfig, text_embed: bool = True) -> None:
        super().__init__(config)
        dim = config.transformer.dim
        self.image_embed = ImageEmbed(
            config.image_size,
            config.patch_size,
            config.in_channels,
            dim,
            config.pos_embed,
            patch_embed=config.patch_embed,
            stem_channels=config.stem_channels,
            tower=config.tower,
        )
        # A model with its own text tower (two-tower contrastive) embeds text there instead.
        self.text_embed = (
            TokenEmbed(config.vocab_size, dim, config.max_seq_len) if text_embed else None
        )
        self.type_embed = nn.Embedding(2, dim)
        nn.init.normal_(self.type_embed.weight, std=0.02)

    def embed_image(self, images_BCHW: Tensor) -> tuple[Tensor, Tensor]:
        """images (B, C, H, W) -> (patch tokens (B, N, D), modality ids (B, N), all IMAGE)."""
        x_BND = self.image_embed(images_BCHW) + self.type_embed.weight[IMAGE]
        modality_BN = torch.full(x_BND.shape[:2], IMAGE, dtype=torch.long, device=x_BND.device)
        return x_BND, modality_BN

    def embed_text(
        self, input_ids_BL: Tensor, attention_mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """input_ids (B, L), attention_mask (B, L) or None -> (tokens (B, L, D), valid (B, L),
        modality ids (B, L): TEXT, or -1 at padding). Positions count real tokens only."""
        if input_ids_BL.dim() != 2:
            raise ValueError(f"input_ids must have shape (B, L), got {tuple(input_ids_BL.shape)}")
        B, L = input_ids_BL.shape
        valid_BL = valid_mask(attention_mask, B, L, input_ids_BL.device)
        x_BLD = (
            self.text_embed(input_ids_BL, positions_from_mask(valid_BL))
            + self.type_embed.weight[TEXT]
        )
        return x_BLD, valid_BL, text_modality(valid_BL)
