"""Parity with the transformers Mixtral and Qwen2-MoE sparse blocks after conversion."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from vlmoe.moe import MoELayer  # noqa: E402
from vlmoe.moe.hf import (  # noqa: E402
    load_mixtral_state_dict,
    load_qwen2_moe_state_dict,
    mixtral_config,
    mixtral_state_dict,
    qwen2_moe_config,
    qwen2_moe_state_dict,
)


def _init(module):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_mixtral_block_parity_both_ways(k):
    from transformers.models.mixtral.configuration_mixtral import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    hf_cfg = MixtralConfig(
        hidden_size=16, intermediate_size=24, num_local_experts=4, num_experts_per_tok=k
    )
    block = MixtralSparseMoeBlock(hf_cfg).eval()
    _init(block)
    layer = MoELayer(mixtral_config(hf_cfg))
    load_mixtral_state_dict(layer, block.state_dict())
    x = torch.randn(2, 7, 16)
    y, _ = layer(x)
    torch.testing.assert_close(y, block(x), atol=1e-5, rtol=1e-5)
    # And back: a fresh block loaded from vlmoe's weights computes the same.
    block2 = MixtralSparseMoeBlock(hf_cfg).eval()
    block2.load_state_dict(mixtral_state_dict(layer))
    torch.testing.assert_close(block2(x), y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("norm", [True, False])
def test_qwen2_moe_block_parity_both_ways(k, norm):
    from transformers.models.qwen2_moe.configuration_qwen2_moe import Qwen2MoeConfig
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    hf_cfg = Qwen2MoeConfig(
        hidden_size=16,
        moe_intermediate_size=8,
        shared_expert_intermediate_size=20,
        num_experts=4,
        num_experts_per_tok=k,
        norm_topk_prob=norm,
    )
    block = Qwen2MoeSparseMoeBlock(hf_cfg).eval()
    _init(block)
    layer = MoELayer(qwen2_moe_config(hf_cfg))
    load_qwen2_moe_state_dict(layer, block.state_dict())
    x = torch.randn(2, 5, 16)
    y, _ = layer(x)
    torch.testing.assert_close(y, block(x), atol=1e-5, rtol=1e-5)
    block2 = Qwen2MoeSparseMoeBlock(hf_cfg).eval()
    block2.load_state_dict(qwen2_moe_state_dict(layer))
    torch.testing.assert_close(block2(x), y, atol=1e-5, rtol=1e-5)


def test_mismatched_state_dict_is_named():
    from transformers.models.mixtral.configuration_mixtral import MixtralConfig

    hf_cfg = MixtralConfig(
        hidden_size=16, intermediate_size=24, num_local_experts=4, num_experts_per_tok=2
    )
    layer = MoELayer(mixtral_config(hf_cfg))
    state = mixtral_state_dict(layer)
    state["experts.down_proj"] = state["experts.down_proj"][:, :, :5]
    with pytest.raises(ValueError, match="experts.down_proj has shape"):
        load_mixtral_state_dict(layer, state)
    del state["gate.weight"]
    with pytest.raises(ValueError, match="missing keys \\['gate.weight'\\]"):
        load_mixtral_state_dict(layer, state)


def test_mixtral_router_jitter_noise_is_carried():
    from transformers.models.mixtral.configuration_mixtral import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    hf_cfg = MixtralConfig(
        hidden_size=16,
        intermediate_size=24,
        num_local_experts=8,
        num_experts_per_tok=2,
        router_jitter_noise=0.5,
    )
    cfg = mixtral_config(hf_cfg)
    assert cfg.router_noise == "jitter" and cfg.router_noise_eps == 0.5
    assert mixtral_config(hf_cfg, router_noise="none").router_noise == "none"
    hf_cfg.router_jitter_noise = 0.0
    assert mixtral_config(hf_cfg).router_noise == "none"
    hf_cfg.router_jitter_noise = 1.5
    with pytest.raises(ValueError, match="router_jitter_noise must be in"):
        mixtral_config(hf_cfg)

    # In training, the same seed jitters both routers alike: the same experts are chosen.
    hf_cfg.router_jitter_noise = 0.5
    block = MixtralSparseMoeBlock(hf_cfg).train()
    _init(block)
    layer = MoELayer(mixtral_config(hf_cfg)).train()
    load_mixtral_state_dict(layer, block.state_dict())
    captured = {}
    block.gate.register_forward_hook(lambda m, i, out: captured.update(ids=out[2]))
    x = torch.randn(2, 40, 16)
    torch.manual_seed(3)
    block(x.clone())
    torch.manual_seed(3)
    _, aux = layer(x)
    assert torch.equal(aux.expert_ids_TK, captured["ids"])
    layer.eval()
    assert not torch.equal(layer(x)[1].expert_ids_TK, captured["ids"])  # the jitter mattered
