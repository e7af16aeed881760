"""Routers: which experts each token goes to, and with what weight.

Legend: T tokens, D model dim, E routed experts, K experts per token, M modalities,
B sequences, L tokens per sequence, S slots (soft MoE: E * slots_per_expert).

- `TopKRouter`: token choice. Softmax or sigmoid scores, any K, optional renormalization of the
  top-K weights, training-time input jitter (Switch, Fedus et al. 2021) or noisy top-k gating
  (Shazeer et al. 2017), optional per-expert selection bias for aux-loss-free balancing
  (DeepSeek-V3, Wang et al. 2024) and modality expert groups (VL-MoE, Shen et al. 2023).
- `ExpertChoiceRouter`: each expert takes its top-C tokens (Zhou et al. 2022).
- `SoftRouter`: soft MoE slots (Puigcerver et al. 2023), dispatch weights normalized over
  tokens and combine weights over slots.

Expert choice and soft MoE mix information across the tokens of a batch or sequence, so they are
for non-causal encoders only: a causal decoder must refuse them (a later token would change how
an earlier one is processed).

All router math runs in fp32, whatever the input dtype or autocast state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlmoe.config import MoEConfig


@dataclass(frozen=True)
class RouterOutput:
    """What every router returns. All float tensors are fp32.

    `expert_ids_TK` holds -1 where a slot is unused (expert choice gives each token a variable
    number of experts; K is then E). `probs_TE` are the scores the balance losses see: softmax
    probabilities, or sigmoid scores (zero for experts a token may not reach).
    """

    logits_TE: Tensor
    probs_TE: Tensor
    expert_ids_TK: Tensor
    weights_TK: Tensor
    soft_dispatch_BLS: Tensor | None = None  # soft MoE: softmax over tokens (L)
    soft_combine_BLS: Tensor | None = None  # soft MoE: softmax over slots (S)


def modality_expert_mask(cfg: MoEConfig) -> Tensor | None:
    """(M, E) bool: which experts each modality may reach, or None for one shared pool.

    The first `num_experts - num_cross_modal_experts` experts split evenly into one group per
    modality, in modality order; the last `num_cross_modal_experts` are open to all.
    """
    if cfg.expert_groups == "none":
        return None
    own = cfg.num_experts - cfg.num_cross_modal_experts
    per = own // cfg.num_modalities
    allowed_ME = torch.zeros(cfg.num_modalities, cfg.num_experts, dtype=torch.bool)
    for m in range(cfg.num_modalities):
        allowed_ME[m, m * per : (m + 1) * per] = True
    allowed_ME[:, own:] = True
    return allowed_ME


def softmax_experts(logits_TE: Tensor) -> Tensor:
    """Softmax over the expert axis, (T, E) -> (T, E).

    torch's CPU softmax over a last dim shorter than its vector width (16 fp32 lanes with
    AVX-512) falls to a scalar path: at E=8 it costs 1.0 ms forward + backward for T=4160 on a
    Xeon core, against 0.17 ms over the transposed view (a softmax across rows, vectorized over
    tokens). Same values.
    """
    if logits_TE.device.type == "cpu" and logits_TE.shape[-1] < 16 and logits_TE.shape[0] >= 64:
        return logits_TE.t().softmax(dim=0).t().contiguous()  # topk is slow on the view
    return logits_TE.softmax(dim=-1)


def _no_autocast(device_type: str):
    return torch.autocast(device_type=device_type, enabled=False)


def route_reference(
    logits_TE: Tensor,
    allowed_TE: Tensor | None,
    bias_E: Tensor | None,
    top_k: int,
    score_func: str = "softmax",
    renormalize: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Token-choice routing from logits, op by op through autograd: (probs_TE, ids_TK, weights_TK).

    The general path (sigmoid scores, unnormalized weights, noisy logits) and the slow twin the
    tests hold `_SoftmaxTopK` to. The bias moves the selection only, never the weights.
    """
    masked_TE = logits_TE
    if allowed_TE is not None:
        masked_TE = logits_TE.masked_fill(~allowed_TE, float("-inf"))
    # sigmoid(-inf) = 0: unreachable experts score 0 either way.
    probs_TE = softmax_experts(masked_TE) if score_func == "softmax" else masked_TE.sigmoid()
    expert_ids_TK = _select(probs_TE, allowed_TE, bias_E, top_k)
    weights_TK = probs_TE.gather(1, expert_ids_TK)
    if renormalize:
        weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True).clamp_min(1e-20)
    return probs_TE, expert_ids_TK, weights_TK


