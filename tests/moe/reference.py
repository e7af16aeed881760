"""Slow, obviously correct twins of the MoE layer used by the tests."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vlmoe.moe.layer import MoELayer
from vlmoe.nn.mlp import activate


def expert_forward(layer: MoELayer, e: int, x_TD: Tensor) -> Tensor:
    """Expert e applied to every token."""
    h = activate(x_TD @ layer.experts.w_in[e], layer.cfg.activation)
    return h @ layer.experts.w_out[e]


def dense_combine_weights(
    expert_ids_TK: Tensor, weights_TK: Tensor, kept_TK: Tensor, E: int
) -> Tensor:
    """(T, E) combine matrix: weight of expert e for token t (0 if not routed or dropped)."""
    W = torch.zeros(expert_ids_TK.shape[0], E, dtype=weights_TK.dtype)
    for t in range(expert_ids_TK.shape[0]):
        for k in range(expert_ids_TK.shape[1]):
            e = int(expert_ids_TK[t, k])
            if e >= 0 and bool(kept_TK[t, k]):
                W[t, e] += weights_TK[t, k]
    return W


def layer_kept(layer: MoELayer, routing) -> Tensor:
    """(T, K) which pairs survive the layer's capacity, from the rules (not from the fast path):
    per group of `capacity_group_size` tokens (all tokens by default) `reference_kept` with
    C = ceil(capacity_factor * G * K / E) and each token's priority = its router probability
    before renormalization (the highest over its chosen experts)."""
    cfg, ids = layer.cfg, routing.expert_ids_TK
    T, K = ids.shape
    if cfg.capacity_factor is None:
        return ids >= 0
    G = cfg.capacity_group_size or T
    C = math.ceil(cfg.capacity_factor * G * K / cfg.num_experts)
    priority = torch.tensor(
        [
            max((float(routing.probs_TE[t, int(e)]) for e in ids[t] if int(e) >= 0), default=0.0)
            for t in range(T)
        ]
    )
    return torch.cat(
        [
            reference_kept(ids[g : g + G], priority[g : g + G], C, cfg.drop_policy)
            for g in range(0, T, G)
        ]
    )


def reference_moe(layer: MoELayer, x: Tensor, modality: Tensor | None = None) -> Tensor:
    """Every expert on every token, weighted by the layer's own routing (top-k routers) and
    the capacity rules applied independently (`layer_kept`)."""
    D = x.shape[-1]
    x_TD = x.reshape(-1, D)
    mod = None if modality is None else modality.reshape(-1)
    routing = layer.router(x_TD, mod)
    W_TE = dense_combine_weights(
        routing.expert_ids_TK,
        routing.weights_TK,
        layer_kept(layer, routing),
        layer.cfg.num_experts,
    )
    y = sum(
        W_TE[:, e : e + 1].to(x.dtype) * expert_forward(layer, e, x_TD)
        for e in range(layer.cfg.num_experts)
    )
    if layer.shared_experts is not None:
        s = layer.shared_experts(x_TD)
        if layer.shared_gate is not None:
            s = torch.sigmoid(layer.shared_gate(x_TD)) * s
        y = y + s
    return y.view(x.shape)


def reference_soft_moe(layer: MoELayer, x_BLD: Tensor) -> Tensor:
    """Soft MoE written slot by slot."""
    routing = layer.router(x_BLD)
    B, L, D = x_BLD.shape
    S = layer.router.num_slots
    per = S // layer.cfg.num_experts
    out = torch.zeros_like(x_BLD)
    for b in range(B):
        slot_out = []
        for s in range(S):
            slot_in = (routing.soft_dispatch_BLS[b, :, s : s + 1] * x_BLD[b]).sum(0, keepdim=True)
            slot_out.append(expert_forward(layer, s // per, slot_in))
        Y = torch.cat(slot_out)  # (S, D)
        out[b] = routing.soft_combine_BLS[b] @ Y
    return out


def reference_kept(
    expert_ids_TK: Tensor, priority_T: Tensor, capacity: int, policy: str = "score"
) -> Tensor:
    """(T, K) bool: which pairs capacity keeps, pair by pair. All first choices go before any
    second choice; within a choice rank, tokens go by priority (highest first) or position."""
    T, K = expert_ids_TK.shape
    if policy == "score":
        order = sorted(range(T), key=lambda t: (-float(priority_T[t]), t))
    else:
        order = list(range(T))
    load: dict[int, int] = {}
    kept = torch.zeros(T, K, dtype=torch.bool)
    for k in range(K):
        for t in order:
            e = int(expert_ids_TK[t, k])
            if e >= 0 and load.get(e, 0) < capacity:
                load[e] = load.get(e, 0) + 1
                kept[t, k] = True
    return kept
