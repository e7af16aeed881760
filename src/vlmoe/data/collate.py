"""What every task's collate shares: stacking pre-processed images, the ignore index.

The per-task collates (one batch schema, see `vlmoe.tasks.base`) live with their tasks in
`vlmoe.tasks`; this module holds the pieces they all use.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from vlmoe.data.sample import Sample
from vlmoe.data.transforms import to_tensor

IGNORE_INDEX = -100  # "no target": ignored by torch.nn.functional.cross_entropy


def stack_images(samples: Sequence[Sample]) -> torch.Tensor:
    """(B, 3, H, W) float32 from transformed tensors or raw (H, W, 3) uint8 arrays."""
    imgs = [
        s.image if isinstance(s.image, torch.Tensor) else to_tensor(np.asarray(s.image))
        for s in samples
    ]
    shapes = {tuple(x.shape) for x in imgs}
    if len(shapes) != 1:
        raise ValueError(
            f"images in a batch differ in shape {sorted(shapes)}; "
            "use ImageTransform(image_size=...)"
        )
    return torch.stack(imgs)  # (B, 3, H, W)
