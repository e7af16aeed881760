"""Routing statistics over an evaluation: per MoE layer and per modality.

For every MoE layer, and inside it for every modality (image, text): the token-to-expert
assignments each expert computed, the fraction of routed pairs that capacity dropped, and the
mean router entropy; per layer, the experts that received nothing ("dead"), and per layer and
modality the experts below a fraction (default 1%) of their uniform share of that modality's
tokens ("starved": 3 tokens of 10,000 is not a healthy expert). With modality groups the
uniform share is 1/(experts the modality can reach), and experts a modality cannot reach are
never counted against it. These are the
diagnostics of V-MoE (Riquelme et al. 2021) and LIMoE (Mustafa et al. 2022), whose per-modality
expert loads show whether experts specialise by modality. Also the effective number of experts
a token uses (`vlmoe.moe.stats.effective_top_k`): a top-2 router whose second weight is near 0
computes two experts but uses one.

The per-batch numbers come from the pure functions of `vlmoe.moe.stats`; `RoutingStats` only
adds them up on the device (no host sync per step) and derives rates once at the end, so the
trainer can use it for logging as well.

Shapes: M modalities, E experts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from vlmoe.eval.common import BatchFn, default_forward, get_field, model_device, to_device
from vlmoe.moe import stats
from vlmoe.moe.layer import MoEAux, moe_layers

MODALITY_NAMES: tuple[str, ...] = ("image", "text")


def _only_modality(aux: MoEAux, m: int) -> MoEAux:
    """The same aux with every token not of modality m marked as padding (-1)."""
    if aux.modality_T is None:
        # No modality ids: all tokens are one pool, reported as modality 0.
        modality_T = torch.full_like(aux.expert_ids_TK[:, 0], 0 if m == 0 else -1)
    else:
        modality_T = torch.where(aux.modality_T == m, aux.modality_T, -1)
    return dataclasses.replace(aux, modality_T=modality_T)


def layer_sums(aux: MoEAux, num_modalities: int = 2) -> dict[str, Tensor]:
    """One layer's additive routing sums for one batch, all on the device.

    Returns:
        load_ME: (M, E) kept pairs per modality and expert.
        routed_ME: (M, E) pairs routed before capacity drops.
        dropped_M, pairs_M: (M,) dropped and routed pair counts.
        entropy_sum_M, tokens_M: (M,) summed per-token router entropy (nats) and token counts.
        eff_k_sum_M: (M,) summed per-token effective top-k.
    """
    M = num_modalities
    if aux.modality_T is not None and aux.allowed_ME is not None:
        M = max(M, aux.allowed_ME.shape[0])
    load_ME = stats.modality_expert_load(aux, M)
    per_m = [_only_modality(aux, m) for m in range(M)]
    dropped, pairs = zip(*(stats.dropped_pairs(a) for a in per_m))
    tokens_M = torch.stack([a.valid_T.sum() for a in per_m])
    entropy_M = torch.stack([stats.router_entropy(a) for a in per_m])
    eff_k_T = stats.effective_top_k(aux)
    return {
        "load_ME": load_ME,
        "routed_ME": torch.stack([stats.routed_per_expert(a) for a in per_m]),
        "dropped_M": torch.stack(dropped),
        "pairs_M": torch.stack(pairs),
        "entropy_sum_M": entropy_M * tokens_M,
        "tokens_M": tokens_M,
        "eff_k_sum_M": torch.stack([(eff_k_T * a.valid_T).sum() for a in per_m]),
    }


@dataclasses.dataclass
class LayerSummary:
    """Derived routing numbers of one MoE layer over a whole evaluation (host values)."""

    name: str
    load_ME: list[list[int]]
    drop_rate_M: list[float]
    entropy_M: list[float]
    tokens_M: list[int]
    effective_k_M: list[float]
    drop_rate: float
    entropy: float
    effective_k: float
    dead_experts: list[int]
    load_imbalance: float
    starved_M: list[list[int]] = dataclasses.field(default_factory=list)
    starved_experts: list[int] = dataclasses.field(default_factory=list)


class RoutingStats:
    """Adds up `layer_sums` over batches; `summaries()` syncs once and derives the rates.

    Args:
        layer_names: a name per MoE layer, in the order of the model's `moe_aux` list
            (default `moe0`, `moe1`, ...).
        modality_names: a name per modality id.
        starved_fraction: an expert below this fraction of its uniform share of a modality's
            routed pairs is reported as starved (`vlmoe.moe.stats.starved_experts`).
    """

    def __init__(
        self,
        layer_names: Sequence[str] | None = None,
        modality_names: Sequence[str] = MODALITY_NAMES,
        starved_fraction: float = stats.STARVED_FRACTION,
    ) -> None:
        if not 0 <= starved_fraction <= 1:
            raise ValueError(f"starved_fraction must be in [0, 1], got {starved_fraction}")
        self.layer_names = list(layer_names) if layer_names is not None else None
        self.modality_names = tuple(modality_names)
        self.starved_fraction = starved_fraction
        self.sums: list[dict[str, Tensor]] = []
        self.allowed: list[Tensor | None] = []  # per layer: (M, E) reachable experts, or None
        self.num_batches = 0

    def update(self, aux_list: Sequence[MoEAux]) -> None:
        """Add one forward's aux list (one `MoEAux` per MoE layer run, always in the same order).

        When the list is a whole multiple of the named layers (the contrastive tower runs every
        layer once for images, then once for texts), pass p's aux of layer i adds to layer i.
        """
        n = len(self.layer_names) if self.layer_names else len(aux_list)
        if n == 0 or len(aux_list) % n:
            n = len(aux_list)
        if self.sums and n != len(self.sums):
            raise ValueError(f"got {len(aux_list)} MoEAux, earlier batches had {len(self.sums)}")
        for j, aux in enumerate(aux_list):
            i = j % n
            new = layer_sums(aux, len(self.modality_names))
            if i == len(self.sums):
                self.sums.append({k: v.detach().clone() for k, v in new.items()})
                self.allowed.append(aux.allowed_ME)
            else:
                for k, v in new.items():
                    self.sums[i][k] = _add_padded(self.sums[i][k], v.detach())
        self.num_batches += 1

    def reset(self) -> None:
        self.sums, self.allowed, self.num_batches = [], [], 0

    def name(self, i: int) -> str:
        if self.layer_names is not None and len(self.layer_names) == len(self.sums):
            return self.layer_names[i]
        return f"moe{i}"

    def modality_name(self, m: int) -> str:
        return self.modality_names[m] if m < len(self.modality_names) else f"modality{m}"

    def summaries(self) -> list[LayerSummary]:
        """One `LayerSummary` per layer (a single host transfer per layer)."""
        out = []
        for i, s in enumerate(self.sums):
            h: dict[str, Any] = {k: v.cpu() for k, v in s.items()}
            load_E = h["load_ME"].sum(0)
            pairs_M, tokens_M = h["pairs_M"].clamp_min(1), h["tokens_M"].clamp_min(1)
            allowed = None if self.allowed[i] is None else self.allowed[i].cpu()
            starved_ME = stats.starved_experts(h["routed_ME"], allowed, self.starved_fraction)
            out.append(
                LayerSummary(
                    name=self.name(i),
                    load_ME=h["load_ME"].tolist(),
                    drop_rate_M=(h["dropped_M"] / pairs_M).tolist(),
                    entropy_M=(h["entropy_sum_M"] / tokens_M).tolist(),
                    tokens_M=h["tokens_M"].tolist(),
                    effective_k_M=(h["eff_k_sum_M"] / tokens_M).tolist(),
                    drop_rate=float(h["dropped_M"].sum() / h["pairs_M"].sum().clamp_min(1)),
                    entropy=float(h["entropy_sum_M"].sum() / h["tokens_M"].sum().clamp_min(1)),
                    effective_k=float(h["eff_k_sum_M"].sum() / h["tokens_M"].sum().clamp_min(1)),
                    dead_experts=torch.nonzero(stats.dead_experts(load_E)).flatten().tolist(),
                    load_imbalance=float(stats.load_imbalance(load_E)),
                    starved_M=[row.nonzero().flatten().tolist() for row in starved_ME],
                    starved_experts=_starved_in_layer(h["routed_ME"], allowed, starved_ME),
                )
            )
        return out

    def load_LME(self) -> list[list[list[int]]]:
        """(L, M, E) kept-pair counts, for `vlmoe.viz.expert_load.plot_expert_load`."""
        return [s.load_ME for s in self.summaries()]

    def reachable_LME(self) -> list[list[list[bool]]] | None:
        """(L, M, E) which experts each modality can reach in each layer (modality groups), for
        `plot_expert_load`; None when every layer routes all tokens in one pool."""
        if all(a is None for a in self.allowed):
            return None
        out = []
        for s, allowed in zip(self.sums, self.allowed):
            M, E = s["load_ME"].shape
            reach = torch.ones(M, E, dtype=torch.bool)
            if allowed is not None:
                rows = allowed[:M].cpu()
                reach = torch.cat([rows, reach.new_zeros(M - rows.shape[0], E)])
            out.append(reach.tolist())
        return out

    def results(self) -> Iterator[tuple[str, Any]]:
        """`(name, value)` pairs: per layer and modality, then means over layers."""
        summaries = self.summaries()
        for i, s in enumerate(summaries):
            for m, tokens in enumerate(s.tokens_M):
                if tokens == 0:
                    continue  # a modality absent from this model/data
                mod = self.modality_name(m)
                yield f"{s.name}/{mod}/tokens_per_expert", s.load_ME[m]
                yield f"{s.name}/{mod}/drop_rate", s.drop_rate_M[m]
                yield f"{s.name}/{mod}/router_entropy", s.entropy_M[m]
                yield f"{s.name}/{mod}/effective_top_k", s.effective_k_M[m]
                yield f"{s.name}/{mod}/starved_expert_ids", s.starved_M[m]
                if self.allowed[i] is not None and m < self.allowed[i].shape[0]:
                    reach = self.allowed[i][m].nonzero().flatten().tolist()
                    yield f"{s.name}/{mod}/reachable_expert_ids", reach
            yield f"{s.name}/drop_rate", s.drop_rate
            yield f"{s.name}/router_entropy", s.entropy
            yield f"{s.name}/effective_top_k", s.effective_k
            yield f"{s.name}/load_imbalance", s.load_imbalance
            yield f"{s.name}/dead_experts", len(s.dead_experts)
            yield f"{s.name}/dead_expert_ids", s.dead_experts
            yield f"{s.name}/starved_experts", len(s.starved_experts)
            yield f"{s.name}/starved_expert_ids", s.starved_experts
        if summaries:
            n = len(summaries)
            yield "num_moe_layers", n
            yield "drop_rate", sum(s.drop_rate for s in summaries) / n
            yield "router_entropy", sum(s.entropy for s in summaries) / n
            yield "effective_top_k", sum(s.effective_k for s in summaries) / n
            yield "load_imbalance", sum(s.load_imbalance for s in summaries) / n
            yield "dead_experts", sum(len(s.dead_experts) for s in summaries)
            yield "starved_experts", sum(len(s.starved_experts) for s in summaries)


def _starved_in_layer(
    routed_ME: Tensor, allowed_ME: Tensor | None, starved_ME: Tensor
) -> list[int]:
    """Experts starved by every modality that has tokens and can reach them (and by at least
    one): no modality gives them their share."""
    M, E = routed_ME.shape
    reach_ME = torch.ones(M, E, dtype=torch.bool)
    if allowed_ME is not None:
        reach_ME = torch.cat(
            [allowed_ME[:M], reach_ME.new_zeros(M - min(M, allowed_ME.shape[0]), E)]
        )
    relevant_ME = reach_ME & (routed_ME.sum(-1) > 0)[:, None]
    starved_E = relevant_ME.any(0) & (starved_ME | ~relevant_ME).all(0)
    return starved_E.nonzero().flatten().tolist()


def starved_experts_warning(
    summaries: Sequence[LayerSummary],
    modality_names: Sequence[str] = MODALITY_NAMES,
    fraction: float = stats.STARVED_FRACTION,
) -> str | None:
    """One warning line naming the starved experts per layer and modality, or None if none.

    Pure: the trainer calls it on `RoutingStats.summaries()` and logs what it returns.
    """
    parts = []
    for s in summaries:
        for m, ids in enumerate(s.starved_M):
            if ids:
                mod = modality_names[m] if m < len(modality_names) else f"modality{m}"
                parts.append(f"{s.name}/{mod}: {ids}")
    if not parts:
        return None
    return (
        f"starved experts (under {fraction:.0%} of their uniform share of tokens): "
        + "; ".join(parts)
        + ". They learn little; consider the balance loss weights (losses.*) or fewer experts."
    )


def _add_padded(a: Tensor, b: Tensor) -> Tensor:
    """a + b, zero-padding the leading (modality) dim when a batch brings a new modality."""
    if a.shape == b.shape:
        return a + b
    rows = max(a.shape[0], b.shape[0])
    pad = lambda t: torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])  # noqa: E731
    return pad(a) + pad(b)


def moe_layer_names(model: torch.nn.Module) -> list[str]:
    """Module names of the model's MoE layers, in module order (the `moe_aux` order)."""
    layers = set(map(id, moe_layers(model)))
    return [name for name, m in model.named_modules() if id(m) in layers]


