"""Autoregressive generation with a KV cache: greedy or temperature / top-k / top-p (nucleus,
Holtzman et al. 2020) sampling, a token budget, stop tokens, and batches of left-padded prompts.

The model supplies `next_token_logits(input_ids, attention_mask, images, kv_cache) -> (B, V)`;
with a cache it is called once on the whole prompt, then on one new token per step; without one
(`cache="none"`, the slow reference the tests hold the cached path to) on the whole sequence
every step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from vlmoe.nn.attention import KVCache


class Generator(Protocol):
    def next_token_logits(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        images: Tensor | None,
        kv_cache: KVCache | None,
    ) -> Tensor: ...


class GenerationMixin:
    """`model.generate(...)` for any model with `next_token_logits` (text LM, decoder VLM)."""

    def generate(
        self: Generator,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Continue left-padded prompts (B, L) -> new tokens (B, T); a decoder takes
        `images=(B, C, H, W)`. Options as in `vlmoe.models.generation.generate`."""
        return generate(self, input_ids, attention_mask, **kwargs)


def sample_next(
    logits_BV: Tensor,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick one token per row: argmax when temperature == 0, else sample from the
    temperature-scaled distribution restricted to the top-k tokens and the top-p mass."""
    if temperature <= 0:
        return logits_BV.argmax(-1)
    logits_BV = logits_BV.float() / temperature
    if top_k > 0:
        kth = logits_BV.topk(min(top_k, logits_BV.shape[-1]), dim=-1).values[:, -1:]
        logits_BV = logits_BV.masked_fill(logits_BV < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits_BV.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits_BV = torch.full_like(logits_BV, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits_BV.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: Generator,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    images: Tensor | None = None,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_tokens: Sequence[int] = (),
    pad_token_id: int = 0,
    cache: Literal["kv", "none"] = "kv",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Generate up to `max_new_tokens` after each prompt.

    Args:
        input_ids: (B, L) prompts, left-padded (the last position is real in every row).
        attention_mask: (B, L), 1 at real tokens; None = no padding.
        images: (B, C, H, W) for a vision-language decoder.
        stop_tokens: a row stops after emitting one of them (it is kept in the output).
    Returns:
        (B, T) new tokens, T <= max_new_tokens; `pad_token_id` after a row has stopped.
    """
    steps = iter_generate(
        model,
        input_ids,
        attention_mask,
        images=images,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        stop_tokens=stop_tokens,
        pad_token_id=pad_token_id,
        cache=cache,
        generator=generator,
    )
    return torch.stack(list(steps), dim=1)


def iter_generate(
    model: Generator,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    images: Tensor | None = None,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_tokens: Sequence[int] = (),
    pad_token_id: int = 0,
    cache: Literal["kv", "none"] = "kv",
    generator: torch.Generator | None = None,
) -> Iterator[Tensor]:
    """`generate` one step at a time: yields each step's new tokens (B,) as soon as they are
    chosen (for streaming); stacked along dim 1 they are what `generate` returns. Closing the
    iterator early stops the generation. Arguments as in `generate`."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    B, L = input_ids.shape
    mask_BL = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
    if L and not bool(mask_BL[:, -1].all()):
        raise ValueError(
            "prompts must be left-padded: the last position of every row must be a real token"
        )
    with torch.no_grad():  # re-entered on every resume: grad mode is per thread and per frame
        kv = KVCache() if cache == "kv" else None
        stops = torch.tensor(list(stop_tokens), dtype=input_ids.dtype, device=input_ids.device)
        finished_B = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        tokens_BL = input_ids
        logits_BV = model.next_token_logits(input_ids, mask_BL, images, kv)
    for step in range(max_new_tokens):
        with torch.no_grad():
            # Finished rows keep running (their results are discarded) on the sampled token,
            # which is always a valid id, while the output shows `pad_token_id`.
            next_B = sample_next(logits_BV, temperature, top_k, top_p, generator)
            shown_B = torch.where(finished_B, torch.full_like(next_B, pad_token_id), next_B)
            if len(stops):
                finished_B = finished_B | torch.isin(next_B, stops)
        yield shown_B
        if step == max_new_tokens - 1 or bool(finished_B.all()):
            return
        with torch.no_grad():
            one_B1 = torch.ones(B, 1, dtype=mask_BL.dtype, device=mask_BL.device)
            if kv is not None:
                logits_BV = model.next_token_logits(next_B[:, None], one_B1, None, kv)
            else:
                tokens_BL = torch.cat([tokens_BL, next_B[:, None]], dim=1)
                mask_BL = torch.cat([mask_BL, one_B1], dim=1)
                logits_BV = model.next_token_logits(tokens_BL, mask_BL, images, None)
