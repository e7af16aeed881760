"""Dispatch and combine: move (token, expert) pairs into one buffer sorted by expert, and back.

Legend: T tokens, D model dim, K expert slots per token, E experts, N = T * K pairs.

Sort-based and dropless by default (MegaBlocks, Gale et al. 2022): the pairs are stably sorted by
expert id, so the buffer holds every pair exactly once and each expert reads one contiguous
slice; no (E, capacity, D) padding is ever built. With `capacity_factor`, each expert keeps at
most C = ceil(capacity_factor * T * K / E) pairs (Switch, GShard); the rest are dropped and sit at
the end of the buffer, where the experts return zeros, so a dropped pair adds nothing and the
token passes through the residual. Which pairs an expert keeps follows a priority order: all
first choices before any second choice, then either token position (`position`) or the token's
priority, highest first (`score`: batch-prioritized routing, V-MoE, Riquelme et al. 2021). The
priority is the router's top probability *before* top-k renormalization (`priority_T`, given by
the layer): after renormalization a top-1 weight is always 1 and would say nothing.
With `group_size` G, capacity is defined per group of G consecutive tokens (GShard's groups,
Lepikhin et al. 2020): each expert keeps at most ceil(capacity_factor * G * K / E) pairs of every
group, in the group's own priority order. A batch split across ranks along group boundaries then
drops exactly the pairs one process drops (`vlmoe.distributed`).

Both directions of the permutation are gathers (rows by index), in forward and in backward,
through small autograd functions: no scatter-add, no atomics, deterministic, and the gradient of
a gather by a permutation is a gather by its inverse.

Expert parallelism replaces only this pair of functions (`Dispatcher`); the plan is the contract.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

DropPolicy = Literal["position", "score"]


@dataclass(frozen=True)
class DispatchPlan:
    """How the buffer was built; everything `combine` and the stats need.

    counts_E: pairs each expert computes (after capacity), int64.
    order_N: buffer row n holds pair order_N[n] of the flattened (T, K) pairs.
    inverse_N: pair p sits in buffer row inverse_N[p].
    kept_TK: False where a pair was dropped by capacity or never routed (id -1).
    """

    counts_E: Tensor
    order_N: Tensor
    inverse_N: Tensor
    kept_TK: Tensor
    weights_TK: Tensor
    # Expert parallelism: rows per local expert of the buffer `Experts` sees; None = counts_E.
    local_counts: Tensor | None = None

    @property
    def expert_counts(self) -> Tensor:
        """Rows per expert of the buffer handed to `Experts` (its own experts under EP)."""
        return self.counts_E if self.local_counts is None else self.local_counts


class _GatherPairs(torch.autograd.Function):
    """x_ND[n] = x_TD[order_N[n] // K]; backward gathers each token's K rows back and adds them."""

    @staticmethod
    def forward(ctx, x_TD: Tensor, order_N: Tensor, inverse_N: Tensor, K: int) -> Tensor:
        ctx.save_for_backward(inverse_N)
        ctx.K = K
        return x_TD.index_select(0, order_N // K)

    @staticmethod
    def backward(ctx, grad_ND: Tensor):
        (inverse_N,) = ctx.saved_tensors
        rows_TK = inverse_N.view(-1, ctx.K)
        # K gathers and adds: a reduction over a middle axis is several times slower in bf16.
        grad_TD = grad_ND.index_select(0, rows_TK[:, 0])
        for k in range(1, ctx.K):
            grad_TD.add_(grad_ND.index_select(0, rows_TK[:, k]))
        return grad_TD, None, None, None


class _WeightedCombine(torch.autograd.Function):
    """y_TD[t] = sum_k w_TK[t, k] * y_ND[inverse_N[t*K + k]], all gathers in both directions."""

    @staticmethod
    def forward(ctx, y_ND: Tensor, w_TK: Tensor, order_N: Tensor, inverse_N: Tensor) -> Tensor:
        K = w_TK.shape[1]
        rows_TK = inverse_N.view(-1, K)
        w = w_TK.to(y_ND.dtype)
        out_TD = y_ND.index_select(0, rows_TK[:, 0]) * w[:, :1]
        for k in range(1, K):
            out_TD.addcmul_(y_ND.index_select(0, rows_TK[:, k]), w[:, k : k + 1])
        ctx.save_for_backward(y_ND if w_TK.requires_grad else None, w_TK, order_N, inverse_N)
        return out_TD

    @staticmethod
    def backward(ctx, grad_TD: Tensor):
        y_ND, w_TK, order_N, inverse_N = ctx.saved_tensors
        K = w_TK.shape[1]
        # Row n of the buffer came from pair p = order_N[n]: token p // K with weight w[p].
        g_ND = grad_TD.index_select(0, order_N // K)  # one gather serves both gradients
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w_N = torch.linalg.vecdot(g_ND, y_ND).float()  # (N,), per buffer row
            grad_w = grad_w_N.index_select(0, inverse_N).view(-1, K)
        w_N = w_TK.reshape(-1).index_select(0, order_N).to(grad_TD.dtype)
        grad_ND = g_ND.mul_(w_N[:, None])
        return grad_ND, grad_w, None, None


def count_ids(ids: Tensor, num_bins: int) -> Tensor:
    """(num_bins,) int64 histogram of ids in [0, num_bins). Unlike `torch.bincount`, its output
    size does not depend on the data, so it never waits for the device."""
    return torch.zeros(num_bins, dtype=torch.long, device=ids.device).scatter_add_(
        0, ids.reshape(-1), torch.ones_like(ids.reshape(-1), dtype=torch.long)
    )


def _priority_rank(
    weights_TK: Tensor, drop_policy: DropPolicy, priority_T: Tensor | None = None
) -> Tensor:
    """(T*K,) rank of every pair in keep-priority order (0 = kept first). Under `score`, tokens
    rank by `priority_T` (default: their top weight), highest first, ties by position."""
    T, K = weights_TK.shape
    if drop_policy == "position":
        token_order = torch.arange(T, device=weights_TK.device)
    else:  # batch-prioritized: tokens with the most confident router go first
        score_T = weights_TK.max(dim=1).values if priority_T is None else priority_T
        token_order = score_T.argsort(descending=True, stable=True)
    token_rank = torch.empty_like(token_order)
    token_rank[token_order] = torch.arange(T, device=weights_TK.device)
    rank_TK = torch.arange(K, device=weights_TK.device)[None, :] * T + token_rank[:, None]
    return rank_TK.reshape(-1)


def capacity(num_tokens: int, top_k: int, num_experts: int, capacity_factor: float) -> int:
    """Pairs one expert may keep: ceil(capacity_factor * T * K / E)."""
    return math.ceil(capacity_factor * num_tokens * top_k / num_experts)


class Dispatcher:
    """Single-device dispatch/combine. Stateless apart from its settings."""

    def __init__(
        self,
        num_experts: int,
        capacity_factor: float | None = None,
        drop_policy: DropPolicy = "score",
        group_size: int | None = None,
    ) -> None:
        self.num_experts = num_experts
        self.capacity_factor = capacity_factor
        self.drop_policy = drop_policy
        self.group_size = group_size  # tokens per capacity group; None = the whole batch

    def plan(
        self, expert_ids_TK: Tensor, weights_TK: Tensor, priority_T: Tensor | None = None
    ) -> DispatchPlan:
        """Sort the pairs by expert (kept pairs first, dropped ones at the end). `priority_T`
        ranks tokens for `drop_policy="score"` (the router's probability before renormalizing)."""
        T, K = expert_ids_TK.shape
        E, N = self.num_experts, T * K
        ids_N = expert_ids_TK.reshape(-1)
        routed_N = ids_N >= 0
        if self.capacity_factor is None:
            # Dropless. Unrouted pairs (-1, expert choice) sort to the end as bin E.
            key_N = torch.where(routed_N, ids_N, E)
            order_N = key_N.argsort(stable=True)
            kept_N = routed_N
        else:
            G = self.group_size or T
            if G and T % G:
                raise ValueError(
                    f"{T} tokens do not split into capacity groups of moe.capacity_group_size={G}"
                )
            groups = T // G if G else 1
            C = capacity(G, K, E, self.capacity_factor)
            rank_N = _priority_rank(weights_TK, self.drop_policy, priority_T)
            # One bin per (expert, group); unrouted pairs go to the last bin.
            group_N = torch.arange(N, device=ids_N.device) // K // max(G, 1)
            bin_N = torch.where(routed_N, ids_N * groups + group_N, E * groups)
            key_N = bin_N * N + rank_N
            by_bin_N = key_N.argsort()
            sorted_bins = bin_N[by_bin_N]
            counts_all = count_ids(sorted_bins, E * groups + 1)
            starts = torch.cumsum(counts_all, 0) - counts_all
            slot_N = torch.arange(N, device=ids_N.device) - starts[sorted_bins]
            kept_sorted = (slot_N < C) & (sorted_bins < E * groups)
            kept_N = torch.empty_like(kept_sorted)
            kept_N[by_bin_N] = kept_sorted
            final_key = torch.where(kept_N, key_N, (E * groups + 1) * N + rank_N)
            order_N = final_key.argsort()
        kept_ids = torch.where(kept_N, ids_N, E)
        counts_E = count_ids(kept_ids, E + 1)[:E]
        inverse_N = torch.empty_like(order_N)
        inverse_N[order_N] = torch.arange(N, device=order_N.device)
        kept_TK = kept_N.view(T, K)
        return DispatchPlan(counts_E, order_N, inverse_N, kept_TK, weights_TK)

    def dispatch(
        self,
        x_TD: Tensor,
        expert_ids_TK: Tensor,
        weights_TK: Tensor,
        priority_T: Tensor | None = None,
    ) -> tuple[Tensor, DispatchPlan]:
        """(T, D) tokens -> (N, D) buffer sorted by expert, and the plan to undo it."""
        plan = self.plan(expert_ids_TK, weights_TK, priority_T)
        K = expert_ids_TK.shape[1]
        x_ND = _GatherPairs.apply(x_TD, plan.order_N, plan.inverse_N, K)
        return x_ND, plan

    def combine(self, y_ND: Tensor, plan: DispatchPlan) -> Tensor:
        """(N, D) expert outputs -> (T, D): each token's router-weighted sum over its experts."""
        w_TK = plan.weights_TK
        # Dropless, the only pairs not kept are unrouted ones (-1): routers give them weight 0
        # and their buffer rows come back from the experts as zeros, so no mask is needed.
        if self.capacity_factor is not None:
            w_TK = torch.where(plan.kept_TK, w_TK, 0.0)
        return _WeightedCombine.apply(y_ND, w_TK, plan.order_N, plan.inverse_N)  # (T, D)
