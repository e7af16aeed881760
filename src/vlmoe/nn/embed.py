"""Patch and position embeddings for images (ViT, Dosovitskiy et al. 2021) and tokens.

- `PatchEmbed`: a stride-p convolution cutting an image into p x p patches, (B, C, H, W) ->
  (B, N, D) with N = (H / p) * (W / p), row-major over the patch grid.
- `ConvStem`: the same (B, N, D) tokens from a small convolutional stem instead (Xiao et al.
  2021, "Early Convolutions Help Transformers See Better"; the hybrid ViT of Dosovitskiy et al.):
  3x3 convolutions with batch norm and ReLU, log2(p) of them with stride 2, then a 1x1
  projection. A linear patch sees each p x p patch once, through one matrix; the stem sees
  edges and corners first, which is what tells a star from a circle in a few pixels.
- `HybridEmbed`: the sum of the two, so each token keeps the linear view of its patch (its
  colours, as they are) next to the stem's shape features.
- `sincos_2d`: fixed 2-D sine-cosine position embeddings (MAE, He et al. 2022).
- `LearnedPositions`: a trainable table, for image patches or text positions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PatchEmbed(nn.Module):
    """Non-overlapping patches, linearly projected: (B, C, H, W) -> (B, N, D)."""

    def __init__(self, image_size: int, patch_size: int, in_channels: int, dim: int) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} is not divisible by patch_size={patch_size}")
        self.image_size, self.patch_size, self.in_channels = image_size, patch_size, in_channels
        self.grid_size = (image_size // patch_size, image_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images_BCHW: Tensor) -> Tensor:
        check_images(images_BCHW, self.image_size, self.in_channels)
        images_BCHW = images_BCHW.to(self.proj.weight.dtype)  # e.g. fp32 pixels, bf16 weights
        return self.proj(images_BCHW).flatten(2).transpose(1, 2)  # (B, N, D)


class ConvStem(nn.Module):
    """Convolutional stem: (B, C, H, W) -> (B, N, D), N = (H / p) * (W / p), row-major.

    One stride-1 3x3 convolution to `channels` maps, then log2(p) stride-2 3x3 convolutions
    (each doubling the channels), each followed by batch norm and ReLU, then a 1x1 convolution
    to `dim` (Xiao et al. 2021). The patch grid is that of `PatchEmbed(image_size, p)`.
    """

    def __init__(
        self, image_size: int, patch_size: int, in_channels: int, dim: int, channels: int = 32
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} is not divisible by patch_size={patch_size}")
        if patch_size & (patch_size - 1):
            raise ValueError(f"a conv stem needs patch_size a power of 2, got {patch_size}")
        if channels < 1:
            raise ValueError(f"stem channels must be >= 1, got {channels}")
        self.image_size, self.patch_size, self.in_channels = image_size, patch_size, in_channels
        self.grid_size = (image_size // patch_size, image_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        layers: list[nn.Module] = []
        c_in, c_out = in_channels, channels
        for stride in [1] + [2] * (patch_size.bit_length() - 1):
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in, c_out = c_out, 2 * c_out if stride == 2 else c_out
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(c_in, dim, kernel_size=1)

    def forward(self, images_BCHW: Tensor) -> Tensor:
        check_images(images_BCHW, self.image_size, self.in_channels)
        images_BCHW = images_BCHW.to(self.proj.weight.dtype)
        x_BDhw = self.proj(self.convs(images_BCHW))  # (B, D, H/p, W/p)
        return x_BDhw.flatten(2).transpose(1, 2)  # (B, N, D)


class HybridEmbed(nn.Module):
    """`PatchEmbed` + `ConvStem` over the same grid: (B, C, H, W) -> (B, N, D)."""

    def __init__(
        self, image_size: int, patch_size: int, in_channels: int, dim: int, channels: int = 32
    ) -> None:
        super().__init__()
        self.linear = PatchEmbed(image_size, patch_size, in_channels, dim)
        self.stem = ConvStem(image_size, patch_size, in_channels, dim, channels)
        self.image_size, self.patch_size, self.in_channels = image_size, patch_size, in_channels
        self.grid_size, self.num_patches = self.linear.grid_size, self.linear.num_patches

    def forward(self, images_BCHW: Tensor) -> Tensor:
        return self.linear(images_BCHW) + self.stem(images_BCHW)  # (B, N, D)


def check_images(images: Tensor, image_size: int, in_channels: int) -> None:
    """Raise a ValueError naming the problem unless `images` is a float (B, C, H, W) batch with
    C = `in_channels` and H = W = `image_size` (rather than a shape error deep inside torch)."""
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a tensor (B, C, H, W), got {type(images).__name__}")
    want = f"(B, {in_channels}, {image_size}, {image_size})"
    if images.dim() != 4:
        raise ValueError(f"images must be a batch {want}, got shape {tuple(images.shape)}")
    if images.shape[1] != in_channels:
        raise ValueError(
            f"images have {images.shape[1]} channel(s), the model expects in_channels="
            f"{in_channels}: {want}, got shape {tuple(images.shape)}"
        )
    if images.shape[-2:] != (image_size, image_size):
        raise ValueError(
            f"expected {image_size}x{image_size} images (image_size={image_size}), "
            f"got {images.shape[-2]}x{images.shape[-1]}; resize them first "
            "(vlmoe.data.ImageTransform(image_size=...))"
        )
    if not images.is_floating_point():
        raise ValueError(
            f"images must be floating point (normalized pixels), got {images.dtype}; "
            "convert them with vlmoe.data.ImageTransform or vlmoe.data.to_tensor"
        )


def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """(P,) positions -> (P, dim) sin-cos features, half sine, half cosine."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angles = positions.double()[:, None] * omega[None]  # (P, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(dim: int, grid_size: tuple[int, int]) -> Tensor:
    """Fixed 2-D position embeddings (N, dim) for a (rows, cols) patch grid, row-major."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embeddings need dim % 4 == 0, got dim={dim}")
    rows, cols = torch.meshgrid(
        torch.arange(grid_size[0]), torch.arange(grid_size[1]), indexing="ij"
    )
    emb_rows = sincos_1d(dim // 2, rows.flatten())
    emb_cols = sincos_1d(dim // 2, cols.flatten())
    return torch.cat([emb_rows, emb_cols], dim=1)  # (N, dim)


class LearnedPositions(nn.Module):
    """A trainable (num_positions, dim) table; `forward` looks positions up or takes a prefix."""

    def __init__(self, num_positions: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_positions, dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, positions: Tensor) -> Tensor:
        """Int positions of any shape (...) -> (..., dim)."""
        if positions.numel() and int(positions.max()) >= self.weight.shape[0]:
            raise ValueError(
                f"position {int(positions.max())} is beyond the "
                f"{self.weight.shape[0]} learned positions"
            )
        return self.weight[positions]


class FixedPositions(nn.Module):
    """Fixed 2-D sin-cos embeddings for a patch grid, kept as a non-persistent buffer."""

    def __init__(self, grid_size: tuple[int, int], dim: int) -> None:
        super().__init__()
        self.register_buffer("weight", sincos_2d(dim, grid_size), persistent=False)

    def forward(self, positions: Tensor) -> Tensor:
        return self.weight[positions]
