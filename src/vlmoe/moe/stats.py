"""Routing statistics: pure functions of `MoEAux`, returning tensors (no host sync).

They are meant to be accumulated over batches (sum the counts, then derive rates) and read
once at the end of an evaluation or a logging interval. Padding tokens (modality -1) are left
out everywhere.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlmoe.moe.dispatch import count_ids
from vlmoe.moe.layer import MoEAux


def tokens_per_expert(aux: MoEAux) -> Tensor:
    """(E,) int64: pairs each expert actually computed (after capacity), valid tokens only."""
    return _kept_counts(aux, aux.valid_T)


def routed_per_expert(aux: MoEAux) -> Tensor:
    """(E,) int64: pairs routed to each expert before capacity drops, valid tokens only."""
    return aux.routed_E


def _kept_counts(aux: MoEAux, mask_T: Tensor) -> Tensor:
    E = aux.num_experts
    keep_TK = aux.kept_TK & (aux.expert_ids_TK >= 0) & mask_T[:, None]
    ids = torch.where(keep_TK, aux.expert_ids_TK, E).reshape(-1)
    return count_ids(ids, E + 1)[:E]


def modality_expert_load(aux: MoEAux, num_modalities: int = 2) -> Tensor:
    """(M, E) int64: kept pairs per modality and expert. Without modality ids, all tokens count
    as modality 0."""
    if aux.modality_T is None:
        load = torch.zeros(
            num_modalities, aux.num_experts, dtype=torch.long, device=aux.counts_E.device
        )
        load[0] = _kept_counts(aux, aux.valid_T)
        return load
    M = max(num_modalities, aux.allowed_ME.shape[0] if aux.allowed_ME is not None else 0)
    return torch.stack([_kept_counts(aux, aux.modality_T == m) for m in range(M)])


def dropped_pairs(aux: MoEAux) -> tuple[Tensor, Tensor]:
    """(dropped, routed) pair counts over valid tokens, as int64 scalars."""
    routed_TK = (aux.expert_ids_TK >= 0) & aux.valid_T[:, None]
    dropped = (routed_TK & ~aux.kept_TK).sum()
    return dropped, routed_TK.sum()


def drop_rate(aux: MoEAux) -> Tensor:
    """Fraction of routed (token, expert) pairs that capacity dropped (0 when dropless)."""
    dropped, routed = dropped_pairs(aux)
    return dropped.float() / routed.clamp_min(1).float()


def router_entropy(aux: MoEAux) -> Tensor:
    """Mean per-token entropy (nats) of the router's distribution over experts."""
    p = aux.probs_TE / aux.probs_TE.sum(-1, keepdim=True).clamp_min(1e-20)
    h_T = -(p * torch.log(p.clamp_min(1e-20))).sum(-1)
    valid = aux.valid_T
    return (h_T * valid).sum() / valid.sum().clamp_min(1)


def effective_top_k(aux: MoEAux) -> Tensor:
    """(T,) fp32: how many experts each token really uses, (sum w)^2 / sum w^2 over its kept
    pairs' combine weights: k when its k weights are equal, 1 when one weight carries it all (a
    top-2 router that sure of itself pays for two experts and uses one). 0 for tokens with no
    kept pair (padding, everything dropped)."""
    keep_TK = aux.kept_TK & (aux.expert_ids_TK >= 0)
    w_TK = torch.where(keep_TK, aux.weights_TK.float().abs(), 0.0)
    total_T = w_TK.sum(-1)
    return total_T.square() / w_TK.square().sum(-1).clamp_min(1e-30)


def dead_experts(counts_E: Tensor, threshold: int = 0) -> Tensor:
    """(E,) bool: experts that received at most `threshold` pairs (pass accumulated counts)."""
    return counts_E <= threshold


def load_imbalance(counts_E: Tensor) -> Tensor:
    """max / mean of the per-expert load: 1.0 is perfectly balanced."""
    counts = counts_E.float()
    return counts.max() / counts.mean().clamp_min(1e-20)
