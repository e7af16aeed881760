"""The convolutional stem: the patch grid of PatchEmbed, locality, and the model option."""

import pytest
import torch

import vlmoe
from vlmoe.config import ConfigError
from vlmoe.nn import ConvStem, HybridEmbed, PatchEmbed


@pytest.mark.parametrize("image_size,patch_size", [(32, 4), (32, 8), (16, 4), (28, 1)])
def test_conv_stem_gives_the_patch_grid_of_patch_embed(image_size, patch_size):
    stem = ConvStem(image_size, patch_size, 3, 24, channels=8)
    linear = PatchEmbed(image_size, patch_size, 3, 24)
    assert stem.grid_size == linear.grid_size and stem.num_patches == linear.num_patches
    out = stem(torch.randn(2, 3, image_size, image_size))
    assert out.shape == (2, linear.num_patches, 24)
    strides = [m.stride[0] for m in stem.convs if isinstance(m, torch.nn.Conv2d)]
    assert strides == [1] + [2] * (patch_size.bit_length() - 1)


def test_conv_stem_tokens_are_row_major_and_local():
    """A pixel changes the token of its own patch and, through the 3x3 receptive fields, only
    its neighbours; far patches keep their value (eval mode: batch norm is a fixed affine map)."""
    torch.manual_seed(0)
    stem = ConvStem(32, 8, 3, 16, channels=4).eval()
    base = torch.zeros(1, 3, 32, 32)
    img = base.clone()
    img[..., 12, 20] = 5.0  # inside patch row 1, col 2 (index 6)
    diff = (stem(img) - stem(base)).abs().sum(-1)[0]  # (16,)
    assert diff[1 * 4 + 2] > 0
    rows, cols = torch.div(torch.arange(16), 4, rounding_mode="floor"), torch.arange(16) % 4
    far = ((rows - 1).abs() > 1) | ((cols - 2).abs() > 1)
    assert diff[far].eq(0).all()


def test_hybrid_embed_is_the_sum_of_linear_patches_and_the_stem():
    torch.manual_seed(0)
    hybrid = HybridEmbed(16, 4, 3, 8, channels=4).eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(hybrid(x), hybrid.linear(x) + hybrid.stem(x))
    assert hybrid.grid_size == (4, 4) and hybrid.num_patches == 16
    model = vlmoe.create_model("fusion-debug", patch_embed="hybrid", stem_channels=4)
    assert isinstance(model.image_embed.patch, HybridEmbed)
    with pytest.raises(ConfigError, match="patch_embed"):
        vlmoe.create_model("vit-debug", patch_embed="stem")


def test_conv_stem_refuses_bad_sizes_and_images():
    with pytest.raises(ValueError, match="power of 2"):
        ConvStem(36, 6, 3, 16)
    with pytest.raises(ValueError, match="not divisible"):
        ConvStem(30, 4, 3, 16)
    with pytest.raises(ValueError, match="expected 32x32"):
        ConvStem(32, 4, 3, 16)(torch.zeros(1, 3, 16, 16))


@pytest.mark.parametrize(
    "preset",
    ["vit-debug", "vit-debug-moe", "fusion-debug-moe", "contrastive-debug", "decoder-debug"],
)
def test_models_take_a_conv_stem_by_config(preset, tmp_path):
    torch.manual_seed(0)
    key = "vision.patch_embed" if preset.startswith("decoder") else "patch_embed"
    model = vlmoe.create_model(
        preset, **{key: "conv", key.replace("patch_embed", "stem_channels"): 8}
    )
    embed = (
        model.vision.embed
        if preset.startswith("decoder")
        else getattr(model, "embed", getattr(model, "image_embed", None))
    )
    assert isinstance(embed.patch, ConvStem)
    default = vlmoe.create_model(preset)
    default_embed = (
        default.vision.embed
        if preset.startswith("decoder")
        else getattr(default, "embed", getattr(default, "image_embed", None))
    )
    assert isinstance(default_embed.patch, PatchEmbed)  # today's patch embedding stays the default
    model.save_pretrained(tmp_path / "m")
    loaded = vlmoe.load_model(tmp_path / "m")
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # BN stats too


def test_conv_stem_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="patch_embed='conv' needs patch_size a power of 2"):
        vlmoe.create_model("vit-debug", patch_embed="conv", image_size=18, patch_size=6)
    with pytest.raises(ConfigError, match="stem_channels must be >= 1"):
        vlmoe.create_model("fusion-debug", patch_embed="conv", stem_channels=0)


def test_upcycling_keeps_the_stem_and_its_batch_norm_statistics():
    from vlmoe.config import MoEConfig
    from vlmoe.models.upcycle import upcycle_model

    torch.manual_seed(0)
    dense = vlmoe.create_model("vit-mnist")
    for _ in range(3):
        dense(torch.randn(8, 3, 28, 28))  # moves the running statistics off their init
    dense.eval()
    moe = upcycle_model(dense, MoEConfig(dim=64, hidden_dim=256, num_experts=4, top_k=1)).eval()
    x = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(moe(x).logits, dense(x).logits)
