"""Decoder language models from Hugging Face: Llama (Touvron et al. 2023), Mistral (Jiang et al.
2023), Qwen2 (Yang et al. 2024), Mixtral (Jiang et al. 2024), Qwen2-MoE and Phi (Gunasekar et
al. 2023), as a vlmoe `TextTransformer`; and back, for Llama-, Qwen2-, Mixtral- and
Qwen2-MoE-shaped vlmoe LMs.

The key maps read the layout `transformers` writes to disk: per-projection attention weights
(q, k, v concatenated into vlmoe's packed `qkv`), SwiGLU gate and up projections (packed into
`fc_in`, gate first) and per-expert MoE weights (Mixtral `w1`/`w3`/`w2`, Qwen2-MoE
`gate_proj`/`up_proj`/`down_proj`), which are stacked and handed to `vlmoe.moe.hf` for the MoE
layers. Config features vlmoe lacks (rope scaling, sliding windows on some layers, QK norms, an
activation other than the family's) are refused by name.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from vlmoe.config import MoEConfig
from vlmoe.models.config import TextConfig, TransformerConfig
from vlmoe.models.hf.files import HFImportError
from vlmoe.models.hf.keymap import StateReader, load_exact
from vlmoe.models.text import TextTransformer
from vlmoe.moe.hf import (
    load_mixtral_state_dict,
    load_qwen2_moe_state_dict,
    mixtral_config,
    mixtral_state_dict,
    qwen2_moe_config,
    qwen2_moe_state_dict,
)
from vlmoe.moe.layer import MoELayer

log = logging.getLogger(__name__)

MODEL_TYPES = ("llama", "mistral", "qwen2", "mixtral", "qwen2_moe", "phi")
EXPORT_TYPES = ("llama", "qwen2", "mixtral", "qwen2_moe")
_ARCHS = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
}
_GELU = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu", "gelu": "gelu_erf"}


def _rope(cfg: dict[str, Any], source: str) -> tuple[float, float]:
    """(theta, partial rotary factor); any rope scaling is refused by its name."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    kind = (
        params.get("rope_type")
        or params.get("type")
        or scaling.get("rope_type")
        or scaling.get("type")
        or "default"
    )
    if kind != "default":
        raise HFImportError(
            f"{source}: rope scaling type {kind!r} is not supported (vlmoe implements plain RoPE)"
        )
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    factor = params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    return float(theta), float(factor)


def _max_seq_len(cfg: dict[str, Any], source: str) -> int:
    """max_position_embeddings, or a Mistral sliding window when it is shorter: vlmoe attends
    to every earlier token, which equals windowed attention up to the window's length."""
    mt, max_len = cfg["model_type"], int(cfg.get("max_position_embeddings", 2048))
    layer_types = set(cfg.get("layer_types") or ["full_attention"])
    if mt in ("mistral", "mixtral"):
        window = cfg.get("sliding_window")
        if window and window < max_len:
            log.warning(
                "%s: sliding_window=%d; vlmoe uses full attention, equal up to that many "
                "tokens, so max_seq_len is set to %d",
                source,
                window,
                window,
            )
            return int(window)
    elif cfg.get("use_sliding_window") or layer_types != {"full_attention"}:
        raise HFImportError(
            f"{source}: sliding-window attention (layer_types {sorted(layer_types)}) is not "
            "supported"
        )
    return max_len


def _activation(cfg: dict[str, Any], source: str) -> str:
    act, mt = cfg.get("hidden_act", "silu"), cfg["model_type"]
    if mt == "phi":
        if act not in _GELU:
            raise HFImportError(f"{source}: hidden_act {act!r} is not supported for phi")
        return _GELU[act]
    if act != "silu":
        raise HFImportError(
            f"{source}: hidden_act {act!r} is not supported for {mt} (SwiGLU uses 'silu')"
        )
    return "swiglu"


def _moe(cfg: dict[str, Any]) -> tuple[MoEConfig | None, list[int] | None]:
    mt, n = cfg["model_type"], cfg["num_hidden_layers"]
    ns = SimpleNamespace(**cfg)
    if mt == "mixtral":
        return mixtral_config(ns), list(range(n))
    if mt == "qwen2_moe" and cfg.get("num_experts", 0) > 0:
        ns.norm_topk_prob = cfg.get("norm_topk_prob", False)
        step, dense = cfg.get("decoder_sparse_step", 1), set(cfg.get("mlp_only_layers") or [])
        layers = [i for i in range(n) if i not in dense and (i + 1) % step == 0]
        return (qwen2_moe_config(ns), layers) if layers else (None, None)
    return None, None


