"""Text transformer: a causal language model (generation, the decoder's LM) or a bidirectional
encoder, on the same blocks (GPT-2 / LLaMA style with RoPE, Su et al. 2021, or learned positions).

Positions count real tokens only (`cumsum(attention_mask) - 1`), so a left-padded batch and
cached decoding give each sequence the positions it would have alone.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlmoe.models.base import PretrainedModel
from vlmoe.models.config import TextConfig
from vlmoe.models.embed import (
    check_text_length,
    check_token_ids,
    masked_mean,
    text_modality,
    valid_mask,
)
from vlmoe.models.generation import GenerationMixin
from vlmoe.models.outputs import TextOutput
from vlmoe.models.transformer import Transformer
from vlmoe.moe.layer import MoEAux
from vlmoe.nn.attention import KVCache, build_attention_mask, positions_from_mask
from vlmoe.nn.embed import LearnedPositions
from vlmoe.nn.rope import RotaryEmbedding


class TextTransformer(GenerationMixin, PretrainedModel):
    architecture = "text"
    config_class = TextConfig

    def __init__(self, config: TextConfig) -> None:
        super().__init__(config)
        t = config.transformer
        self.embed = nn.Embedding(config.vocab_size, t.dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.pos = (
            LearnedPositions(config.max_seq_len, t.dim) if config.positions == "learned" else None
        )
        self.rope = (
            RotaryEmbedding(config.rope_dim or t.attn_head_dim, config.rope_theta)
            if config.positions == "rope"
            else None
        )
        self.transformer = Transformer(t)
        self.causal = config.attention == "causal"
        self.lm_head = (
            nn.Linear(t.dim, config.vocab_size, bias=config.lm_head_bias)
            if self.causal and not config.tie_embeddings
            else None
        )

    def logits(self, hidden_BLD: Tensor) -> Tensor:
        """Final hidden states (B, L, D) -> next-token logits (B, L, V), through the LM head or,
        with `tie_embeddings`, the token embedding matrix."""
        if self.lm_head is not None:
            return self.lm_head(hidden_BLD)
        return F.linear(hidden_BLD, self.embed.weight)

    def embed_tokens(self, input_ids_BL: Tensor) -> Tensor:
        """Token ids (B, L), checked against vocab_size -> embeddings (B, L, D)."""
        check_token_ids(input_ids_BL, self.config.vocab_size)
        return self.embed(input_ids_BL)  # (B, L, D)

    def hidden(
        self,
        inputs_embeds: Tensor,
        valid_BL: Tensor,
        modality_BL: Tensor,
        kv_cache: KVCache | None = None,
    ) -> tuple[Tensor, list[MoEAux]]:
        """Embedded tokens (B, L, D) -> final hidden states (B, L, D), MoE auxes.

        With `kv_cache`, the tokens continue the cached ones and the cache is extended.
        """
        B, L, _ = inputs_embeds.shape
        if kv_cache is not None:
            positions_BL, key_valid_BS = kv_cache.extend(valid_BL)
        else:
            positions_BL, key_valid_BS = positions_from_mask(valid_BL), valid_BL
        x_BLD = inputs_embeds
        if self.pos is not None:
            x_BLD = x_BLD + self.pos(positions_BL)
        rope = self.rope(positions_BL) if self.rope is not None else None
        mask = build_attention_mask(
            key_valid_BS, L, key_valid_BS.shape[1], self.causal, x_BLD.device
        )
        return self.transformer(
            x_BLD, modality_BL, mask=mask, causal=self.causal, rope=rope, cache=kv_cache
        )

    def pool(self, hidden_BLD: Tensor, valid_BL: Tensor) -> Tensor:
        kind = self.config.pool
        if kind == "mean":
            return masked_mean(hidden_BLD, valid_BL)
        idx_B = first_or_last_valid(valid_BL, "last" if kind == "last" else "first")
        return hidden_BLD[torch.arange(hidden_BLD.shape[0], device=hidden_BLD.device), idx_B]

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        inputs_embeds: Tensor | None = None,
        modality: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> TextOutput:
        """input_ids (B, L) (or inputs_embeds (B, L, D)), attention_mask (B, L) 1 = real token.

        One call takes at most `max_seq_len` token ids (with learned positions, a cached
        sequence can grow no longer either; RoPE positions continue past it). With `kv_cache`,
        `attention_mask` covers this call's tokens only (the cache remembers which earlier
        positions were padding).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if input_ids is not None:
            x_BLD = self.embed_tokens(input_ids)
            check_text_length(input_ids.shape[1], self.config.max_seq_len)
        else:
            x_BLD = inputs_embeds
        B, L, _ = x_BLD.shape
        valid_BL = valid_mask(attention_mask, B, L, x_BLD.device)
        modality_BL = text_modality(valid_BL) if modality is None else modality
        h_BLD, auxes = self.hidden(x_BLD, valid_BL, modality_BL, kv_cache)
        return TextOutput(
            logits=self.logits(h_BLD) if self.causal else None,
            hidden_states=h_BLD,
            pooled=self.pool(h_BLD, valid_BL),
            modality=modality_BL,
            moe_aux=auxes,
        )

    def next_token_logits(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        images: Tensor | None,
        kv_cache: KVCache | None,
    ) -> Tensor:
        """Logits (B, V) for the token after the last position (used by `generate`)."""
        if images is not None:
            raise ValueError("a text transformer takes no images")
        if not self.causal:
            raise ValueError("generate() needs a causal text transformer (attention='causal')")
        return self(input_ids, attention_mask, kv_cache=kv_cache).logits[:, -1]


def first_or_last_valid(valid_BL: Tensor, which: Literal["first", "last"]) -> Tensor:
    """Index (B,) of each row's first or last real token (0 / L - 1 for an all-padding row)."""
    L = valid_BL.shape[1]
    if which == "first":
        return valid_BL.int().argmax(1)
    return L - 1 - valid_BL.flip(1).int().argmax(1)
