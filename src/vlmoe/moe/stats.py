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


STARVED_FRACTION = 0.01  # an expert below 1% of its uniform share of the tokens is starved


def uniform_load(load_ME: Tensor, allowed_ME: Tensor | None = None) -> Tensor:
    """(M,) fp32: the pairs each expert of modality m would get under a perfectly even split,
    i.e. modality m's pairs / the experts it can reach (its group and the cross-modal experts
    with modality groups, all E experts in one shared pool)."""
    pairs_M = load_ME.float().sum(-1)
    if allowed_ME is None:
        return pairs_M / load_ME.shape[-1]
    M = load_ME.shape[0]
    reach_M = allowed_ME[:M].to(load_ME.device).sum(-1).float()
    if reach_M.shape[0] < M:  # more modalities in the data than groups: they reach nothing
        reach_M = torch.cat([reach_M, reach_M.new_zeros(M - reach_M.shape[0])])
    return pairs_M / reach_M.clamp_min(1)


def starved_experts(
    load_ME: Tensor, allowed_ME: Tensor | None = None, fraction: float = STARVED_FRACTION
) -> Tensor:
    """(M, E) bool: expert e is starved by modality m when m has tokens, e is reachable by m,
    and e got fewer than `fraction` of m's uniform share (`uniform_load`). Pass loads summed
    over many batches: an expert with 3 of 10,000 tokens is starved, not merely "alive".

    Experts a modality cannot reach (another modality's group) are never starved by it.
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    M, E = load_ME.shape
    reach_ME = torch.ones(M, E, dtype=torch.bool, device=load_ME.device)
    if allowed_ME is not None:
        rows = allowed_ME[:M].to(load_ME.device)
        reach_ME = torch.cat([rows, reach_ME.new_zeros(M - rows.shape[0], E)])
    present_M = load_ME.sum(-1) > 0
    below_ME = load_ME.float() < fraction * uniform_load(load_ME, allowed_ME)[:, None]
    return below_ME & reach_ME & present_M[:, None]


def load_imbalance(counts_E: Tensor) -> Tensor:
    """max / mean of the per-expert load: 1.0 is perfectly balanced."""
    counts = counts_E.float()
    return counts.max() / counts.mean().clamp_min(1e-20)
