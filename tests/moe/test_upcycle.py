import pytest
import torch

from vlmoe.config import ConfigError, MoEConfig
from vlmoe.moe import upcycle_mlp
from vlmoe.nn.mlp import MLP


@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_upcycled_layer_equals_dense(activation, k):
    torch.manual_seed(0)
    mlp = MLP(16, 32, activation)
    layer = upcycle_mlp(
        mlp, MoEConfig(dim=16, hidden_dim=32, num_experts=4, top_k=k, activation=activation)
    )
    x = torch.randn(3, 9, 16)
    y, _ = layer(x)
    if k == 1:
        assert torch.equal(y, mlp(x))
    else:
        torch.testing.assert_close(y, mlp(x), atol=1e-6, rtol=1e-6)
    assert layer.experts.w_in.data_ptr() != mlp.fc_in.weight.data_ptr()


def test_upcycle_noise_breaks_symmetry_and_checks_shapes():
    mlp = MLP(8, 16)
    layer = upcycle_mlp(
        mlp,
        MoEConfig(dim=8, hidden_dim=16, num_experts=2),
        noise_std=0.01,
        generator=torch.Generator().manual_seed(0),
    )
    assert not torch.equal(layer.experts.w_in[0], layer.experts.w_in[1])
    with pytest.raises(ConfigError, match="hidden_dim"):
        upcycle_mlp(mlp, MoEConfig(dim=8, hidden_dim=8, num_experts=2))
