"""Input embeddings shared by the models: images to patch tokens, token ids to vectors."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vlmoe.models.config import CNNTowerConfig
from vlmoe.models.efficientnet import EfficientNetTokens
from vlmoe.nn.embed import ConvStem, FixedPositions, HybridEmbed, LearnedPositions, PatchEmbed


class ImageEmbed(nn.Module):
    """(B, C, H, W) -> (B, S, D): [class token ;] patches + position embeddings.

    S = num_prefix_tokens + N; patches are row-major over `grid_size`. `patch_embed` picks how
    pixels become patch tokens: "linear" (ViT's stride-p convolution, `PatchEmbed`), "conv"
    (a convolutional stem with `stem_channels` maps, `ConvStem`) or "hybrid" (their sum,
    `HybridEmbed`); all give the same grid. "efficientnet-lite0": EfficientNet-Lite0's feature
    map at output stride `patch_size` of the image resized to `tower.input_size`
    (`EfficientNetTokens`; its grid is input_size / patch_size).
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        in_channels: int,
        dim: int,
        pos_embed: str = "learned",
        class_token: bool = False,
        patch_embed: str = "linear",
        stem_channels: int = 32,
        tower: CNNTowerConfig | None = None,
    ) -> None:
        super().__init__()
        if patch_embed == "efficientnet-lite0":
            tower = tower if tower is not None else CNNTowerConfig()
            self.patch = EfficientNetTokens(tower.input_size, patch_size, dim, tower.trainable)
        elif patch_embed == "linear":
            self.patch = PatchEmbed(image_size, patch_size, in_channels, dim)
        elif patch_embed == "conv":
            self.patch = ConvStem(image_size, patch_size, in_channels, dim, stem_channels)
        elif patch_embed == "hybrid":
            self.patch = HybridEmbed(image_size, patch_size, in_channels, dim, stem_channels)
        else:
            raise ValueError(
                f"unknown patch_embed {patch_embed!r}; expected 'linear', 'conv', 'hybrid' "
                "or 'efficientnet-lite0'"
            )
        self.grid_size = self.patch.grid_size
        self.num_patches = self.patch.num_patches
        if pos_embed == "learned":
            self.pos = LearnedPositions(self.num_patches, dim)
        elif pos_embed == "sincos":
            self.pos = FixedPositions(self.grid_size, dim)
        else:
            raise ValueError(f"unknown pos_embed {pos_embed!r}; expected 'learned' or 'sincos'")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.num_prefix_tokens = int(class_token)
        self.register_buffer("patch_ids", torch.arange(self.num_patches), persistent=False)

    def forward(self, images_BCHW: Tensor) -> Tensor:
        x_BND = self.patch(images_BCHW) + self.pos(self.patch_ids)  # (B, N, D)
        if self.cls_token is not None:
            x_BND = torch.cat([self.cls_token.expand(x_BND.shape[0], -1, -1), x_BND], dim=1)
        return x_BND  # (B, S, D)


class TokenEmbed(nn.Module):
    """(B, L) token ids -> (B, L, D), plus learned positions when `max_seq_len` is given."""

    def __init__(self, vocab_size: int, dim: int, max_seq_len: int | None = None) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.tok = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.tok.weight, std=0.02)
        self.pos = LearnedPositions(max_seq_len, dim) if max_seq_len else None

    def forward(self, input_ids_BL: Tensor, positions_BL: Tensor | None = None) -> Tensor:
        check_token_ids(input_ids_BL, self.vocab_size)
        if self.pos is not None:
            check_text_length(input_ids_BL.shape[1], self.pos.weight.shape[0])
        x_BLD = self.tok(input_ids_BL)
        if self.pos is not None:
            if positions_BL is None:
                positions_BL = torch.arange(input_ids_BL.shape[1], device=input_ids_BL.device)[None]
            x_BLD = x_BLD + self.pos(positions_BL)
        return x_BLD


def text_modality(valid_BL: Tensor) -> Tensor:
    """Modality ids for text tokens: 1, or -1 at padding."""
    return torch.where(valid_BL, 1, -1).long()


def masked_mean(x_BLD: Tensor, valid_BL: Tensor) -> Tensor:
    """Mean over real tokens: (B, L, D) -> (B, D)."""
    w_BL1 = valid_BL.to(x_BLD.dtype)[..., None]
    return (x_BLD * w_BL1).sum(1) / w_BL1.sum(1).clamp_min(1.0)


def valid_mask(attention_mask: Tensor | None, B: int, L: int, device: torch.device) -> Tensor:
    """(B, L) bool, True at real tokens; all True when no mask is given."""
    if attention_mask is None:
        return torch.ones(B, L, dtype=torch.bool, device=device)
    if attention_mask.shape != (B, L):
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} must be {(B, L)}")
    return attention_mask.bool()


def check_token_ids(input_ids: Tensor, vocab_size: int) -> None:
    """Raise a ValueError naming the problem unless `input_ids` is an integer (B, L) tensor of ids
    in [0, vocab_size) (a bad id would otherwise fail deep inside `nn.Embedding`, or on a GPU
    as an opaque device-side assert)."""
    if not isinstance(input_ids, Tensor):
        raise TypeError(f"input_ids must be a tensor (B, L), got {type(input_ids).__name__}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (B, L), got {tuple(input_ids.shape)}")
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
    if input_ids.numel():
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(
                f"token ids must be in [0, vocab_size={vocab_size}), got range [{lo}, {hi}]; "
                "was the text encoded with a tokenizer of a different vocabulary?"
            )


def check_text_length(length: int, max_seq_len: int) -> None:
    """Raise a ValueError when a text of `length` tokens exceeds the model's `max_seq_len`."""
    if length > max_seq_len:
        raise ValueError(
            f"the text has {length} tokens, more than the model's max_seq_len={max_seq_len}; "
            f"truncate it (e.g. Tokenizer.encode_batch(texts, max_len={max_seq_len}))"
        )


def check_batch_sizes(images: Tensor | None, input_ids: Tensor | None) -> None:
    """Images and texts of one fused sequence must come in equal numbers."""
    if not (isinstance(images, Tensor) and isinstance(input_ids, Tensor)):
        return  # nothing to compare; each input's own check names what is wrong with it
    if images.dim() != 4 or input_ids.dim() != 2:
        return  # a malformed input gets its own, more precise error
    if images.shape[0] != input_ids.shape[0]:
        raise ValueError(
            f"got {images.shape[0]} image(s) but {input_ids.shape[0]} text(s); "
            "each image goes with one text (one row of input_ids)"
        )