class RoutingEvaluator:
    """Routing statistics of a model's MoE layers over a DataLoader.

    Args:
        loader: yields dict batches.
        forward: `(model, batch) -> output` with a `moe_aux` list (default: `model(**inputs)`).
            A model that embeds images and texts in separate passes (the contrastive tower) can
            return the concatenation of both passes' lists; layers are then named by position.
    """

    def __init__(
        self,
        loader: Iterable[dict],
        *,
        forward: BatchFn | None = None,
        aux_field: str = "moe_aux",
        modality_names: Sequence[str] = MODALITY_NAMES,
        starved_fraction: float = stats.STARVED_FRACTION,
    ) -> None:
        self.loader = loader
        self.forward = forward or default_forward
        self.aux_field = aux_field
        self.modality_names = tuple(modality_names)
        self.starved_fraction = starved_fraction
        self.stats: RoutingStats | None = None

    @torch.no_grad()
    def run(self, model: torch.nn.Module) -> Iterator[tuple[str, Any]]:
        device = model_device(model)
        self.stats = RoutingStats(
            moe_layer_names(model), self.modality_names, self.starved_fraction
        )
        for batch in self.loader:
            out = self.forward(model, to_device(batch, device))
            self.stats.update(get_field(out, self.aux_field))
        yield from self.stats.results()
