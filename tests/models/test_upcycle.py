import pytest
import torch

import vlmoe
from vlmoe.config import ConfigError, MoEConfig
from vlmoe.models import count_parameters, load_model, upcycle_model
from vlmoe.moe.layer import MoELayer

from .helpers import float_tensors, make_inputs

DENSE = ["vit-debug", "text-debug", "fusion-debug", "contrastive-debug", "decoder-debug"]


@pytest.mark.parametrize("name", DENSE)
@pytest.mark.parametrize("top_k", [1, 2])
def test_upcycled_model_equals_dense_at_init(name, top_k):
    torch.manual_seed(0)
    dense = vlmoe.create_model(name).eval()
    moe = upcycle_model(dense, MoEConfig(num_experts=4, top_k=top_k), moe_every=1)
    assert not moe.training
    layers = [m for m in moe.modules() if isinstance(m, MoELayer)]
    assert len(layers) == 2  # every block of the (2-block) upcycled tower
    inputs = make_inputs(dense)
    a, b = float_tensors(dense(**inputs)), float_tensors(moe(**inputs))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    assert len(moe(**inputs).moe_aux) > 0
    # The dense model is untouched.
    assert not any(isinstance(m, MoELayer) for m in dense.modules())


def test_upcycled_model_saves_and_loads(tmp_path):
    dense = vlmoe.create_model("decoder-debug").eval()
    moe = upcycle_model(dense, MoEConfig(num_experts=4, top_k=2), moe_layers=[0])
    assert moe.config.text.transformer.moe.hidden_dim == dense.config.text.transformer.hidden_dim
    assert moe.config.vision.transformer.moe is None  # MoE-LLaVA: the LM only
    moe.save_pretrained(tmp_path)
    again = load_model(tmp_path).eval()
    inputs = make_inputs(dense)
    assert torch.equal(moe(**inputs).logits, again(**inputs).logits)
    total, active = count_parameters(moe)
    assert total > active


def test_upcycle_choices_are_checked():
    dense = vlmoe.create_model("decoder-debug")
    both = upcycle_model(dense, MoEConfig(num_experts=4, top_k=2), towers=["vision", "text"])
    assert both.config.vision.transformer.moe is not None
    with pytest.raises(ConfigError, match="unknown tower 'audio'"):
        upcycle_model(dense, MoEConfig(), towers=["audio"])
    with pytest.raises(ConfigError, match="already MoE"):
        upcycle_model(vlmoe.create_model("vit-debug-moe"), MoEConfig())
