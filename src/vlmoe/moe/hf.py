"""Convert MoE blocks to and from Hugging Face transformers state dicts.

Supported blocks (transformers >= 5 layouts, the block's own keys, no prefix):
- `MixtralSparseMoeBlock`: `gate.weight` (E, D), `experts.gate_up_proj` (E, 2H, D) with the gate
  rows first, `experts.down_proj` (E, D, H). Routing: softmax, top-k, renormalized; its
  `router_jitter_noise` becomes vlmoe's router jitter (`router_noise="jitter"`).
- `Qwen2MoeSparseMoeBlock`: the same routed part plus `shared_expert.{gate,up,down}_proj.weight`
  and `shared_expert_gate.weight` (1, D); top-k weights renormalized iff `norm_topk_prob`.

vlmoe stores `w_in` (E, D, 2H) and `w_out` (E, H, D): the transposes of the same blocks.
`mixtral_config` / `qwen2_moe_config` give the `MoEConfig` that computes what the block does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlmoe.config import MoEConfig
from vlmoe.moe.layer import MoELayer


def _mixtral_jitter(hf_config) -> dict[str, object]:
    """`router_jitter_noise` as vlmoe's router settings (training only, like Mixtral's).

    Mixtral multiplies the block's input by U(1 - eps, 1 + eps) before both the router and the
    experts; vlmoe jitters the router's input only (Switch Transformer's router jitter). The
    router sees the same noise for the same seed, so tokens go to the same experts; the experts
    compute on the clean input. Eval outputs are identical either way.
    """
    eps = getattr(hf_config, "router_jitter_noise", 0.0) or 0.0
    if not isinstance(eps, int | float) or not 0 <= eps < 1:
        raise ValueError(f"Mixtral config: router_jitter_noise must be in [0, 1), got {eps!r}")
    if eps == 0:
        return {"router_noise": "none"}
    return {"router_noise": "jitter", "router_noise_eps": float(eps)}


def mixtral_config(hf_config, **overrides) -> MoEConfig:
    """MoEConfig equivalent to a transformers MixtralConfig's sparse block, including its
    `router_jitter_noise` (see `_mixtral_jitter`); `overrides` win over what is derived."""
    derived = dict(
        dim=hf_config.hidden_size,
        hidden_dim=hf_config.intermediate_size,
        num_experts=hf_config.num_local_experts,
        top_k=hf_config.num_experts_per_tok,
        activation="swiglu",
        score_func="softmax",
        renormalize=True,
        **_mixtral_jitter(hf_config),
    )
    return MoEConfig(**{**derived, **overrides})


def qwen2_moe_config(hf_config, **overrides) -> MoEConfig:
    """MoEConfig equivalent to a transformers Qwen2MoeConfig's sparse block."""
    return MoEConfig(
        dim=hf_config.hidden_size,
        hidden_dim=hf_config.moe_intermediate_size,
        num_experts=hf_config.num_experts,
        top_k=hf_config.num_experts_per_tok,
        activation="swiglu",
        score_func="softmax",
        renormalize=bool(hf_config.norm_topk_prob),
        num_shared_experts=1,
        shared_hidden_dim=hf_config.shared_expert_intermediate_size,
        shared_expert_gate=True,
        **overrides,
    )


def _check_shapes(
    state: dict[str, Tensor], expected: dict[str, tuple[int, ...]], what: str
) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{what} state dict: missing keys {missing}, unexpected keys {unexpected}")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise ValueError(
                f"{what} state dict: {key} has shape {tuple(state[key].shape)}, expected {shape}"
            )


def _routed_from_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {
        "router.gate.weight": state["gate.weight"],
        "experts.w_in": state["experts.gate_up_proj"].transpose(1, 2),
        "experts.w_out": state["experts.down_proj"].transpose(1, 2),
    }


