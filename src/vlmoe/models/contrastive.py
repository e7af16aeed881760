"""LIMoE-style contrastive model (Mustafa et al. 2022; CLIP, Radford et al. 2021): one shared
(MoE) transformer tower embeds images and texts, each with its modality-type embedding; per-
modality linear projections into a joint space; a learned temperature.

Images and texts run through the tower in separate passes, each tagged with its modality id, so
the MoE auxes (and LIMoE's per-modality entropy losses, `vlmoe.moe.losses.entropy_losses`) split
by modality. The contrastive loss lives outside the model (`vlmoe.train`).

With `config.text_tower` set, texts go through their own bidirectional `TextTransformer`
instead (two towers, as CLIP; e.g. a pretrained MiniLM from `vlmoe.models.hf`), pooled as that
tower pools (mean over real tokens for BERT-style encoders); the shared tower then sees images
only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlmoe.models.config import ContrastiveConfig
from vlmoe.models.embed import check_text_length, masked_mean
from vlmoe.models.image_text import IMAGE, ImageTextModel
from vlmoe.models.outputs import ContrastiveOutput
from vlmoe.models.text import TextTransformer
from vlmoe.models.transformer import Transformer
from vlmoe.moe.layer import MoEAux
from vlmoe.nn.attention import build_attention_mask


class ContrastiveModel(ImageTextModel):
    architecture = "contrastive"
    config_class = ContrastiveConfig

    def __init__(self, config: ContrastiveConfig) -> None:
        super().__init__(config, text_embed=config.text_tower is None)
        dim = config.transformer.dim
        self.transformer = Transformer(config.transformer)
        self.text_tower = TextTransformer(config.text_tower) if config.text_tower else None
        text_dim = config.text_tower.transformer.dim if config.text_tower else dim
        self.image_proj = nn.Linear(dim, config.embed_dim, bias=False)
        self.text_proj = nn.Linear(text_dim, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(config.logit_scale_init)))

    def _image_pass(self, images_BCHW: Tensor) -> tuple[Tensor, list[MoEAux], Tensor]:
        x_BND, modality_BN = self.embed_image(images_BCHW)
        h_BND, auxes = self.transformer(x_BND, modality_BN)
        embeds_BE = F.normalize(self.image_proj(h_BND.mean(1)), dim=-1)  # (B, embed_dim)
        return embeds_BE, auxes, modality_BN == IMAGE

    def _text_pass(
        self, input_ids_BL: Tensor, attention_mask: Tensor | None
    ) -> tuple[Tensor, list[MoEAux]]:
        if self.text_tower is not None:
            check_text_length(input_ids_BL.shape[-1], self.config.max_seq_len)
            out = self.text_tower(input_ids_BL, attention_mask)
            return F.normalize(self.text_proj(out.pooled), dim=-1), out.moe_aux
        x_BLD, valid_BL, modality_BL = self.embed_text(input_ids_BL, attention_mask)
        L = x_BLD.shape[1]
        mask = build_attention_mask(valid_BL, L, L, causal=False, device=x_BLD.device)
        h_BLD, auxes = self.transformer(x_BLD, modality_BL, mask=mask)
        embeds_BE = F.normalize(self.text_proj(masked_mean(h_BLD, valid_BL)), dim=-1)
        return embeds_BE, auxes

    def scale(self) -> Tensor:
        """exp(log-temperature), clamped at `logit_scale_max` (CLIP)."""
        return self.logit_scale.clamp(max=math.log(self.config.logit_scale_max)).exp()

    def encode_image(self, images: Tensor) -> Tensor:
        """images (B, C, H, W) -> L2-normalized embeddings (B, embed_dim)."""
        return self._image_pass(images)[0]

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """input_ids (B, L), attention_mask (B, L) -> L2-normalized embeddings (B, embed_dim)."""
        return self._text_pass(input_ids, attention_mask)[0]

    def forward(
        self,
        images: Tensor | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> ContrastiveOutput:
        """images (B_i, C, H, W) and/or input_ids (B_t, L) with attention_mask (B_t, L)."""
        if images is None and input_ids is None:
            raise ValueError("pass images, input_ids, or both")
        img = txt = image_mask = None
        img_aux: list[MoEAux] = []
        txt_aux: list[MoEAux] = []
        if images is not None:
            img, img_aux, image_mask = self._image_pass(images)
        if input_ids is not None:
            txt, txt_aux = self._text_pass(input_ids, attention_mask)
        scale = self.scale()
        per_image = scale * img @ txt.T if img is not None and txt is not None else None
        return ContrastiveOutput(
            image_embeds=img,
            text_embeds=txt,
            logit_scale=scale,
            logits_per_image=per_image,
            logits_per_text=per_image.T if per_image is not None else None,
            image_token_mask=image_mask,
            patch_grid=self.image_embed.grid_size,
            moe_aux=img_aux + txt_aux,
            image_moe_aux=img_aux,
            text_moe_aux=txt_aux,
        )

    @torch.no_grad()
    def zero_shot_classifier(
        self, input_ids: Tensor, attention_mask: Tensor | None = None
    ) -> Tensor:
        """Class embeddings (C, embed_dim) from prompts: input_ids (C, L), or (C, P, L) for P
        prompt templates per class (their embeddings are averaged, then renormalized)."""
        if input_ids.dim() == 2:
            return self.encode_text(input_ids, attention_mask)
        C, P, L = input_ids.shape
        mask = attention_mask.reshape(C * P, L) if attention_mask is not None else None
        emb = self.encode_text(input_ids.reshape(C * P, L), mask).view(C, P, -1).mean(1)
        return F.normalize(emb, dim=-1)

    def zero_shot_logits(self, images: Tensor, classifier: Tensor) -> Tensor:
        """Class logits (B, C) for images against `zero_shot_classifier` embeddings (C, E)."""
        return self.scale() * self.encode_image(images) @ classifier.T
