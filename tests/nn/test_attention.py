import math

import pytest
import torch

from vlmoe.nn.attention import Attention, KVCache, build_attention_mask, positions_from_mask
from vlmoe.nn.rope import RotaryEmbedding, apply_rope


def reference_attention(attn: Attention, x, allowed, rope=None):
    """Explicit softmax(QK^T / sqrt(d)) V with a boolean (B, L, S) mask."""
    B, L, _ = x.shape
    q, k, v = attn.qkv(x).view(B, L, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    scores = q @ k.transpose(-1, -2) / math.sqrt(attn.head_dim)
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    out = scores.softmax(-1) @ v
    return attn.proj(out.transpose(1, 2).reshape(B, L, -1))


@pytest.mark.parametrize("causal", [False, True])
def test_masks_match_reference(causal):
    torch.manual_seed(0)
    attn = Attention(16, 2)
    x = torch.randn(2, 5, 16)
    valid = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], dtype=torch.bool)
    mask = build_attention_mask(valid, 5, 5, causal, x.device)
    allowed = valid[:, None, :].expand(2, 5, 5).clone()
    if causal:
        allowed &= torch.ones(5, 5, dtype=torch.bool).tril()
    allowed |= torch.eye(5, dtype=torch.bool)
    got = attn(x, mask=mask, causal=causal)
    want = reference_attention(attn, x, allowed)
    # Rows of real tokens must match; padding rows only need to be finite.
    assert torch.allclose(got[valid], want[valid], atol=1e-5)
    assert torch.isfinite(got).all()


def test_no_mask_needed_without_padding():
    valid = torch.ones(2, 4, dtype=torch.bool)
    assert build_attention_mask(valid, 4, 4, False, valid.device) is None
    assert build_attention_mask(None, 4, 4, True, valid.device) is None  # SDPA is_causal
    assert build_attention_mask(None, 1, 4, True, valid.device).shape == (1, 1, 1, 4)


def test_kv_cache_matches_full_causal_pass():
    torch.manual_seed(0)
    attn = Attention(16, 4)
    rope = RotaryEmbedding(4)
    x = torch.randn(2, 6, 16)
    valid = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    full_pos = positions_from_mask(valid)
    full = attn(
        x, mask=build_attention_mask(valid, 6, 6, True, x.device), causal=True, rope=rope(full_pos)
    )
    cache = KVCache()
    outs = []
    for start, stop in ((0, 3), (3, 4), (4, 6)):
        pos, key_valid = cache.extend(valid[:, start:stop])
        assert torch.equal(pos[valid[:, start:stop]], full_pos[:, start:stop][valid[:, start:stop]])
        mask = build_attention_mask(key_valid, stop - start, stop, True, x.device)
        outs.append(
            attn(x[:, start:stop], mask=mask, causal=True, rope=rope(pos), cache=cache.layer(0))
        )
    assert len(cache) == 6
    assert torch.allclose(torch.cat(outs, 1)[valid], full[valid], atol=1e-5)


def test_rope_scores_depend_on_relative_position_only():
    rope = RotaryEmbedding(8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(i, j):
        ci, si = rope(torch.tensor([[i]]))
        cj, sj = rope(torch.tensor([[j]]))
        return (apply_rope(q, ci, si) * apply_rope(k, cj, sj)).sum()

    assert torch.allclose(score(3, 1), score(10, 8), atol=1e-5)
    assert not torch.allclose(score(3, 1), score(3, 2), atol=1e-3)


def test_positions_from_mask_skips_left_padding():
    valid = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    assert positions_from_mask(valid).tolist() == [[0, 0, 0, 1], [0, 1, 2, 2]]