def _select(
    probs_TE: Tensor, allowed_TE: Tensor | None, bias_E: Tensor | None, top_k: int
) -> Tensor:
    """(T, K) ids of the top-K experts by probability (+ the selection-only bias)."""
    select_TE = probs_TE
    if bias_E is not None:
        select_TE = probs_TE.detach() + bias_E
        if allowed_TE is not None:
            select_TE = select_TE.masked_fill(~allowed_TE, float("-inf"))
    return select_TE.topk(top_k, dim=-1).indices


class _SoftmaxTopK(torch.autograd.Function):
    """The softmax top-K router with renormalized weights as one autograd node.

    Forward: logits = x W^T, probs = softmax(masked logits), ids = top-K (of probs + bias),
    weights = probs[ids] / sum(probs[ids]). Backward by hand, from the two facts that the
    renormalized weights are softmax(logits[ids]) and probs is softmax(logits):
    d logits = p * (g_p - <g_p, p>) + scatter(ids, w * (g_w - <g_w, w>)) + g_logits.
    Op by op through autograd this layer is some twenty small kernels and ten graph nodes whose
    per-op cost, at the token counts of small models (T ~ 1000, E = 8), is more than the
    router's arithmetic; `route_reference` is the twin it is tested against.
    """

    @staticmethod
    def forward(ctx, x_TD, weight_ED, allowed_TE, bias_E, top_k: int):
        logits_TE = F.linear(x_TD, weight_ED)
        masked_TE = logits_TE
        if allowed_TE is not None:
            masked_TE = logits_TE.masked_fill(~allowed_TE, float("-inf"))
        probs_TE = softmax_experts(masked_TE)
        ids_TK = _select(probs_TE, allowed_TE, bias_E, top_k)
        weights_TK = probs_TE.gather(1, ids_TK)
        weights_TK /= weights_TK.sum(dim=-1, keepdim=True).clamp_min(1e-20)
        ctx.save_for_backward(x_TD, weight_ED, probs_TE, ids_TK, weights_TK)
        ctx.mark_non_differentiable(ids_TK)
        return logits_TE, probs_TE, ids_TK, weights_TK

    @staticmethod
    def backward(ctx, g_logits_TE, g_probs_TE, _g_ids, g_weights_TK):
        x_TD, weight_ED, probs_TE, ids_TK, weights_TK = ctx.saved_tensors
        grad_TE = torch.zeros_like(probs_TE) if g_logits_TE is None else g_logits_TE.clone()
        if g_probs_TE is not None:
            pg_TE = probs_TE * g_probs_TE
            grad_TE += pg_TE - probs_TE * pg_TE.sum(dim=-1, keepdim=True)
        if g_weights_TK is not None:
            wg_TK = weights_TK * g_weights_TK
            wg_TK -= weights_TK * wg_TK.sum(dim=-1, keepdim=True)
            grad_TE.scatter_add_(1, ids_TK, wg_TK)
        grad_x = grad_TE @ weight_ED if ctx.needs_input_grad[0] else None
        grad_w = grad_TE.t() @ x_TD if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None, None, None


