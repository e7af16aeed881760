import dataclasses

import pytest
import torch

import vlmoe
from vlmoe.config import ConfigError
from vlmoe.models import count_parameters, registry
from vlmoe.models.registry import preset_config
from vlmoe.moe.layer import MoEAux

from .helpers import DEBUG_PRESETS, float_tensors, make_inputs


def test_registry_lists_every_family_in_debug_and_small_dense_and_moe():
    names = vlmoe.list_presets()
    for arch in ("vit", "text", "fusion", "contrastive", "decoder"):
        for size in ("debug", "small"):
            assert f"{arch}-{size}" in names
            assert f"{arch}-{size}-moe" in names
    assert vlmoe.list_presets("vit") == [n for n in names if n.startswith("vit-")]


@pytest.mark.parametrize("name", DEBUG_PRESETS)
def test_forward_backward(name):
    torch.manual_seed(0)
    model = vlmoe.create_model(name)
    out = model(**make_inputs(model))
    moe_blocks = sum(1 for m in model.modules() if type(m).__name__ == "MoELayer")
    assert all(isinstance(a, MoEAux) for a in out.moe_aux)
    # The contrastive model runs its tower twice (images, texts).
    passes = 2 if model.architecture == "contrastive" else 1
    assert len(out.moe_aux) == moe_blocks * passes
    loss = sum(t.float().pow(2).mean() for t in float_tensors(out).values())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads if g is not None)
    assert sum(g is not None for g in grads) > 0.8 * len(grads)


@pytest.mark.parametrize("name", [n for n in DEBUG_PRESETS if n.endswith("-moe")])
def test_dense_and_moe_twins_return_the_same_kind_of_output(name):
    dense = vlmoe.create_model(name.removesuffix("-moe"))
    moe = vlmoe.create_model(name)
    inputs = make_inputs(dense)
    a, b = dense(**inputs), moe(**inputs)
    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor) and x.shape == y.shape, f.name
        elif isinstance(x, list):
            assert isinstance(y, list), f.name
        else:
            assert x == y, f.name
    assert a.moe_aux == [] and len(b.moe_aux) > 0


@pytest.mark.parametrize("size", ["debug", "small"])
@pytest.mark.parametrize("arch", ["vit", "text", "fusion", "contrastive", "decoder"])
def test_moe_twin_has_equal_active_parameters(arch, size):
    dense_total, dense_active = count_parameters(vlmoe.create_model(f"{arch}-{size}"))
    moe_total, moe_active = count_parameters(vlmoe.create_model(f"{arch}-{size}-moe"))
    assert dense_total == dense_active
    assert moe_total > dense_total
    # Only the routers' weights are extra per token.
    assert 0 <= moe_active - dense_active <= 0.01 * dense_active


def test_overrides_bare_dotted_ambiguous_unknown():
    m = vlmoe.create_model("fusion-debug", vocab_size=33, **{"transformer.num_layers": 3})
    assert m.config.vocab_size == 33 and len(m.transformer.blocks) == 3
    d = preset_config("decoder-debug", vocab_size=40, image_size=32)
    assert d.text.vocab_size == 40 and d.vision.image_size == 32
    with pytest.raises(ConfigError, match="ambiguous"):
        preset_config("decoder-debug", dim=64)
    with pytest.raises(ConfigError, match="unknown"):
        preset_config("vit-debug", num_clases=3)
    with pytest.raises(ConfigError, match="unknown preset"):
        vlmoe.create_model("vit-huge")


def test_preset_configs_are_copies():
    a = preset_config("vit-debug")
    a.num_classes = 99
    assert preset_config("vit-debug").num_classes != 99


def test_register_preset_and_checks(monkeypatch):
    monkeypatch.setattr(registry, "_PRESETS", dict(registry._PRESETS))
    cfg = preset_config("vit-debug", num_classes=3)
    vlmoe.register_preset("vit-test-3", "vit", cfg, "test")
    assert vlmoe.create_model("vit-test-3").config.num_classes == 3
    with pytest.raises(ConfigError, match="unknown architecture"):
        vlmoe.register_preset("x", "resnet", cfg)
    with pytest.raises(ConfigError, match="needs a"):
        vlmoe.register_preset("x", "text", cfg)