def _routed_to_hf(layer: MoELayer) -> dict[str, Tensor]:
    return {
        "gate.weight": layer.router.gate.weight.detach().clone(),
        "experts.gate_up_proj": layer.experts.w_in.detach().transpose(1, 2).contiguous(),
        "experts.down_proj": layer.experts.w_out.detach().transpose(1, 2).contiguous(),
    }


def _routed_shapes(cfg: MoEConfig) -> dict[str, tuple[int, ...]]:
    E, D, H = cfg.num_experts, cfg.dim, cfg.hidden_dim
    return {
        "gate.weight": (E, D),
        "experts.gate_up_proj": (E, 2 * H, D),
        "experts.down_proj": (E, D, H),
    }


def load_mixtral_state_dict(layer: MoELayer, state: dict[str, Tensor]) -> None:
    """Load a MixtralSparseMoeBlock's state dict into `layer` (built from `mixtral_config`)."""
    _check_shapes(state, _routed_shapes(layer.cfg), "Mixtral MoE block")
    _load(layer, _routed_from_hf(state))


def mixtral_state_dict(layer: MoELayer) -> dict[str, Tensor]:
    """`layer` as a MixtralSparseMoeBlock state dict."""
    if (
        layer.cfg.num_shared_experts
        or layer.cfg.activation != "swiglu"
        or layer.cfg.router != "topk"
    ):
        raise ValueError(
            "only a top-k SwiGLU layer without shared experts maps onto a Mixtral block"
        )
    return _routed_to_hf(layer)


def _shared_shapes(cfg: MoEConfig) -> dict[str, tuple[int, ...]]:
    D, Hs = cfg.dim, cfg.num_shared_experts * (cfg.shared_hidden_dim or cfg.hidden_dim)
    return {
        "shared_expert.gate_proj.weight": (Hs, D),
        "shared_expert.up_proj.weight": (Hs, D),
        "shared_expert.down_proj.weight": (D, Hs),
        "shared_expert_gate.weight": (1, D),
    }


def load_qwen2_moe_state_dict(layer: MoELayer, state: dict[str, Tensor]) -> None:
    """Load a Qwen2MoeSparseMoeBlock's state dict into `layer` (built from `qwen2_moe_config`)."""
    _check_shapes(
        state, {**_routed_shapes(layer.cfg), **_shared_shapes(layer.cfg)}, "Qwen2-MoE block"
    )
    ours = _routed_from_hf(state)
    ours["shared_experts.fc_in.weight"] = torch.cat(
        [state["shared_expert.gate_proj.weight"], state["shared_expert.up_proj.weight"]], dim=0
    )
    ours["shared_experts.fc_out.weight"] = state["shared_expert.down_proj.weight"]
    ours["shared_gate.weight"] = state["shared_expert_gate.weight"]
    _load(layer, ours)


def qwen2_moe_state_dict(layer: MoELayer) -> dict[str, Tensor]:
    """`layer` as a Qwen2MoeSparseMoeBlock state dict (needs one gated SwiGLU shared expert)."""
    if (
        layer.shared_experts is None
        or layer.shared_gate is None
        or layer.cfg.activation != "swiglu"
    ):
        raise ValueError("a Qwen2-MoE block needs SwiGLU experts and a gated shared expert")
    gate, up = layer.shared_experts.fc_in.weight.detach().chunk(2, dim=0)
    return {
        **_routed_to_hf(layer),
        "shared_expert.gate_proj.weight": gate.clone(),
        "shared_expert.up_proj.weight": up.clone(),
        "shared_expert.down_proj.weight": layer.shared_experts.fc_out.weight.detach().clone(),
        "shared_expert_gate.weight": layer.shared_gate.weight.detach().clone(),
    }


def _load(layer: MoELayer, ours: dict[str, Tensor]) -> None:
    own = layer.state_dict()
    for key, value in ours.items():
        own[key] = value.to(own[key].dtype).contiguous()
    layer.load_state_dict(own)
