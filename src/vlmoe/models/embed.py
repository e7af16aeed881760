"""Input embeddings shared by the models: images to patch tokens, token ids to vectors."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vlmoe.nn.embed import FixedPositions, LearnedPositions, PatchEmbed


class ImageEmbed(nn.Module):
    """(B, C, H, W) -> (B, S, D): [class token ;] patches + position embeddings.

    S = num_prefix_tokens + N; patches are row-major over `grid_size`.
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        in_channels: int,
        dim: int,
        pos_embed: str = "learned",
        class_token: bool = False,
    ) -> None:
        super().__init__()
        self.patch = PatchEmbed(image_size, patch_size, in_channels, dim)
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
        if input_ids_BL.numel() and (
            int(input_ids_BL.min()) < 0 or int(input_ids_BL.max()) >= self.vocab_size
        ):
            raise ValueError(
                f"token ids must be in [0, {self.vocab_size}), got range "
                f"[{int(input_ids_BL.min())}, {int(input_ids_BL.max())}]"
            )
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
