"""The decoder's optional 2-D sine-cosine positions on its image tokens."""

import pytest
import torch

from vlmoe.models.registry import create_model
from vlmoe.nn.embed import sincos_2d


def test_sincos_image_positions_are_added_to_the_projected_tokens():
    torch.manual_seed(0)
    plain = create_model("decoder-debug")
    torch.manual_seed(0)
    placed = create_model("decoder-debug", image_positions="sincos")
    placed.load_state_dict(plain.state_dict())  # no new weights
    images = torch.randn(2, 3, 16, 16)
    a, _, grid = plain.encode_images(images)
    b, _, _ = placed.encode_images(images)
    assert torch.allclose(b - a, sincos_2d(a.shape[-1], grid).expand_as(a), atol=1e-6)
    out = placed(images=images, input_ids=torch.ones(2, 3, dtype=torch.long))
    assert out.logits.shape[:2] == (2, 3)


def test_sincos_image_positions_need_a_grid():
    model = create_model("decoder-debug", image_positions="sincos", vision_feature="all")
    if model.vision.num_prefix_tokens == 0:
        pytest.skip("no class token: every token is on the grid")
    with pytest.raises(ValueError, match="needs image tokens on a patch grid"):
        model.encode_images(torch.randn(1, 3, 16, 16))