class TopKRouter(nn.Module):
    """Token-choice top-K router."""

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.gate = nn.Linear(cfg.dim, cfg.num_experts, bias=False)
        nn.init.normal_(self.gate.weight, std=cfg.dim**-0.5)
        self.noise = None
        if cfg.router_noise == "gaussian":
            # Learned per-expert noise scale, softplus(x W_noise); zero init = small noise at start.
            self.noise = nn.Linear(cfg.dim, cfg.num_experts, bias=False)
            nn.init.zeros_(self.noise.weight)
        # Selection-only bias for aux-loss-free balancing; a buffer, updated outside autograd.
        self.register_buffer(
            "expert_bias", torch.zeros(cfg.num_experts), persistent=cfg.balance_bias
        )
        allowed = modality_expert_mask(cfg)
        self.register_buffer("allowed_ME", allowed, persistent=False)

    def allowed_TE(self, modality_T: Tensor | None) -> Tensor | None:
        """(T, E) bool mask of reachable experts; padding tokens (-1) may reach all."""
        if self.allowed_ME is None:
            return None
        if modality_T is None:
            raise ValueError(
                "this MoE layer has modality expert groups (expert_groups='modality') and needs "
                "a modality id for every token; got modality=None"
            )
        m = modality_T.clamp(min=0)
        allowed = self.allowed_ME[m]  # (T, E)
        return torch.where((modality_T < 0)[:, None], torch.ones_like(allowed), allowed)

    def forward(self, x_TD: Tensor, modality_T: Tensor | None = None) -> RouterOutput:
        cfg = self.cfg
        with _no_autocast(x_TD.device.type):
            x = x_TD.float()
            if self.training and cfg.router_noise == "jitter" and cfg.router_noise_eps > 0:
                eps = cfg.router_noise_eps
                x = x * torch.empty_like(x).uniform_(1.0 - eps, 1.0 + eps)
            allowed_TE = self.allowed_TE(modality_T)
            bias_E = self.expert_bias if cfg.balance_bias else None
            weight_ED = self.gate.weight.float()
            if self.fused:
                logits_TE, probs_TE, expert_ids_TK, weights_TK = _SoftmaxTopK.apply(
                    x, weight_ED, allowed_TE, bias_E, cfg.top_k
                )
            else:
                logits_TE = F.linear(x, weight_ED)  # (T, E)
                if self.training and self.noise is not None:
                    scale = F.softplus(F.linear(x, self.noise.weight.float()))
                    logits_TE = logits_TE + torch.randn_like(logits_TE) * (
                        scale + cfg.router_noise_eps
                    )
                probs_TE, expert_ids_TK, weights_TK = route_reference(
                    logits_TE, allowed_TE, bias_E, cfg.top_k, cfg.score_func, cfg.renormalize
                )
        return RouterOutput(logits_TE, probs_TE, expert_ids_TK, weights_TK)

    @property
    def fused(self) -> bool:
        """Whether this forward runs as `_SoftmaxTopK` (softmax, renormalized, no noisy gating)."""
        cfg = self.cfg
        noisy = self.training and self.noise is not None
        return cfg.score_func == "softmax" and cfg.renormalize and not noisy

    @torch.no_grad()
    def update_bias(self, routed_E: Tensor) -> None:
        """Aux-loss-free balancing step: raise the bias of under-loaded experts, lower the rest.

        `routed_E` counts the tokens routed to each expert (before any capacity drop). The target
        load of an expert is the mean load of the experts in its modality group.
        """
        if not self.cfg.balance_bias:
            return
        load = routed_E.float()
        if self.allowed_ME is None:
            target = load.mean().expand_as(load)
        else:
            group_E = _expert_group_ids(self.allowed_ME)
            num_groups = self.allowed_ME.shape[0] + 1
            sums = load.new_zeros(num_groups).index_add_(0, group_E, load)
            sizes = load.new_zeros(num_groups).index_add_(0, group_E, torch.ones_like(load))
            target = (sums / sizes.clamp_min(1))[group_E]
        self.expert_bias += self.cfg.balance_bias_rate * torch.sign(target - load)


def _expert_group_ids(allowed_ME: Tensor) -> Tensor:
    """(E,) group id per expert: the modality that owns it, or M for cross-modal experts."""
    M = allowed_ME.shape[0]
    shared = allowed_ME.all(dim=0)
    owner = allowed_ME.float().argmax(dim=0)
    return torch.where(shared & (M > 1), torch.full_like(owner, M), owner)


def expert_choice_capacity(cfg: MoEConfig, num_tokens: int) -> int:
    """Tokens each expert takes in expert choice: ceil(capacity * T / E), at most T."""
    return min(num_tokens, math.ceil(cfg.expert_choice_capacity * num_tokens / cfg.num_experts))


