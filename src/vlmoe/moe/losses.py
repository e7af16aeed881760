"""Router losses: pure functions of one layer's `MoEAux`; sum them over layers yourself.

- `load_balance_loss`: Switch / GShard auxiliary loss, E * sum_e f_e * P_e, with f_e the fraction
  of the T*K routed pairs sent to expert e (so it is correct for K > 1) and P_e the mean router
  probability of e. Equals 1 under perfect balance. With modality groups it is computed inside
  each modality over the experts that modality can reach, and averaged over modalities present.
- `z_loss`: ST-MoE router z-loss (Zoph et al. 2022), mean of logsumexp(logits)^2.
- `entropy_losses`: LIMoE (Mustafa et al. 2022) local and global entropy per modality. Local is
  the mean per-token entropy (minimize: confident routing); global is minus the entropy of the
  modality's mean routing distribution (minimize: use many experts), optionally thresholded at
  tau: max(0, tau - H(mean p)). LIMoE routes top-1; for a top-k token-choice router the local
  term is max(0, H - log k), the entropy of k equally weighted experts: it stops at a token
  sure of k experts instead of pushing on to one, where the other k - 1 would get ~0 combine
  weight and their compute would be spent for nothing (`vlmoe.moe.stats.effective_top_k`).

Padding tokens (modality -1) are left out of all of them. Expert choice and soft MoE are
balanced by construction, so their load-balance loss is zero.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vlmoe.moe.layer import MoEAux
from vlmoe.nn.modality import MODALITY_NAMES


def modality_name(m: int) -> str:
    return MODALITY_NAMES[m] if m < len(MODALITY_NAMES) else f"modality{m}"


def _groups(aux: MoEAux) -> list[tuple[int | None, Tensor, Tensor]]:
    """(modality or None, token mask (T,), reachable experts (E,)) for each routing pool.

    Without modality ids the pool is all tokens. With modality ids, one pool per modality id
    in 0..M-1 (whether or not tokens of it are present; empty pools are skipped by callers).
    """
    E = aux.num_experts
    all_E = torch.ones(E, dtype=torch.bool, device=aux.probs_TE.device)
    if aux.modality_T is None:
        return [(None, aux.valid_T, all_E)]
    M = aux.allowed_ME.shape[0] if aux.allowed_ME is not None else len(MODALITY_NAMES)
    groups = []
    for m in range(M):
        reach = aux.allowed_ME[m] if aux.allowed_ME is not None else all_E
        groups.append((m, aux.modality_T == m, reach))
    return groups


def _per_token_distribution(aux: MoEAux) -> Tensor:
    """Router probabilities normalized to sum to 1 per token (sigmoid scores are not)."""
    # A no-op for softmax (sum is already 1, and so is its gradient's projection); no host sync.
    p = aux.probs_TE
    return p / p.sum(dim=-1, keepdim=True).clamp_min(1e-20)


def load_balance_loss(aux: MoEAux) -> Tensor:
    """Switch/GShard balance loss for one layer; 1.0 at perfect balance, E at full collapse."""
    zero = aux.probs_TE.new_zeros(())
    if aux.router != "topk":
        return zero
    p_TE = _per_token_distribution(aux)
    ids_TK = aux.expert_ids_TK
    one_hot_TE = torch.zeros_like(p_TE).scatter_add_(
        1, ids_TK.clamp(min=0), (ids_TK >= 0).to(p_TE.dtype)
    )  # (T, E) routed pairs per token and expert
    losses, present = [], []
    for _, mask_T, reach_E in _groups(aux):
        n = mask_T.sum().clamp_min(1)
        frac_E = (one_hot_TE * mask_T[:, None]).sum(0) / (n * aux.top_k)  # sums to 1
        prob_E = (p_TE * mask_T[:, None]).sum(0) / n
        losses.append(reach_E.sum() * (frac_E * prob_E).sum())
        present.append(mask_T.any())
    # Mean over the pools that have tokens in this batch, without a host sync.
    present_G = torch.stack(present).to(p_TE.dtype)
    return (torch.stack(losses) * present_G).sum() / present_G.sum().clamp_min(1)


def z_loss(aux: MoEAux) -> Tensor:
    """Mean squared logsumexp of the router logits over valid tokens (reachable experts only)."""
    logits = aux.logits_TE
    if aux.allowed_ME is not None and aux.modality_T is not None:
        m = aux.modality_T.clamp(min=0)
        allowed = aux.allowed_ME[m] | (aux.modality_T < 0)[:, None]
        logits = logits.masked_fill(~allowed, float("-inf"))
    z_T = torch.logsumexp(logits, dim=-1)
    valid = aux.valid_T
    return (z_T.square() * valid).sum() / valid.sum().clamp_min(1)


def _entropy(p: Tensor, dim: int = -1) -> Tensor:
    return -(p * torch.log(p.clamp_min(1e-20))).sum(dim)


def entropy_losses(aux: MoEAux, global_threshold: float | None = None) -> dict[str, Tensor]:
    """LIMoE entropy losses per modality: {"local/image": ..., "global/image": ..., ...}.

    Without modality ids the keys are "local/all" and "global/all". A modality with no tokens in
    the batch gets zeros (the keys do not depend on the data, and nothing syncs with the host).
    """
    p_TE = _per_token_distribution(aux)
    local_T = _entropy(p_TE)
    if aux.router == "topk" and aux.top_k > 1:
        local_T = torch.clamp(local_T - math.log(aux.top_k), min=0.0)
    out: dict[str, Tensor] = {}
    for m, mask_T, _ in _groups(aux):
        n = mask_T.sum().clamp_min(1)
        name = "all" if m is None else modality_name(m)
        out[f"local/{name}"] = (local_T * mask_T).sum() / n
        mean_p_E = (p_TE * mask_T[:, None]).sum(0) / n
        h_global = _entropy(mean_p_E)
        if global_threshold is None:
            loss = -h_global
        else:
            loss = torch.clamp(global_threshold - h_global, min=0.0)
        out[f"global/{name}"] = loss * mask_T.any()
    return out
