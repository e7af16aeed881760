import pytest

from vlmoe.config import ConfigError, MoEConfig
from vlmoe.models import DecoderConfig, TextConfig, TransformerConfig, ViTConfig


def test_moe_dim_follows_the_transformer():
    t = TransformerConfig(dim=48, num_heads=4, moe=MoEConfig(dim=64, hidden_dim=32))
    assert t.moe.dim == 48
    t2 = t.with_overrides(["dim=96"])
    assert t2.moe.dim == 96


def test_moe_layer_placement():
    moe = MoEConfig(hidden_dim=32)
    assert TransformerConfig(num_layers=4).moe_layer_ids() == []
    assert TransformerConfig(num_layers=4, moe=moe).moe_layer_ids() == [1, 3]  # V-MoE
    assert TransformerConfig(num_layers=4, moe=moe, moe_every=1).moe_layer_ids() == [0, 1, 2, 3]
    assert TransformerConfig(num_layers=4, moe=moe, moe_layers=[3, 0]).moe_layer_ids() == [0, 3]
    with pytest.raises(ConfigError, match=r"moe_layers=\[4\].*outside"):
        TransformerConfig(num_layers=4, moe=moe, moe_layers=[4])
    with pytest.raises(ConfigError, match="duplicates"):
        TransformerConfig(num_layers=4, moe=moe, moe_layers=[1, 1])
    with pytest.raises(ConfigError, match="moe_every must be >= 1, got 0"):
        TransformerConfig(moe_every=0)


def test_invalid_values_name_field_and_value():
    with pytest.raises(ConfigError, match="dim=30 must be divisible by transformer.num_heads=4"):
        TransformerConfig(dim=30, num_heads=4)
    with pytest.raises(ConfigError, match="image_size=30 must be divisible by patch_size=8"):
        ViTConfig(image_size=30, patch_size=8)
    with pytest.raises(ConfigError, match="top_k=5 must be <= moe.num_experts=4"):
        ViTConfig.from_dict({"transformer": {"moe": {"num_experts": 4, "top_k": 5}}})
    with pytest.raises(ConfigError, match="unknown key"):
        ViTConfig.from_dict({"transformer": {"depth": 4}})


@pytest.mark.parametrize("router", ["soft", "expert_choice"])
def test_causal_decoder_refuses_token_mixing_routers(router):
    moe = MoEConfig(hidden_dim=32, num_experts=4, top_k=1, router=router)
    with pytest.raises(ConfigError, match=f"router='{router}' cannot be used in a causal decoder"):
        TextConfig(transformer=TransformerConfig(moe=moe))
    with pytest.raises(ConfigError, match="causal decoder"):
        DecoderConfig.from_dict({"text": {"transformer": {"moe": moe.to_dict()}}})
    # A bidirectional encoder may use them, and so may the decoder's vision encoder.
    TextConfig(attention="bidirectional", transformer=TransformerConfig(moe=moe))
    DecoderConfig(vision=ViTConfig(num_classes=0, transformer=TransformerConfig(moe=moe)))


def test_decoder_needs_vision_dim_for_an_external_encoder():
    with pytest.raises(ConfigError, match="vision_dim must be set"):
        DecoderConfig(vision=None)
    assert DecoderConfig(vision=None, vision_dim=24).vision_width == 24


def test_yaml_round_trip(tmp_path):
    cfg = DecoderConfig(
        text=TextConfig(transformer=TransformerConfig(moe=MoEConfig(hidden_dim=48)))
    )
    cfg.to_yaml(tmp_path / "c.yaml")
    assert DecoderConfig.from_yaml(tmp_path / "c.yaml") == cfg
