import pytest
import torch

from vlmoe.config import MoEConfig
from vlmoe.moe.layer import MoEAux, MoELayer
from vlmoe.nn import MLP, Block, LearnedPositions, PatchEmbed, make_norm, sincos_2d


def test_patch_embed_shapes_and_row_major_order():
    pe = PatchEmbed(16, 4, 3, 8)
    assert pe.grid_size == (4, 4) and pe.num_patches == 16
    img = torch.zeros(1, 3, 16, 16)
    img[..., 4:8, 8:12] = 1.0  # patch at row 1, col 2
    out = pe(img) - pe(torch.zeros(1, 3, 16, 16))
    assert out.abs().sum(-1)[0].nonzero().flatten().tolist() == [1 * 4 + 2]
    with pytest.raises(ValueError, match="expected 16x16"):
        pe(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="not divisible"):
        PatchEmbed(15, 4, 3, 8)


def test_sincos_2d():
    emb = sincos_2d(16, (3, 5))
    assert emb.shape == (15, 16)
    assert len({tuple(r.tolist()) for r in emb}) == 15  # every position distinct
    with pytest.raises(ValueError, match="dim % 4"):
        sincos_2d(18, (2, 2))


def test_learned_positions_bounds():
    pos = LearnedPositions(4, 8)
    assert pos(torch.tensor([[0, 3]])).shape == (1, 2, 8)
    with pytest.raises(ValueError, match="beyond the 4 learned positions"):
        pos(torch.tensor([4]))


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_norms(kind):
    y = make_norm(kind, 8)(torch.randn(3, 8) * 5 + 2)
    assert torch.allclose(y.pow(2).mean(-1), torch.ones(3), atol=0.05)


def test_block_dense_returns_no_aux_and_moe_returns_aux():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    dense = Block(16, 2, MLP(16, 32))
    y, aux = dense(x)
    assert y.shape == x.shape and aux is None and not dense.is_moe
    moe = Block(16, 2, MoELayer(MoEConfig(dim=16, hidden_dim=16, num_experts=4, top_k=2)))
    modality = torch.zeros(2, 5, dtype=torch.long)
    y, aux = moe(x, modality)
    assert y.shape == x.shape and isinstance(aux, MoEAux) and moe.is_moe
    assert aux.modality_T.shape == (10,)
