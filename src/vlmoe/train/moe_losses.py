"""The MoE auxiliary losses of a training step, summed over layers with their coefficients.

Each term is returned on its own (`moe/load_balance`, `moe/z_loss`, `moe/local_entropy/<modality>`,
`moe/global_entropy/<modality>`, averaged over MoE layers) so that it is logged separately; the
total is what the trainer adds to the task loss. Coefficients and their sources are in
`vlmoe.train.config.MoELossConfig`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vlmoe.moe import stats
from vlmoe.moe.layer import MoELayer
from vlmoe.moe.losses import entropy_losses, load_balance_loss, z_loss
from vlmoe.train.config import MoELossConfig

log = logging.getLogger(__name__)


def moe_aux_losses(
    auxes: Sequence, cfg: MoELossConfig, use_entropy: bool
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """(weighted total or None when there are no MoE layers, {name: per-layer mean (detached)})."""
    if not auxes:
        return None, {}

    n = len(auxes)
    terms: dict[str, Tensor] = {}
    total = auxes[0].logits_TE.new_zeros(())
    if cfg.load_balance > 0:
        lb = sum(load_balance_loss(a) for a in auxes) / n
        total = total + cfg.load_balance * lb
        terms["moe/load_balance"] = lb.detach()
    if cfg.z_loss > 0:
        z = sum(z_loss(a) for a in auxes) / n
        total = total + cfg.z_loss * z
        terms["moe/z_loss"] = z.detach()
    if use_entropy and (cfg.local_entropy > 0 or cfg.global_entropy > 0):
        sums: dict[str, Tensor] = {}
        for a in auxes:
            for key, value in entropy_losses(a, cfg.global_entropy_threshold).items():
                sums[key] = sums.get(key, 0) + value / n
        for key, value in sums.items():
            kind, modality = key.split("/", 1)
            coef = cfg.local_entropy if kind == "local" else cfg.global_entropy
            if coef > 0:
                total = total + coef * value
                terms[f"moe/{kind}_entropy/{modality}"] = value.detach()
    return total, terms


def has_moe_layers(model: nn.Module) -> bool:

    return any(isinstance(m, MoELayer) for m in model.modules())


def uses_balance_bias(model: nn.Module) -> bool:

    return any(isinstance(m, MoELayer) and m.cfg.balance_bias for m in model.modules())


def warn_if_unbalanced(model: nn.Module, cfg: MoELossConfig, use_entropy: bool) -> bool:
    """Warn when a model with MoE layers would train with no balancing at all; True if so."""
    if not has_moe_layers(model) or uses_balance_bias(model):
        return False
    coefs = [cfg.load_balance, cfg.z_loss]
    if use_entropy:
        coefs += [cfg.local_entropy, cfg.global_entropy]
    if any(c > 0 for c in coefs):
        return False
    log.warning(
        "the model has MoE layers but every MoE loss coefficient is 0 and aux-loss-free "
        "balancing is off: routers tend to collapse onto a few experts. Set "
        "losses.load_balance (default 0.01) or moe.balance_bias=true."
    )
    return True


@torch.no_grad()
def routing_summary(auxes: Sequence) -> dict[str, float]:
    """Cheap per-step routing numbers for the log (one host transfer): the worst layer's max
    expert load / mean, and the effective experts per token averaged over layers
    (`stats.effective_top_k`: near 1 for a top-2 router means its second weight went to ~0)."""

    if not auxes:
        return {}
    worst, eff = [], []
    for a in auxes:
        routed = a.routed_E.float()
        worst.append(routed.max() / routed.mean().clamp_min(1e-9))
        valid_T = a.valid_T
        eff.append((stats.effective_top_k(a) * valid_T).sum() / valid_T.sum().clamp_min(1))
    w, e = torch.stack([torch.stack(worst).max(), torch.stack(eff).mean()]).tolist()
    return {"moe/max_load_ratio": w, "moe/effective_top_k": e}


def max_top_k(model: nn.Module) -> int:
    """The largest top_k of the model's token-choice MoE layers (0 without any)."""

    ks = [
        m.cfg.top_k for m in model.modules() if isinstance(m, MoELayer) and m.cfg.router == "topk"
    ]
    return max(ks, default=0)


def warn_if_top1_in_effect(effective_k: float, top_k: int, step: int) -> bool:
    """Warn when top-k routers (k >= 2) use barely more than one expert per token; True if so.

    Each token still pays for k experts, but all but one get ~0 weight: the model runs like
    top-1 with 1/k of the active FFN width (what LIMoE's plain local-entropy loss did to top-2
    routers before it stopped at log k)."""
    if top_k < 2 or effective_k >= 1.1:
        return False
    log.warning(
        "step %d: the top-%d MoE routers use %.2f experts per token on average: the other "
        "choices' combine weights are ~0, so their compute is spent for nothing. Look at the "
        "router losses' weights (losses.*); top_k=1 with experts %d times wider spends the same "
        "compute on one expert.",
        step,
        top_k,
        effective_k,
        top_k,
    )
    return True
