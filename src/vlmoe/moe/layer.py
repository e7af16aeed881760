"""`MoELayer`: router + dispatch + experts (+ always-on shared experts), and `MoEAux`.

Legend: T tokens, D model dim, E routed experts, K experts per token, N dispatched rows,
B sequences, L tokens per sequence, S soft-MoE slots.

The forward is the MoE in a few lines (gpt-fast style): route, dispatch, run experts, combine,
add shared experts. It returns `(y, MoEAux)` whatever the options; `MoEAux` carries everything
the balance losses (`vlmoe.moe.losses`) and routing stats (`vlmoe.moe.stats`) need, so neither
is computed or accumulated inside `forward`, and nothing here syncs with the host (except the
`loop` reference backend).

Shared experts follow DeepSeekMoE (Dai et al. 2024); the sigmoid-gated variant follows
Qwen2-MoE. Modality groups follow VL-MoE (Shen et al. 2023).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vlmoe.config import MoEConfig
from vlmoe.moe.dispatch import Dispatcher, count_ids
from vlmoe.moe.experts import Experts
from vlmoe.moe.router import RouterOutput, TopKRouter, build_router
from vlmoe.nn.mlp import MLP


@dataclass(frozen=True)
class MoEAux:
    """What one MoE layer's forward tells the losses, stats and bias update.

    logits_TE, probs_TE: fp32 router logits and scores (see `RouterOutput`).
    expert_ids_TK, weights_TK: the routing (-1 = unused slot), fp32 weights.
    kept_TK: pairs that survived capacity (all routed pairs when dropless).
    counts_E: rows each expert computed (int64).
    modality_T: modality id per token (0 image, 1 text, -1 padding), or None (all one pool).
    allowed_ME: (M, E) bool experts each modality may reach, or None (one shared pool).
    """

    logits_TE: Tensor
    probs_TE: Tensor
    expert_ids_TK: Tensor
    weights_TK: Tensor
    kept_TK: Tensor
    counts_E: Tensor
    modality_T: Tensor | None
    allowed_ME: Tensor | None
    num_experts: int
    top_k: int
    router: str

    @property
    def valid_T(self) -> Tensor:
        """Tokens that count in losses and stats (everything but padding)."""
        if self.modality_T is None:
            return torch.ones(
                self.logits_TE.shape[0], dtype=torch.bool, device=self.logits_TE.device
            )
        return self.modality_T >= 0

    @property
    def routed_E(self) -> Tensor:
        """Pairs routed to each expert before capacity drops (valid tokens only)."""
        ids = self.expert_ids_TK.masked_fill(~self.valid_T[:, None], -1).reshape(-1)
        ids = torch.where(ids >= 0, ids, self.num_experts)
        return count_ids(ids, self.num_experts + 1)[: self.num_experts]


def _priority_T(routing: RouterOutput) -> Tensor:
    """(T,) batch-priority score (V-MoE): a token's top router probability before top-k
    renormalization, so that with top-1 the most confident tokens are kept, not the first ones."""
    ids_TK = routing.expert_ids_TK.clamp_min(0)
    return routing.probs_TE.gather(1, ids_TK).max(dim=1).values


class MoELayer(nn.Module):
    """A sparse MoE feed-forward layer; a drop-in for `vlmoe.nn.mlp.MLP` that also returns aux."""

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.router = build_router(cfg)
        self.experts = Experts(
            cfg.num_experts, cfg.dim, cfg.hidden_dim, cfg.activation, cfg.backend
        )
        self.dispatcher = Dispatcher(
            cfg.num_experts, cfg.capacity_factor, cfg.drop_policy, cfg.capacity_group_size
        )
        self.shared_experts = None
        self.shared_gate = None
        if cfg.num_shared_experts:
            hidden = cfg.num_shared_experts * (cfg.shared_hidden_dim or cfg.hidden_dim)
            self.shared_experts = MLP(cfg.dim, hidden, cfg.activation)
            if cfg.shared_expert_gate:
                self.shared_gate = nn.Linear(cfg.dim, 1, bias=False)

    def forward(self, x: Tensor, modality: Tensor | None = None) -> tuple[Tensor, MoEAux]:
        """x (..., D), modality (...) int or None -> y (..., D), MoEAux."""
        D = x.shape[-1]
        if self.cfg.dim != D:
            raise ValueError(
                f"MoELayer expects inputs of dim {self.cfg.dim}, got shape {tuple(x.shape)}"
            )
        if modality is not None and modality.shape != x.shape[:-1]:
            raise ValueError(
                f"modality shape {tuple(modality.shape)} must match the tokens' shape "
                f"{tuple(x.shape[:-1])}"
            )
        x_TD = x.reshape(-1, D)
        modality_T = None if modality is None else modality.reshape(-1).long()
        if self.cfg.router == "soft":
            y_TD, routing, counts_E = self._soft(x, modality)
            kept_TK = torch.ones_like(routing.expert_ids_TK, dtype=torch.bool)
        else:
            routing = self.router(x_TD, modality_T)
            pairs = self._few_pairs(x_TD, routing)
            if pairs is not None:
                y_TD = self._pairwise(x_TD, routing.weights_TK, pairs)
                kept_TK = torch.ones_like(routing.expert_ids_TK, dtype=torch.bool)
                counts_E = count_ids(routing.expert_ids_TK, self.cfg.num_experts)
            else:
                x_ND, plan = self.dispatcher.dispatch(
                    x_TD, routing.expert_ids_TK, routing.weights_TK, _priority_T(routing)
                )
                y_ND = self.experts(x_ND, plan.expert_counts)  # (N, D)
                y_TD = self.dispatcher.combine(y_ND, plan)  # (T, D)
                kept_TK, counts_E = plan.kept_TK, plan.counts_E
        if self.shared_experts is not None:
            shared_TD = self.shared_experts(x_TD)
            if self.shared_gate is not None:
                shared_TD = torch.sigmoid(self.shared_gate(x_TD)) * shared_TD
            y_TD = y_TD + shared_TD
        aux = MoEAux(
            logits_TE=routing.logits_TE,
            probs_TE=routing.probs_TE,
            expert_ids_TK=routing.expert_ids_TK,
            weights_TK=routing.weights_TK,
            kept_TK=kept_TK,
            counts_E=counts_E,
            modality_T=modality_T,
            allowed_ME=getattr(self.router, "allowed_ME", None),
            num_experts=self.cfg.num_experts,
            top_k=routing.expert_ids_TK.shape[1],
            router=self.cfg.router,
        )
        return y_TD.view(x.shape), aux

    def _few_pairs(self, x_TD: Tensor, routing: RouterOutput) -> list[list[int]] | None:
        """The routing as (T, K) expert ids on the host when the decoding fast path applies:
        the `auto` backend, no grad, on the CPU, token choice, at most E pairs, all routed, none
        dropped (dropless, or one token: capacity is then at least 1 and top-k experts are
        distinct). Else None."""
        T, K = routing.expert_ids_TK.shape
        if (
            self.cfg.backend != "auto"
            or torch.is_grad_enabled()
            or x_TD.device.type != "cpu"
            or self.cfg.num_experts < T * K
            or not isinstance(self.router, TopKRouter)
            or (self.cfg.capacity_factor is not None and T > 1)
        ):
            return None
        ids = routing.expert_ids_TK.tolist()
        return ids if all(e >= 0 for row in ids for e in row) else None

    def _pairwise(self, x_TD: Tensor, weights_TK: Tensor, ids: list[list[int]]) -> Tensor:
        """Each (token, expert) pair run directly and weighted: what dispatch, experts and combine
        compute, without the sort, the buffers and the grouped GEMMs' fixed costs, which are
        most of a one-token forward (decoding). Held to the general path by the tests."""
        w_TK = weights_TK.to(x_TD.dtype)
        rows = []
        for t, experts in enumerate(ids):
            x = x_TD[t : t + 1]
            y = self.experts.run_one(experts[0], x) * w_TK[t, 0]
            for k in range(1, len(experts)):
                y.add_(self.experts.run_one(experts[k], x) * w_TK[t, k])
            rows.append(y)
        return torch.cat(rows) if len(rows) > 1 else rows[0]

    def _soft(
        self, x_BLD: Tensor, modality_BL: Tensor | None
    ) -> tuple[Tensor, RouterOutput, Tensor]:
        """Soft MoE: slots mix tokens by dispatch weight, outputs mix slots by combine weight."""
        routing = self.router(x_BLD, modality_BL)
        B, L, D = x_BLD.shape
        E, S = self.cfg.num_experts, self.router.num_slots
        dispatch_BLS = routing.soft_dispatch_BLS.to(x_BLD.dtype)
        combine_BLS = routing.soft_combine_BLS.to(x_BLD.dtype)
        slots_BSD = dispatch_BLS.transpose(1, 2) @ x_BLD  # (B, S, D)
        # Expert e owns slots [e*S/E, (e+1)*S/E) of every sequence: gather them expert-major.
        x_ND = slots_BSD.unflatten(1, (E, S // E)).transpose(0, 1).reshape(-1, D)  # (E*B*S/E, D)
        counts_E = torch.full((E,), B * (S // E), dtype=torch.long, device=x_BLD.device)
        y_ND = self.experts(x_ND, counts_E)
        y_BSD = y_ND.view(E, B, S // E, D).transpose(0, 1).reshape(B, S, D)
        y_BLD = combine_BLS @ y_BSD  # (B, L, D)
        return y_BLD.reshape(B * L, D), routing, counts_E

    @torch.no_grad()
    def update_balance_bias(self, *auxes: MoEAux) -> None:
        """Aux-loss-free balancing step from this layer's `MoEAux` of the last step (several when
        the layer ran several times, e.g. over images then texts): the bias moves once, by the
        load summed over them. A no-op unless `balance_bias` is on."""
        if isinstance(self.router, TopKRouter) and auxes:
            self.router.update_bias(sum(aux.routed_E for aux in auxes))


def moe_layers(model: nn.Module) -> list[MoELayer]:
    """Every MoELayer in `model`, in module order (the order models return their aux lists)."""
    return [m for m in model.modules() if isinstance(m, MoELayer)]


@torch.no_grad()
def update_balance_bias(model: nn.Module, auxes: list[MoEAux]) -> None:
    """Aux-loss-free balancing after the optimizer step, one `MoEAux` per MoE layer in order.

    A model that runs its MoE layers several times a step (e.g. a contrastive tower over images,
    then texts) returns a whole multiple of the layer count: pass i belongs to layer
    i % num_layers, and each layer's bias moves once, by its load summed over the passes.
    """
    layers = moe_layers(model)
    if not layers or len(auxes) % len(layers):
        raise ValueError(
            f"got {len(auxes)} MoEAux for {len(layers)} MoE layers; expected a whole multiple"
        )
    for i, layer in enumerate(layers):
        layer.update_balance_bias(*auxes[i :: len(layers)])
