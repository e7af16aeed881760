"""VL-MoE-style fusion encoder (Shen et al. 2023; VLMo, Bao et al. 2022): one bidirectional
transformer over [image patches ; text tokens], with modality-type embeddings, and modality ids
(image 0, text 1, padding -1) passed to every MoE layer, so that modality expert groups and
shared experts (the default in the presets) see which tokens are which.

Heads on the pooled sequence: image classification, VQA as answer classification, and
image-text matching (2-way). `pool="mean"` averages every valid token; `pool="cls"` appends a
learned [CLS] token (a text-modality token, as VLMo's T_CLS; last, so patch and text positions
are unchanged) and reads its final state, so
attention, not an average over mostly-background patches, decides what the heads see.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vlmoe.models.config import FusionConfig
from vlmoe.models.embed import check_batch_sizes, masked_mean
from vlmoe.models.image_text import IMAGE, TEXT, ImageTextModel
from vlmoe.models.outputs import FusionOutput
from vlmoe.models.transformer import Transformer
from vlmoe.nn.attention import build_attention_mask


class FusionModel(ImageTextModel):
    architecture = "fusion"
    config_class = FusionConfig

    def __init__(self, config: FusionConfig) -> None:
        super().__init__(config)
        dim = config.transformer.dim
        self.transformer = Transformer(config.transformer)
        self.class_head = nn.Linear(dim, config.num_classes) if config.num_classes else None
        self.vqa_head = nn.Linear(dim, config.num_answers) if config.num_answers else None
        self.itm_head = nn.Linear(dim, 2)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if config.pool == "cls" else None
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    def forward(
        self,
        images: Tensor | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> FusionOutput:
        """images (B, C, H, W) and/or input_ids (B, L) with attention_mask (B, L)."""
        if images is None and input_ids is None:
            raise ValueError("pass images, input_ids, or both")
        check_batch_sizes(images, input_ids)
        parts, valid, modality = [], [], []
        if images is not None:
            x_BND, modality_BN = self.embed_image(images)
            parts.append(x_BND)
            valid.append(modality_BN == IMAGE)
            modality.append(modality_BN)
        if input_ids is not None:
            x_BLD, valid_BL, modality_BL = self.embed_text(input_ids, attention_mask)
            parts.append(x_BLD)
            valid.append(valid_BL)
            modality.append(modality_BL)
        if self.cls_token is not None:  # last, so patch and text positions stay put
            B, device = parts[0].shape[0], parts[0].device
            parts.append(self.cls_token.expand(B, -1, -1).to(parts[0].dtype))
            valid.append(torch.ones(B, 1, dtype=torch.bool, device=device))
            modality.append(torch.full((B, 1), TEXT, dtype=torch.long, device=device))
        x_BSD = torch.cat(parts, dim=1)
        valid_BS, modality_BS = torch.cat(valid, dim=1), torch.cat(modality, dim=1)
        S = x_BSD.shape[1]
        mask = build_attention_mask(valid_BS, S, S, causal=False, device=x_BSD.device)
        h_BSD, auxes = self.transformer(x_BSD, modality_BS, mask=mask)
        pooled_BD = h_BSD[:, -1] if self.cls_token is not None else masked_mean(h_BSD, valid_BS)
        return FusionOutput(
            hidden_states=h_BSD,
            pooled=pooled_BD,
            class_logits=self.class_head(pooled_BD) if self.class_head is not None else None,
            vqa_logits=self.vqa_head(pooled_BD) if self.vqa_head is not None else None,
            itm_logits=self.itm_head(pooled_BD),
            modality=modality_BS,
            image_token_mask=modality_BS == IMAGE,
            patch_grid=self.image_embed.grid_size,
            moe_aux=auxes,
        )
