"""Vision transformer (Dosovitskiy et al. 2021) with optional MoE blocks (V-MoE, Riquelme et
al. 2021: an MoE FFN in every other block by default).

`forward_features` maps images to tokens and MoE auxes, `forward_head` pools and classifies,
`forward` does both and returns a `ViTOutput`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vlmoe.models.base import PretrainedModel
from vlmoe.models.config import ViTConfig
from vlmoe.models.embed import ImageEmbed
from vlmoe.models.outputs import ViTOutput
from vlmoe.models.transformer import Transformer
from vlmoe.moe.layer import MoEAux


class ViT(PretrainedModel):
    architecture = "vit"
    config_class = ViTConfig

    def __init__(self, config: ViTConfig) -> None:
        super().__init__(config)
        dim = config.transformer.dim
        self.embed = ImageEmbed(
            config.image_size,
            config.patch_size,
            config.in_channels,
            dim,
            config.pos_embed,
            class_token=config.pool == "cls",
            patch_embed=config.patch_embed,
            stem_channels=config.stem_channels,
        )
        self.transformer = Transformer(config.transformer)
        self.head = nn.Linear(dim, config.num_classes) if config.num_classes else None
        self.grid_size = self.embed.grid_size
        self.num_prefix_tokens = self.embed.num_prefix_tokens
        self.out_dim = dim

    def forward_features(self, images_BCHW: Tensor) -> tuple[Tensor, list[MoEAux]]:
        """images (B, C, H, W) -> tokens (B, S, D) (class token first if any), MoE auxes."""
        x_BSD = self.embed(images_BCHW)
        modality_BS = torch.zeros(x_BSD.shape[:2], dtype=torch.long, device=x_BSD.device)
        return self.transformer(x_BSD, modality_BS)

    def pool(self, features_BSD: Tensor) -> Tensor:
        if self.config.pool == "cls":
            return features_BSD[:, 0]
        return features_BSD[:, self.num_prefix_tokens :].mean(1)

    def forward_head(self, features_BSD: Tensor) -> Tensor | None:
        """tokens (B, S, D) -> class logits (B, num_classes), or None without a head."""
        return self.head(self.pool(features_BSD)) if self.head is not None else None

    def forward(self, images: Tensor) -> ViTOutput:
        features_BSD, auxes = self.forward_features(images)
        B, S, _ = features_BSD.shape
        image_mask = torch.ones(B, S, dtype=torch.bool, device=features_BSD.device)
        image_mask[:, : self.num_prefix_tokens] = False
        return ViTOutput(
            logits=self.forward_head(features_BSD),
            pooled=self.pool(features_BSD),
            features=features_BSD,
            modality=torch.zeros(B, S, dtype=torch.long, device=features_BSD.device),
            image_token_mask=image_mask,
            patch_grid=self.grid_size,
            moe_aux=auxes,
        )