class ExpertChoiceRouter(nn.Module):
    """Expert choice: every expert picks its top-C tokens by softmax score (Zhou et al. 2022).

    Returns K = E slots per token: `expert_ids_TK[t, e] = e` if expert e chose token t, else -1.
    """

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.gate = nn.Linear(cfg.dim, cfg.num_experts, bias=False)
        nn.init.normal_(self.gate.weight, std=cfg.dim**-0.5)

    def forward(self, x_TD: Tensor, modality_T: Tensor | None = None) -> RouterOutput:
        T, E = x_TD.shape[0], self.cfg.num_experts
        # With capacity_group_size G, experts choose within each group of G tokens (GShard's
        # groups): C = ceil(capacity * G / E) per group, as if every group were a batch.
        G = self.cfg.capacity_group_size or T
        if G and T % G:
            raise ValueError(
                f"{T} tokens do not split into capacity groups of moe.capacity_group_size={G}"
            )
        groups = T // G if G else 1
        C = expert_choice_capacity(self.cfg, G)
        with _no_autocast(x_TD.device.type):
            logits_TE = F.linear(x_TD.float(), self.gate.weight.float())
            probs_TE = softmax_experts(logits_TE)
            score_ET = probs_TE.t()
            if modality_T is not None:  # padding tokens are never chosen
                score_ET = score_ET.masked_fill((modality_T < 0)[None, :], -1.0)
            _, local_EgC = score_ET.reshape(E, groups, G).topk(C, dim=-1)  # (E, groups, C)
            offsets = torch.arange(groups, device=x_TD.device)[None, :, None] * G
            token_ids_EC = (local_EgC + offsets).reshape(E, -1)  # (E, groups * C)
            chosen_TE = torch.zeros(T, E, dtype=torch.bool, device=x_TD.device)
            chosen_TE[token_ids_EC, torch.arange(E, device=x_TD.device)[:, None]] = True
            expert_ids_TK = torch.where(chosen_TE, torch.arange(E, device=x_TD.device), -1)
            weights_TK = torch.where(chosen_TE, probs_TE, 0.0)
        return RouterOutput(logits_TE, probs_TE, expert_ids_TK, weights_TK)


class SoftRouter(nn.Module):
    """Soft MoE slots: each slot is a convex mix of the sequence's tokens, each output token a
    convex mix of the slots' outputs (Puigcerver et al. 2023). Inputs and slot parameters are
    L2-normalized with a learned scale, as the paper recommends for stable training at scale.
    """

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_slots = cfg.num_experts * cfg.slots_per_expert
        self.slot_embed = nn.Parameter(torch.randn(cfg.dim, self.num_slots) * cfg.dim**-0.5)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x_BLD: Tensor, modality_BL: Tensor | None = None) -> RouterOutput:
        if x_BLD.dim() != 3:
            raise ValueError(
                f"soft MoE needs (batch, tokens, dim) input, got shape {tuple(x_BLD.shape)}"
            )
        B, L, _ = x_BLD.shape
        E, S = self.cfg.num_experts, self.num_slots
        with _no_autocast(x_BLD.device.type):
            x = F.normalize(x_BLD.float(), dim=-1)
            phi = F.normalize(self.slot_embed.float(), dim=0) * self.scale.float()
            logits_BLS = x @ phi  # (B, L, S)
            dispatch_logits = logits_BLS
            if modality_BL is not None:  # padding tokens feed no slot
                dispatch_logits = logits_BLS.masked_fill(
                    (modality_BL < 0)[..., None], float("-inf")
                )
            dispatch_BLS = dispatch_logits.softmax(dim=1)  # over tokens
            combine_BLS = logits_BLS.softmax(dim=2)  # over slots
            # Per-expert view for losses and plots: each token's combine mass per expert.
            probs_TE = combine_BLS.reshape(B * L, E, S // E).sum(-1)  # (T, E)
            weights_T1, expert_ids_T1 = probs_TE.max(dim=-1, keepdim=True)
            logits_TE = logits_BLS.reshape(B * L, E, S // E).logsumexp(-1)
        return RouterOutput(
            logits_TE,
            probs_TE,
            expert_ids_T1,
            weights_T1,
            soft_dispatch_BLS=dispatch_BLS,
            soft_combine_BLS=combine_BLS,
        )


def build_router(cfg: MoEConfig) -> nn.Module:
    """The router `cfg.router` names."""
    routers = {"topk": TopKRouter, "expert_choice": ExpertChoiceRouter, "soft": SoftRouter}
    return routers[cfg.router](cfg)
