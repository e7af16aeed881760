"""The diffusion transformer: patchify, adaLN-zero, conditioning, MoE twins, bad inputs."""

import pytest
import torch

import vlmoe
from vlmoe.config import ConfigError, MoEConfig
from vlmoe.models import count_parameters, upcycle_model
from vlmoe.models.dit import DiT, DiTConfig, patchify, unpatchify
from vlmoe.models.registry import preset_config

from .helpers import make_inputs


def _randomize_zero_inits(model: DiT, seed: int = 0) -> DiT:
    """adaLN-zero makes a fresh DiT output 0; give the zero-initialized layers values so that
    tests can see the conditioning."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in ("ada.", "final_ada.", "out.")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def test_patchify_round_trip_and_row_major_order():
    x = torch.randn(2, 3, 8, 12)
    p = patchify(x, 4)  # (2, 6, 48)
    assert p.shape == (2, 6, 48)
    assert torch.equal(unpatchify(p, 4, 3, (2, 3)), x)
    # Patch n = (row 1, col 2) holds pixels [4:8, 8:12], values (p_row, p_col, channel).
    assert torch.equal(p[:, 5].view(2, 4, 4, 3), x[:, :, 4:8, 8:12].permute(0, 2, 3, 1))


def test_fresh_model_predicts_zero_and_blocks_start_as_identity():
    model = vlmoe.create_model("dit-debug-moe")
    inputs = make_inputs(model)
    assert torch.equal(model(**inputs).velocity, torch.zeros_like(inputs["x"]))
    block = model.blocks[0]
    x = torch.randn(2, 16, 32)
    y, aux = block(x, torch.randn(2, 32))
    assert torch.equal(y, x) and aux is not None


@pytest.mark.parametrize("name", ["dit-debug", "dit-debug-text", "dit-debug-text-xattn"])
def test_condition_changes_the_output_and_drop_removes_it(name):
    torch.manual_seed(0)
    model = _randomize_zero_inits(vlmoe.create_model(name)).eval()
    inputs = make_inputs(model, batch=3)
    base = model(**inputs).velocity
    other = dict(inputs)
    if "labels" in inputs:
        other["labels"] = (inputs["labels"] + 1) % 10
    else:
        other["input_ids"] = (inputs["input_ids"] + 1) % model.config.text.vocab_size
    assert not torch.allclose(model(**other).velocity, base)
    drop = torch.ones(3, dtype=torch.bool)
    torch.testing.assert_close(
        model(**inputs, drop=drop).velocity, model(**other, drop=drop).velocity
    )
    if "labels" in inputs:  # label -1 is the null class, as drop
        none = dict(inputs, labels=torch.full((3,), -1))
        torch.testing.assert_close(model(**none).velocity, model(**inputs, drop=drop).velocity)


@pytest.mark.parametrize("name", ["dit-debug-text", "dit-debug-text-xattn"])
def test_caption_padding_is_ignored(name):
    model = _randomize_zero_inits(vlmoe.create_model(name)).eval()
    inputs = make_inputs(model, batch=2, seq_len=7)
    changed = dict(inputs, input_ids=inputs["input_ids"].clone())
    changed["input_ids"][-1, -2:] = (changed["input_ids"][-1, -2:] + 3) % 64  # padding only
    torch.testing.assert_close(model(**inputs).velocity, model(**changed).velocity)


def test_timestep_changes_the_output():
    model = _randomize_zero_inits(vlmoe.create_model("dit-debug")).eval()
    inputs = make_inputs(model)
    later = dict(inputs, t=inputs["t"] + 0.1)
    assert not torch.allclose(model(**inputs).velocity, model(**later).velocity)


@pytest.mark.parametrize("top_k", [1, 2])
def test_upcycled_moe_dit_equals_its_dense_source(top_k):
    torch.manual_seed(0)
    dense = _randomize_zero_inits(vlmoe.create_model("dit-debug")).eval()
    moe = upcycle_model(dense, MoEConfig(num_experts=4, top_k=top_k)).eval()
    assert moe.num_moe_blocks() == len(moe.blocks)
    inputs = make_inputs(dense)
    a, b = dense(**inputs), moe(**inputs)
    torch.testing.assert_close(b.velocity, a.velocity, atol=1e-5, rtol=1e-5)
    assert len(b.moe_aux) == len(moe.blocks) and a.moe_aux == []


@pytest.mark.parametrize("variant", ["-moe", "-ec"])
@pytest.mark.parametrize("size", ["debug", "small"])
def test_moe_twins_have_equal_active_parameters(size, variant):
    dense_total, dense_active = count_parameters(vlmoe.create_model(f"dit-{size}"))
    moe = vlmoe.create_model(f"dit-{size}{variant}")
    moe_total, moe_active = count_parameters(moe)
    assert dense_total == dense_active and moe_total > dense_total
    routers = sum(p.numel() for b in moe.blocks for p in b.ffn.router.parameters())
    assert moe_active - dense_active == routers  # the routers only


def test_expert_choice_fills_every_expert_to_capacity():
    model = _randomize_zero_inits(vlmoe.create_model("dit-debug-ec"))
    inputs = make_inputs(model, batch=4)
    out = model(**inputs)
    tokens = 4 * 16
    capacity = 2 * tokens // 8  # expert_choice_capacity * T / E
    for aux in out.block_aux:
        assert aux.router == "expert_choice"
        assert aux.counts_E.tolist() == [capacity] * 8
    out.velocity.square().mean().backward()
    assert model.blocks[0].ffn.router.gate.weight.grad.abs().sum() > 0


def test_shared_expert_recipe_routes_two_of_eight_plus_shared():
    model = vlmoe.create_model("dit-small-moe")
    ffn = model.blocks[0].ffn
    assert ffn.cfg.num_experts == 8 and ffn.cfg.top_k == 2 and ffn.shared_experts is not None
    assert model.num_moe_blocks() == 6


@pytest.mark.parametrize(
    "change, message",
    [
        ({"image_size": 9}, "divisible by patch_size"),
        ({"num_classes": -1}, "num_classes"),
        ({"transformer.moe.router": "soft"}, "router"),
    ],
)
def test_config_errors_name_the_field(change, message):
    with pytest.raises(ConfigError, match=message):
        preset_config("dit-debug-moe", **change)


def test_causal_caption_encoder_is_refused():
    cfg = preset_config("dit-debug-text").to_dict()
    cfg["text"]["attention"] = "causal"
    with pytest.raises(ConfigError, match="bidirectional"):
        DiTConfig.from_dict(cfg)


def test_bad_inputs_are_named():
    model = vlmoe.create_model("dit-debug")
    inputs = make_inputs(model)
    with pytest.raises(ValueError, match="out of range"):
        model(**dict(inputs, labels=torch.tensor([3, 10])))
    with pytest.raises(ValueError, match="pass labels"):
        model(**dict(inputs, labels=None))
    with pytest.raises(ValueError, match="t must have shape"):
        model(**dict(inputs, t=torch.rand(3)))
    with pytest.raises(ValueError, match="8x8"):
        model(**dict(inputs, x=torch.randn(2, 1, 16, 16)))
    text = vlmoe.create_model("dit-debug-text")
    with pytest.raises(ValueError, match="input_ids"):
        text(inputs["x"].expand(-1, 3, -1, -1).repeat(1, 1, 2, 2), inputs["t"])