def text_config(cfg: dict[str, Any], source: str) -> TextConfig:
    """The vlmoe `TextConfig` computing what the Hugging Face decoder config describes."""
    mt = cfg["model_type"]
    if cfg.get("qk_layernorm") or cfg.get("use_qk_norm"):
        raise HFImportError(f"{source}: QK layer norms are not supported")
    D, H = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    Hkv = int(cfg.get("num_key_value_heads") or H)
    head_dim = int(cfg.get("head_dim") or D // H)
    theta, rotary = _rope(cfg, source)
    moe, moe_layers = _moe(cfg)
    if mt == "llama":
        attn_bias = "all" if cfg.get("attention_bias") else "none"
    elif mt in ("qwen2", "qwen2_moe"):
        attn_bias = "qkv" if cfg.get("qkv_bias", True) else "none"
    elif mt == "phi":
        attn_bias = "all"
    else:
        attn_bias = "none"
    phi = mt == "phi"
    transformer = TransformerConfig(
        dim=D,
        num_layers=int(cfg["num_hidden_layers"]),
        num_heads=H,
        head_dim=head_dim if head_dim * H != D else None,
        num_kv_heads=Hkv if Hkv != H else None,
        hidden_dim=int(cfg["intermediate_size"]),
        activation=_activation(cfg, source),
        norm="layernorm" if phi else "rmsnorm",
        norm_eps=float(cfg.get("layer_norm_eps" if phi else "rms_norm_eps", 1e-5)),
        attn_bias=attn_bias,
        mlp_bias=phi or bool(cfg.get("mlp_bias", False)),
        layout="parallel" if phi else "pre",
        moe=moe,
        moe_layers=moe_layers,
    )
    rope_dim = int(head_dim * rotary)
    return TextConfig(
        vocab_size=int(cfg["vocab_size"]),
        max_seq_len=_max_seq_len(cfg, source),
        attention="causal",
        positions="rope",
        rope_theta=theta,
        rope_dim=rope_dim if rope_dim != head_dim else None,
        pool="last",
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        lm_head_bias=phi,
        transformer=transformer,
    )


# --- import ---------------------------------------------------------------------------------


def _attention(r: StateReader, p: str, t: TransformerConfig, out: str, phi: bool) -> dict:
    D, Dh = t.dim, t.attn_head_dim
    rows = {"q": t.num_heads * Dh, "k": (t.num_kv_heads or t.num_heads) * Dh}
    rows["v"] = rows["k"]
    ours = {
        f"{out}.qkv.weight": torch.cat([r.take(f"{p}{n}_proj.weight", (rows[n], D)) for n in "qkv"])
    }
    if t.attn_bias != "none":
        biases = [r.take(f"{p}{n}_proj.bias", (rows[n],)) for n in "qkv"]
        ours[f"{out}.qkv.bias"] = torch.cat(biases)
    o = f"{p}dense" if phi else f"{p}o_proj"
    ours[f"{out}.proj.weight"] = r.take(f"{o}.weight", (D, rows["q"]))
    if t.attn_bias == "all":
        ours[f"{out}.proj.bias"] = r.take(f"{o}.bias", (D,))
    return ours


def _norm(r: StateReader, hf: str, ours: str, dim: int, bias: bool) -> dict[str, Tensor]:
    out = {f"{ours}.weight": r.take(f"{hf}.weight", (dim,))}
    if bias:
        out[f"{ours}.bias"] = r.take(f"{hf}.bias", (dim,))
    return out


def _dense_ffn(r: StateReader, p: str, t: TransformerConfig, out: str, phi: bool) -> dict:
    D, I = t.dim, t.hidden_dim
    if phi:
        return {
            f"{out}.fc_in.weight": r.take(f"{p}fc1.weight", (I, D)),
            f"{out}.fc_in.bias": r.take(f"{p}fc1.bias", (I,)),
            f"{out}.fc_out.weight": r.take(f"{p}fc2.weight", (D, I)),
            f"{out}.fc_out.bias": r.take(f"{p}fc2.bias", (D,)),
        }
    ours = {
        f"{out}.fc_in.weight": torch.cat(
            [r.take(f"{p}gate_proj.weight", (I, D)), r.take(f"{p}up_proj.weight", (I, D))]
        ),
        f"{out}.fc_out.weight": r.take(f"{p}down_proj.weight", (D, I)),
    }
    if t.mlp_bias:
        ours[f"{out}.fc_in.bias"] = torch.cat(
            [r.take(f"{p}gate_proj.bias", (I,)), r.take(f"{p}up_proj.bias", (I,))]
        )
        ours[f"{out}.fc_out.bias"] = r.take(f"{p}down_proj.bias", (D,))
    return ours


def _experts(r: StateReader, p: str, names: tuple[str, str, str], moe: MoEConfig) -> dict:
    """Per-expert (gate, up, down) weights -> the stacked block layout of `vlmoe.moe.hf`."""
    E, D, H = moe.num_experts, moe.dim, moe.hidden_dim
    if r.has(f"{p}experts.gate_up_proj"):  # transformers' in-memory stacked layout
        gate_up = r.take(f"{p}experts.gate_up_proj", (E, 2 * H, D))
        down = r.take(f"{p}experts.down_proj", (E, D, H))
    else:
        g, u, d = names
        gate_up = torch.stack(
            [
                torch.cat(
                    [
                        r.take(f"{p}experts.{e}.{g}.weight", (H, D)),
                        r.take(f"{p}experts.{e}.{u}.weight", (H, D)),
                    ]
                )
                for e in range(E)
            ]
        )  # (E, 2H, D)
        down = torch.stack([r.take(f"{p}experts.{e}.{d}.weight", (D, H)) for e in range(E)])
    return {
        "gate.weight": r.take(f"{p}gate.weight", (E, D)),
        "experts.gate_up_proj": gate_up,
        "experts.down_proj": down,
    }


def _qwen2_moe_block(r: StateReader, p: str, moe: MoEConfig) -> dict[str, Tensor]:
    D, Hs = moe.dim, moe.shared_hidden_dim or moe.hidden_dim
    block = _experts(r, p, ("gate_proj", "up_proj", "down_proj"), moe)
    s = f"{p}shared_expert."
    block.update(
        {
            "shared_expert.gate_proj.weight": r.take(f"{s}gate_proj.weight", (Hs, D)),
            "shared_expert.up_proj.weight": r.take(f"{s}up_proj.weight", (Hs, D)),
            "shared_expert.down_proj.weight": r.take(f"{s}down_proj.weight", (D, Hs)),
            "shared_expert_gate.weight": r.take(f"{p}shared_expert_gate.weight", (1, D)),
        }
    )
    return block


def import_causal_lm(
    cfg: dict[str, Any], tensors: dict[str, Tensor], source: str
) -> TextTransformer:
    """Build the vlmoe LM for a Hugging Face decoder config and load its weights."""
    config = text_config(cfg, source)
    model = TextTransformer(config)
    t, mt, phi = config.transformer, cfg["model_type"], cfg["model_type"] == "phi"
    prefix = "model." if "model.embed_tokens.weight" in tensors else ""
    r = StateReader(tensors, source, prefix)
    V, D = config.vocab_size, t.dim
    ours = {"embed.weight": r.take("embed_tokens.weight", (V, D))}
    moe_blocks: dict[int, dict[str, Tensor]] = {}
    moe_ids = set(t.moe_layer_ids())
    for i in range(t.num_layers):
        p, out = f"layers.{i}.", f"transformer.blocks.{i}"
        ours.update(_attention(r, f"{p}self_attn.", t, f"{out}.attn", phi))
        ours.update(_norm(r, f"{p}input_layernorm", f"{out}.norm1", D, phi))
        if not phi:
            ours.update(_norm(r, f"{p}post_attention_layernorm", f"{out}.norm2", D, False))
        if i in moe_ids and mt == "mixtral":
            legacy = r.has(f"{p}block_sparse_moe.gate.weight")
            base = f"{p}block_sparse_moe." if legacy else f"{p}mlp."
            moe_blocks[i] = _experts(r, base, ("w1", "w3", "w2"), t.moe)
        elif i in moe_ids:
            moe_blocks[i] = _qwen2_moe_block(r, f"{p}mlp.", t.moe)
        else:
            ours.update(_dense_ffn(r, f"{p}mlp.", t, f"{out}.ffn", phi))
    final = "final_layernorm" if phi else "norm"
    ours.update(_norm(r, final, "transformer.norm", D, phi))
    r.prefix = ""
    unused = [r"lm_head\.weight"] if config.tie_embeddings else []
    if not config.tie_embeddings:
        ours["lm_head.weight"] = r.take("lm_head.weight", (V, D))
        if phi:
            ours["lm_head.bias"] = r.take("lm_head.bias", (V,))
    r.finish(unused + [r".*rotary_emb\.inv_freq"])
    # MoE layers load through vlmoe.moe.hf; everything else must be covered by `ours`.
    own = model.state_dict()
    moe_prefixes = tuple(f"transformer.blocks.{i}.ffn." for i in moe_blocks)
    load_exact(model, {**{k: own[k] for k in own if k.startswith(moe_prefixes)}, **ours}, source)
    load_block = load_mixtral_state_dict if mt == "mixtral" else load_qwen2_moe_state_dict
    for i, block in moe_blocks.items():
        load_block(model.transformer.blocks[i].ffn, block)
    return model


# --- export ---------------------------------------------------------------------------------


def _export_problems(config: TextConfig, family: str) -> list[str]:
    """Why `config` cannot be written as `family` (empty when it can)."""
    t, problems = config.transformer, []
    wanted = {
        "attention": (config.attention, "causal"),
        "positions": (config.positions, "rope"),
        "rope_dim": (config.rope_dim, None),
        "lm_head_bias": (config.lm_head_bias, False),
        "transformer.norm": (t.norm, "rmsnorm"),
        "transformer.activation": (t.activation, "swiglu"),
        "transformer.layout": (t.layout, "pre"),
        "transformer.input_norm": (t.input_norm, False),
        "transformer.final_norm": (t.final_norm, True),
        "transformer.mlp_bias": (t.mlp_bias, False),
    }
    if family in ("qwen2", "qwen2_moe"):
        wanted["transformer.attn_bias"] = (t.attn_bias, "qkv")
    elif family == "mixtral":
        wanted["transformer.attn_bias"] = (t.attn_bias, "none")
    elif t.attn_bias == "qkv":
        problems.append("transformer.attn_bias='qkv' (Llama biases all projections or none)")
    for name, (have, want) in wanted.items():
        if have != want:
            problems.append(f"{name}={have!r} (needs {want!r})")
    moe = t.moe
    if family in ("llama", "qwen2") and moe is not None:
        problems.append("the LM has MoE layers (export it as mixtral or qwen2_moe)")
    if family in ("mixtral", "qwen2_moe"):
        if moe is None:
            return [*problems, "the LM has no MoE layers"]
        if family == "mixtral" and t.moe_layer_ids() != list(range(t.num_layers)):
            problems.append(f"MoE in blocks {t.moe_layer_ids()} (Mixtral has MoE in every block)")
        shared = (1, True) if family == "qwen2_moe" else (0, False)
        checks = {
            "router": (moe.router, "topk"),
            "score_func": (moe.score_func, "softmax"),
            "activation": (moe.activation, "swiglu"),
            "balance_bias": (moe.balance_bias, False),
            "capacity_factor": (moe.capacity_factor, None),
            "expert_groups": (moe.expert_groups, "none"),
            "num_shared_experts": (moe.num_shared_experts, shared[0]),
            "shared_expert_gate": (moe.shared_expert_gate, shared[1]),
        }
        if family == "mixtral":
            checks["renormalize"] = (moe.renormalize, True)
        for name, (have, want) in checks.items():
            if have != want:
                problems.append(f"moe.{name}={have!r} (needs {want!r})")
    return problems


def export_family(config: TextConfig) -> str:
    """The Hugging Face family a vlmoe LM maps onto exactly; raises naming why none does."""
    t = config.transformer
    if t.moe is None:
        family = "qwen2" if t.attn_bias == "qkv" else "llama"
    else:
        family = "qwen2_moe" if t.moe.num_shared_experts else "mixtral"
    problems = _export_problems(config, family)
    if problems:
        raise HFImportError(f"this LM cannot be written as {family}: " + "; ".join(problems))
    return family


def hf_config(config: TextConfig, family: str) -> dict[str, Any]:
    """The Hugging Face config.json of a vlmoe LM in `family`'s layout."""
    t = config.transformer
    out: dict[str, Any] = {
        "architectures": [_ARCHS[family]],
        "model_type": family,
        "vocab_size": config.vocab_size,
        "hidden_size": t.dim,
        "intermediate_size": t.hidden_dim,
        "num_hidden_layers": t.num_layers,
        "num_attention_heads": t.num_heads,
        "num_key_value_heads": t.num_kv_heads or t.num_heads,
        "head_dim": t.attn_head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": t.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "rope_theta": config.rope_theta,
        "tie_word_embeddings": config.tie_embeddings,
        "torch_dtype": "float32",
    }
    if family == "llama":
        out.update(attention_bias=t.attn_bias == "all", mlp_bias=False)
    if family == "mixtral":
        out.update(
            num_local_experts=t.moe.num_experts,
            num_experts_per_tok=t.moe.top_k,
            intermediate_size=t.moe.hidden_dim,
            sliding_window=None,
        )
    if family in ("qwen2", "qwen2_moe"):
        out.update(use_sliding_window=False, sliding_window=None, qkv_bias=True)
    if family == "qwen2_moe":
        moe_ids = set(t.moe_layer_ids())
        out.update(
            num_experts=t.moe.num_experts,
            num_experts_per_tok=t.moe.top_k,
            moe_intermediate_size=t.moe.hidden_dim,
            shared_expert_intermediate_size=t.moe.shared_hidden_dim or t.moe.hidden_dim,
            norm_topk_prob=t.moe.renormalize,
            decoder_sparse_step=1,
            mlp_only_layers=[i for i in range(t.num_layers) if i not in moe_ids],
        )
    return out


def hf_state_dict(model: TextTransformer, family: str) -> dict[str, Tensor]:
    """A vlmoe LM's weights under `family`'s Hugging Face names (the on-disk layout)."""
    t = model.config.transformer
    own = {k: v.detach() for k, v in model.state_dict().items()}
    H, Hkv, Dh = t.num_heads, t.num_kv_heads or t.num_heads, t.attn_head_dim
    out = {
        "model.embed_tokens.weight": own["embed.weight"],
        "model.norm.weight": own["transformer.norm.weight"],
    }
    if not model.config.tie_embeddings:
        out["lm_head.weight"] = own["lm_head.weight"]
    for i, block in enumerate(model.transformer.blocks):
        p, b = f"model.layers.{i}.", f"transformer.blocks.{i}."
        for kind in ("weight", "bias"):
            if f"{b}attn.qkv.{kind}" in own:
                q, k, v = own[f"{b}attn.qkv.{kind}"].split([H * Dh, Hkv * Dh, Hkv * Dh])
                out.update({f"{p}self_attn.{n}_proj.{kind}": x for n, x in zip("qkv", (q, k, v))})
            if f"{b}attn.proj.{kind}" in own:
                out[f"{p}self_attn.o_proj.{kind}"] = own[f"{b}attn.proj.{kind}"]
        out[f"{p}input_layernorm.weight"] = own[f"{b}norm1.weight"]
        out[f"{p}post_attention_layernorm.weight"] = own[f"{b}norm2.weight"]
        if isinstance(block.ffn, MoELayer):
            out.update(_moe_to_hf(block.ffn, p, family))
        else:
            gate, up = own[f"{b}ffn.fc_in.weight"].chunk(2)
            out[f"{p}mlp.gate_proj.weight"], out[f"{p}mlp.up_proj.weight"] = gate, up
            out[f"{p}mlp.down_proj.weight"] = own[f"{b}ffn.fc_out.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def _moe_to_hf(layer: MoELayer, p: str, family: str) -> dict[str, Tensor]:
    """An MoE layer as per-expert Hugging Face weights (through `vlmoe.moe.hf`)."""
    if family == "mixtral":
        block, base = mixtral_state_dict(layer), f"{p}block_sparse_moe."
        g, u, d = "w1", "w3", "w2"
    else:
        block, base = qwen2_moe_state_dict(layer), f"{p}mlp."
        g, u, d = "gate_proj", "up_proj", "down_proj"
    out = {f"{base}gate.weight": block.pop("gate.weight")}
    gate_up, down = block.pop("experts.gate_up_proj"), block.pop("experts.down_proj")
    for e in range(gate_up.shape[0]):
        gate, up = gate_up[e].chunk(2)
        out[f"{base}experts.{e}.{g}.weight"] = gate
        out[f"{base}experts.{e}.{u}.weight"] = up
        out[f"{base}experts.{e}.{d}.weight"] = down[e]
    out.update({f"{base}{k}": v for k, v in block.items()})  # Qwen2-MoE's shared expert
    return out
