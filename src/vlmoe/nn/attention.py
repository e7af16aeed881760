"""Multi-head self-attention through `scaled_dot_product_attention`, with causal and padding
masks, rotary positions and a KV cache for incremental decoding (Vaswani et al. 2017).

Legend: B batch, L new tokens (queries), S all keys (cached + new), H heads, Hkv key/value
heads, Dh head dim.

Grouped-query attention (Ainslie et al. 2023, as in Llama 2/3, Mistral, Qwen2): `num_kv_heads`
key/value heads each serve H / Hkv query heads; the cache keeps the Hkv heads only.

Masks are boolean, True = may attend. Every query may always attend to itself, so a padding
query never sees an all-masked row (which would give NaN); its output is ignored anyway.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlmoe.nn.rope import apply_rope


class LayerKVCache:
    """Keys and values of the tokens seen so far by one attention layer: (B, H, S, Dh)."""

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def append(self, k_BHLK: Tensor, v_BHLK: Tensor) -> tuple[Tensor, Tensor]:
        if self.k is None:
            self.k, self.v = k_BHLK, v_BHLK
        else:
            self.k = torch.cat([self.k, k_BHLK], dim=2)
            self.v = torch.cat([self.v, v_BHLK], dim=2)
        return self.k, self.v


class KVCache:
    """The decoding state of a whole model: one `LayerKVCache` per attention layer, and which of
    the cached positions hold real tokens (False for padding), so later queries skip them.

    A model's forward extends `key_valid_BS` once per call (`extend`), then each layer appends its
    keys and values. Positions of new tokens continue each sequence's count of real tokens.
    """

    def __init__(self) -> None:
        self.layers: dict[int, LayerKVCache] = {}
        self.key_valid_BS: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.key_valid_BS is None else self.key_valid_BS.shape[1]

    def layer(self, index: int) -> LayerKVCache:
        if index not in self.layers:
            self.layers[index] = LayerKVCache()
        return self.layers[index]

    def extend(self, valid_BL: Tensor) -> tuple[Tensor, Tensor]:
        """Record new tokens; return (positions (B, L) of the new tokens, key_valid (B, S))."""
        past = self.key_valid_BS
        offset_B = (
            past.sum(1)
            if past is not None
            else valid_BL.new_zeros(valid_BL.shape[0], dtype=torch.long)
        )
        positions_BL = offset_B[:, None] + positions_from_mask(valid_BL)
        self.key_valid_BS = valid_BL if past is None else torch.cat([past, valid_BL], dim=1)
        return positions_BL, self.key_valid_BS


def positions_from_mask(valid_BL: Tensor) -> Tensor:
    """Position of each token among its sequence's real tokens (0 for leading padding)."""
    return (valid_BL.long().cumsum(1) - 1).clamp(min=0)


def build_attention_mask(
    key_valid_BS: Tensor | None, num_queries: int, num_keys: int, causal: bool, device: torch.device
) -> Tensor | None:
    """Boolean mask (B or 1, 1, L, S) for SDPA, or None when no mask is needed: no padding, and
    either bidirectional or causal without cache (pass `causal=True` to `Attention` then).

    The queries are the last `num_queries` of the `num_keys` positions (earlier ones are cached).
    """
    if key_valid_BS is not None and bool(key_valid_BS.all()):
        key_valid_BS = None
    if key_valid_BS is None and (not causal or num_queries == num_keys):
        return None  # SDPA needs no mask, or takes its own causal path (is_causal)
    q_pos = torch.arange(num_keys - num_queries, num_keys, device=device)[:, None]  # (L, 1)
    k_pos = torch.arange(num_keys, device=device)[None, :]  # (1, S)
    mask_LS = (
        k_pos <= q_pos
        if causal
        else torch.ones(num_queries, num_keys, dtype=torch.bool, device=device)
    )
    mask = mask_LS[None, None]  # (1, 1, L, S)
    if key_valid_BS is not None:
        mask = mask & key_valid_BS[:, None, None, :].bool()
        mask = mask | (k_pos == q_pos)[None, None]  # a query always sees itself
    return mask


class Attention(nn.Module):
    """Multi-head self-attention with optional grouped-query heads, RoPE and KV cache.

    `qkv` packs the query, key and value projections as rows [q (H Dh) ; k (Hkv Dh) ; v (Hkv Dh)].
    Projections are bias-free unless `qkv_bias` / `proj_bias` (imported checkpoints: Qwen2 has
    biased q, k, v; CLIP and BERT bias every projection).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int | None = None,
        dropout: float = 0.0,
        *,
        num_kv_heads: int | None = None,
        qkv_bias: bool = False,
        proj_bias: bool = False,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads or num_heads
        self.head_dim = head_dim or dim // num_heads
        if head_dim is None and dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        if num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={num_heads} is not divisible by num_kv_heads={self.num_kv_heads}"
            )
        inner = self.num_heads * self.head_dim
        kv_inner = self.num_kv_heads * self.head_dim
        self.qkv = nn.Linear(dim, inner + 2 * kv_inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim, bias=proj_bias)
        self.dropout = dropout

    def forward(
        self,
        x_BLD: Tensor,
        *,
        mask: Tensor | None = None,
        causal: bool = False,
        rope: tuple[Tensor, Tensor] | None = None,
        cache: LayerKVCache | None = None,
    ) -> Tensor:
        """x (B, L, D) -> (B, L, D).

        `mask` is a boolean (B|1, 1, L, S) mask from `build_attention_mask`; when it is None and
        `causal` is set (no padding, no cache), SDPA's own causal path is used.
        """
        B, L, _ = x_BLD.shape
        H, Hkv, Dh = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = self.qkv(x_BLD).view(B, L, H + 2 * Hkv, Dh).transpose(1, 2)  # (B, H + 2 Hkv, L, Dh)
        q, k, v = qkv.split([H, Hkv, Hkv], dim=1)  # (B, H, L, Dh), (B, Hkv, L, Dh) x 2
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, Hkv, S, Dh)
        if Hkv != H:  # each key/value head serves H / Hkv consecutive query heads
            k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
        is_causal = causal and mask is None
        if is_causal and k.shape[2] != L:
            raise ValueError("causal attention over a cache needs an explicit mask")
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, H, L, Dh)
        return self.proj(out.transpose(1, 2).reshape(B, L, -1))  # (B, L, D)
