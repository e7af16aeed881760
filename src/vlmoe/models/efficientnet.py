"""EfficientNet-Lite0 (Tan & Le 2019, EfficientNet; the "Lite" variant of the TensorFlow Lite
model zoo, 2020) and its feature map as image tokens for a vlmoe transformer.

Lite0 is EfficientNet-B0 made friendly to integer accelerators: no squeeze-and-excitation,
ReLU6 instead of swish, and a stem (32 maps) and head (1280 maps) that do not scale. A 3x3
stride-2 stem conv, then 16 MBConv blocks (1x1 expansion, depthwise k x k, 1x1 projection,
each conv followed by batch norm; residual when shape is kept) in 7 stages, a 1x1 head conv to
1280 maps, average pooling and a 1000-way ImageNet classifier. Convolutions pad as
TensorFlow's 'SAME' (asymmetric for stride 2), as the converted weights expect. Dropout and
drop-connect are training-only regularizers of the original and are not built: the tower here
is either frozen or fine-tuned briefly.

`EfficientNetTokens` (the hybrid tower, ViT-hybrid style, Dosovitskiy et al. 2021): resize the
image, run the CNN to output stride 8, 16 or 32 (the end of that stage), project each position
of the feature map to the transformer width: those are the image tokens. Frozen by default
(weights fixed, batch norm in eval mode whatever `train()` says).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (repeats, kernel, stride, expand ratio, output channels) per stage; input 32 after the stem.
LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM, HEAD = 32, 1280
BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # TensorFlow's epsilon and decay 0.99
FEATURE_STRIDES = (8, 16, 32)


class SameConv2d(nn.Conv2d):
    """`nn.Conv2d` with TensorFlow 'SAME' padding: output side ceil(input / stride), the odd
    padding pixel on the bottom / right."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s in zip(x.shape[-1:-3:-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return self._conv_forward(F.pad(x, pads), self.weight, self.bias)


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        SameConv2d(cin, cout, k, stride, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM),
    )


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excite: expand, depthwise, project."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = _conv_bn(cin, hidden, 1) if expand != 1 else None
        self.depthwise = _conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        self.project = _conv_bn(hidden, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu6(self.expand(x)) if self.expand is not None else x  # (B, hidden, H, W)
        h = self.project(F.relu6(self.depthwise(h)))  # (B, cout, H/s, W/s)
        return x + h if self.residual else h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0: `forward_features` to a chosen output stride, then `forward_head`."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = _conv_bn(3, STEM, 3, stride=2)
        blocks, cin, stride = [], STEM, 2
        self.stage_end: dict[int, tuple[int, int]] = {}  # stride -> (blocks run, channels)
        for repeats, kernel, s, expand, cout in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, s if r == 0 else 1, expand))
                cin = cout
            stride *= s
            self.stage_end[stride] = (len(blocks), cout)
        self.blocks = nn.ModuleList(blocks)
        self.head = _conv_bn(cin, HEAD, 1)
        self.stage_end[32] = (len(blocks), HEAD)  # stride 32 ends with the head conv
        self.classifier = nn.Linear(HEAD, num_classes)

    def channels(self, stride: int) -> int:
        return self.stage_end[stride][1]

    def forward_features(self, images_BCHW: Tensor, stride: int = 32) -> Tensor:
        """(B, 3, H, W) normalized as the weights expect -> (B, C, H/stride, W/stride)."""
        if stride not in FEATURE_STRIDES:
            raise ValueError(f"stride must be one of {FEATURE_STRIDES}, got {stride}")
        x = F.relu6(self.stem(images_BCHW))
        for block in self.blocks[: self.stage_end[stride][0]]:
            x = block(x)
        return F.relu6(self.head(x)) if stride == 32 else x

    def forward_head(self, features_BCHW: Tensor) -> Tensor:
        return self.classifier(features_BCHW.mean((2, 3)))  # (B, num_classes)

    def forward(self, images_BCHW: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(images_BCHW))


# The converted Lite weights expect pixels in [0, 1] normalized as TensorFlow's Lite models:
# (x - 127) / 128 on 0..255, i.e. mean 0.498 and std 0.502 (see the test for the other choice).
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3


class EfficientNetTokens(nn.Module):
    """(B, 3, S, S) images normalized with vlmoe's mean/std 0.5 -> (B, N, dim) tokens from
    EfficientNet-Lite0's feature map at `stride`, resized to `input_size` first."""

    def __init__(self, input_size: int, stride: int, dim: int, trainable: bool = False) -> None:
        super().__init__()
        if stride not in FEATURE_STRIDES or input_size % stride:
            raise ValueError(
                f"stride must be one of {FEATURE_STRIDES} and divide input_size={input_size}, "
                f"got {stride}"
            )
        self.input_size, self.stride, self.trainable = input_size, stride, trainable
        self.cnn = EfficientNetLite()
        self.cnn.classifier = None  # type: ignore[assignment]  # features only
        self.proj = nn.Linear(self.cnn.channels(stride), dim)
        self.grid_size = (input_size // stride, input_size // stride)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        mean, std = torch.tensor(LITE_MEAN), torch.tensor(LITE_STD)
        # vlmoe's x = (p - 0.5) / 0.5 -> the CNN's (p - mean) / std = x * a + b
        self.register_buffer("scale", (0.5 / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((0.5 - mean) / std).view(1, 3, 1, 1), persistent=False)
        self.cnn.requires_grad_(trainable)

    def train(self, mode: bool = True) -> EfficientNetTokens:
        super().train(mode)
        if not self.trainable:  # frozen: batch norm keeps its running statistics
            self.cnn.eval()
        return self

    def features(self, images_BCHW: Tensor) -> Tensor:
        """The CNN's feature map (B, C, h, w) for vlmoe-normalized images."""
        x = images_BCHW * self.scale + self.shift
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", align_corners=False)
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            return self.cnn.forward_features(x, self.stride)

    def forward(self, images_BCHW: Tensor) -> Tensor:
        f = self.features(images_BCHW)  # (B, C, h, w)
        return self.proj(f.flatten(2).transpose(1, 2))  # (B, N, dim)
