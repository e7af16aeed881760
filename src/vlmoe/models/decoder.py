"""MoE-LLaVA-style decoder (Lin et al. 2024; LLaVA, Liu et al. 2023): a vision encoder, a
projector into the language model's width, and a causal (MoE) language model over
[image tokens ; text tokens], or (with `image_token_id`) over the text with its `<image>`
placeholders replaced by the image tokens. Modality ids (image 0, text 1, padding -1) reach
every MoE layer.

The vision encoder is vlmoe's `ViT` by default; any module mapping images (B, C, H, W) to
features (B, N, D_v) can be plugged in instead (`Decoder(config with vision=None, vision_dim=D_v,
vision_encoder=module)`), which is how pretrained encoders are used.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vlmoe.models.base import PretrainedModel
from vlmoe.models.config import DecoderConfig
from vlmoe.models.embed import check_batch_sizes, check_text_length, text_modality, valid_mask
from vlmoe.models.generation import GenerationMixin
from vlmoe.models.outputs import DecoderOutput
from vlmoe.models.text import TextTransformer
from vlmoe.models.vit import ViT
from vlmoe.moe.layer import MoEAux
from vlmoe.nn.attention import KVCache
from vlmoe.nn.embed import sincos_2d


def build_projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class Decoder(GenerationMixin, PretrainedModel):
    architecture = "decoder"
    config_class = DecoderConfig

    def __init__(self, config: DecoderConfig, vision_encoder: nn.Module | None = None) -> None:
        super().__init__(config)
        if config.vision is not None and vision_encoder is not None:
            raise ValueError(
                "pass vision_encoder only with a config whose vision is None (external encoder)"
            )
        if config.vision is None and vision_encoder is None:
            raise ValueError("config.vision is None: pass the external vision_encoder module")
        self.vision = ViT(config.vision) if config.vision is not None else vision_encoder
        self.projector = build_projector(
            config.projector, config.vision_width, config.text.transformer.dim
        )
        self.lm = TextTransformer(config.text)

    def encode_images(
        self, images_BCHW: Tensor
    ) -> tuple[Tensor, list[MoEAux], tuple[int, int] | None]:
        """images -> (image tokens (B, N, D) in the LM's width, vision MoE auxes, patch grid)."""
        if isinstance(self.vision, ViT):
            feats_BSD, auxes = self.vision.forward_features(images_BCHW)
            if self.config.vision_feature == "patch":
                feats_BSD = feats_BSD[:, self.vision.num_prefix_tokens :]
                grid = self.vision.grid_size
            else:
                grid = None if self.vision.num_prefix_tokens else self.vision.grid_size
        else:
            feats_BSD, auxes = _external_features(self.vision(images_BCHW)), []
            side = math.isqrt(feats_BSD.shape[1])
            grid = (side, side) if side * side == feats_BSD.shape[1] else None
        img_BND = self.projector(feats_BSD)
        if self.config.image_positions == "sincos":
            img_BND = img_BND + self._grid_positions(img_BND, grid)
        return img_BND, auxes, grid

    def _grid_positions(self, img_BND: Tensor, grid: tuple[int, int] | None) -> Tensor:
        """(N, D) 2-D sine-cosine positions of the image tokens' patch grid."""
        N, D = img_BND.shape[1:]
        if grid is None or grid[0] * grid[1] != N:
            raise ValueError(
                f'image_positions="sincos" needs image tokens on a patch grid; got {N} tokens '
                f"and grid {grid} (use vision_feature='patch')"
            )
        return sincos_2d(D, grid).to(device=img_BND.device, dtype=img_BND.dtype)

    @property
    def num_image_tokens(self) -> int | None:
        """Image tokens per image (None for an external encoder, known only once run)."""
        if not isinstance(self.vision, ViT):
            return None
        n = self.vision.embed.num_patches
        return n if self.config.vision_feature == "patch" else n + self.vision.num_prefix_tokens

    def forward(
        self,
        images: Tensor | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
    ) -> DecoderOutput:
        """images (B, C, H, W) or None; input_ids (B, L) (or None); attention_mask (B, L).

        Layout: [image tokens ; text tokens], or, with `config.image_token_id`, the text with
        its `<image>` placeholders replaced by the image tokens (LLaVA). Padding may sit
        anywhere (left for generation, right for training). With `kv_cache`, later calls pass
        only the new tokens and no images. `logits` are aligned with `input_ids`.
        """
        if images is None and input_ids is None:
            raise ValueError("pass images, input_ids, or both")
        check_batch_sizes(images, input_ids)
        vision_aux: list[MoEAux] = []
        grid, img_BND = None, None
        if images is not None:
            img_BND, vision_aux, grid = self.encode_images(images)
        if input_ids is not None:
            # `<image>` placeholders stand for image tokens, not text.
            placeholders = (
                img_BND.shape[1]
                if img_BND is not None and self.config.image_token_id is not None
                else 0
            )
            check_text_length(input_ids.shape[-1] - placeholders, self.config.text.max_seq_len)
        if img_BND is not None and self.config.image_token_id is not None:
            x_BSD, valid_BS, modality_BS = self._fill_placeholders(
                img_BND, input_ids, attention_mask
            )
            num_prefix = 0
        else:
            x_BSD, valid_BS, modality_BS = self._prepend(img_BND, input_ids, attention_mask)
            num_prefix = img_BND.shape[1] if img_BND is not None else 0
        h_BSD, lm_aux = self.lm.hidden(x_BSD, valid_BS, modality_BS, kv_cache)
        return DecoderOutput(
            logits=self.lm.logits(h_BSD[:, num_prefix:]),
            hidden_states=h_BSD,
            modality=modality_BS,
            image_token_mask=modality_BS == 0,
            num_image_tokens=img_BND.shape[1] if img_BND is not None else 0,
            patch_grid=grid,
            moe_aux=vision_aux + lm_aux,
            vision_moe_aux=vision_aux,
            lm_moe_aux=lm_aux,
        )

    def _prepend(
        self, img_BND: Tensor | None, input_ids: Tensor | None, attention_mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """[image tokens ; text tokens] -> (embeddings, valid, modality)."""
        parts, valid, modality = [], [], []
        if img_BND is not None:
            B, N = img_BND.shape[:2]
            parts.append(img_BND)
            valid.append(torch.ones(B, N, dtype=torch.bool, device=img_BND.device))
            modality.append(torch.zeros(B, N, dtype=torch.long, device=img_BND.device))
        if input_ids is not None:
            parts.append(self.lm.embed_tokens(input_ids))  # checks the ids first
            B, L = input_ids.shape
            text_valid = valid_mask(attention_mask, B, L, input_ids.device)
            valid.append(text_valid)
            modality.append(text_modality(text_valid))
        return torch.cat(parts, 1), torch.cat(valid, 1), torch.cat(modality, 1)

    def _fill_placeholders(
        self, img_BND: Tensor, input_ids: Tensor | None, attention_mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Text embeddings with the `<image>` placeholders replaced by image tokens, in order."""
        token = self.config.image_token_id
        if input_ids is None:
            raise ValueError(
                f"image_token_id={token} is set: pass input_ids with <image> placeholders"
            )
        x_BLD = self.lm.embed_tokens(input_ids)  # checks the ids first
        B, L = input_ids.shape
        N = img_BND.shape[1]
        valid_BL = valid_mask(attention_mask, B, L, input_ids.device)
        is_image_BL = (input_ids == token) & valid_BL
        counts = is_image_BL.sum(1)
        if not bool((counts == N).all()):
            raise ValueError(
                f"every row needs {N} <image> placeholder tokens (id {token}), one per image "
                f"token; got {counts.tolist()}"
            )
        x_BLD = x_BLD.masked_scatter(is_image_BL[..., None], img_BND.to(x_BLD.dtype))
        modality_BL = torch.where(is_image_BL, 0, text_modality(valid_BL))
        return x_BLD, valid_BL, modality_BL

    def next_token_logits(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        images: Tensor | None,
        kv_cache: KVCache | None,
    ) -> Tensor:
        if input_ids.shape[1] == 0:
            raise ValueError(
                "generation needs at least one prompt token (e.g. BOS) after the image"
            )
        logits = self(images, input_ids, attention_mask, kv_cache=kv_cache).logits[:, -1]
        if self.config.image_token_id is not None:  # never generate an image placeholder
            logits[:, self.config.image_token_id] = float("-inf")
        return logits


def _external_features(out: object) -> Tensor:
    """Features (B, N, D_v) from what an external encoder returns: a tensor, a tuple whose
    first item is one, or an object with `last_hidden_state` (Hugging Face)."""
    if isinstance(out, Tensor):
        feats = out
    elif isinstance(out, tuple | list) and out and isinstance(out[0], Tensor):
        feats = out[0]
    elif isinstance(getattr(out, "last_hidden_state", None), Tensor):
        feats = out.last_hidden_state
    else:
        raise TypeError(
            f"the vision encoder returned {type(out).__name__}; expected a (B, N, D) tensor"
        )
    if feats.dim() != 3:
        raise ValueError(
            f"the vision encoder must return (B, N, D) features, got shape {tuple(feats.shape)}"
        )
    return feats
