"""Whole-model sparse upcycling (Komatsuzaki et al. 2023; MoE-LLaVA, Lin et al. 2024): a dense
vlmoe model becomes its MoE twin by config, with every chosen FFN turned into an MoE layer
whose experts are copies of it (`vlmoe.moe.upcycle_mlp`) and every other weight copied.

With renormalized top-k routing, no router noise and no capacity drops, the upcycled model
computes what the dense one did (up to float rounding of the weighted expert sum).

Which blocks become MoE: the towers' own `moe_every` / `moe_layers`, explicit ones, or one of
MoE-LLaVA's `moe_mode`s by name (`LAYER_CHOICES`): every block, every other block starting with
the first (0, 2, 4, ...: MoE-LLaVA's "sparse"), the first half or the second half.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

from torch import nn

from vlmoe.config import Config, ConfigError, MoEConfig
from vlmoe.models.base import PretrainedModel
from vlmoe.models.config import TransformerConfig
from vlmoe.moe.layer import MoELayer
from vlmoe.moe.upcycle import upcycle_mlp
from vlmoe.nn.mlp import MLP

LayerChoice = Literal["all", "every-other", "first-half", "second-half"]
LAYER_CHOICES: tuple[str, ...] = ("all", "every-other", "first-half", "second-half")


def choose_layers(num_layers: int, choice: LayerChoice) -> list[int]:
    """Block indices that MoE-LLaVA's `moe_mode` `choice` makes MoE in a stack of `num_layers`."""
    if choice == "all":
        return list(range(num_layers))
    if choice == "every-other":
        return list(range(0, num_layers, 2))
    if choice == "first-half":
        return list(range(num_layers // 2))
    if choice == "second-half":
        return list(range(num_layers // 2, num_layers))
    raise ConfigError(f"unknown layer choice {choice!r}; expected one of {list(LAYER_CHOICES)}")


def transformer_paths(config: Config, prefix: str = "") -> list[str]:
    """Dotted paths of every `TransformerConfig` inside `config` (e.g. ["vision.transformer",
    "text.transformer"] for a decoder)."""
    paths = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        path = f"{prefix}{f.name}"
        if isinstance(value, TransformerConfig):
            paths.append(path)
        elif isinstance(value, Config):
            paths.extend(transformer_paths(value, path + "."))
    return paths


def _default_towers(model: PretrainedModel) -> list[str]:
    paths = transformer_paths(model.config)
    if model.architecture == "decoder":  # MoE-LLaVA upcycles the language model only
        return [p for p in paths if p.startswith("text.")]
    return paths


def _set_path(config: Config, path: str, value: Config) -> Config:
    head, _, rest = path.partition(".")
    if not rest:
        return dataclasses.replace(config, **{head: value})
    return dataclasses.replace(config, **{head: _set_path(getattr(config, head), rest, value)})


def _get_path(config: Config, path: str) -> Config:
    for part in path.split("."):
        config = getattr(config, part)
    return config


def upcycle_config(
    model: PretrainedModel,
    moe: MoEConfig,
    *,
    moe_every: int | None = None,
    moe_layers: list[int] | None = None,
    towers: Sequence[str] | None = None,
    layers: LayerChoice | None = None,
) -> Config:
    """The MoE twin's config. Each chosen tower's experts take its FFN's width and activation."""
    if layers is not None and (moe_every is not None or moe_layers is not None):
        raise ConfigError("give either a layer choice or moe_every / moe_layers, not both")
    all_paths = transformer_paths(model.config)
    chosen = []
    for tower in towers if towers is not None else _default_towers(model):
        path = tower if tower in all_paths else f"{tower}.transformer"
        if path not in all_paths:
            raise ConfigError(f"unknown tower {tower!r}; this model has {all_paths}")
        chosen.append(path)
    config = model.config
    for path in chosen:
        t = _get_path(config, path)
        if t.moe is not None:
            raise ConfigError(f"{path} is already MoE; upcycle a dense tower")
        if t.mlp_bias or t.activation not in ("swiglu", "gelu"):
            raise ConfigError(
                f"{path}: its FFNs (activation={t.activation!r}, mlp_bias={t.mlp_bias}) have no "
                "MoE expert equivalent; experts are bias-free 'swiglu' or 'gelu'"
            )
        tower_moe = dataclasses.replace(
            moe, dim=t.dim, hidden_dim=t.hidden_dim, activation=t.activation
        )
        changes = {"moe": tower_moe}
        if moe_every is not None:
            changes["moe_every"] = moe_every
        if moe_layers is not None:
            changes["moe_layers"] = list(moe_layers)
        if layers is not None:
            changes["moe_layers"] = choose_layers(t.num_layers, layers)
        config = _set_path(config, path, dataclasses.replace(t, **changes))
    return config


def upcycle_model(
    model: PretrainedModel,
    moe: MoEConfig,
    *,
    moe_every: int | None = None,
    moe_layers: list[int] | None = None,
    towers: Sequence[str] | None = None,
    layers: LayerChoice | None = None,
    noise_std: float = 0.0,
) -> PretrainedModel:
    """A new MoE model upcycled from dense `model` (which is left unchanged).

    Args:
        moe: routing settings (num_experts, top_k, router, ...); dim, hidden_dim and activation
            are taken from each tower's dense FFN.
        moe_every / moe_layers: which blocks become MoE (default: the towers' own settings).
        layers: or MoE-LLaVA's choice by name, see `choose_layers`.
        towers: which transformers to upcycle, e.g. ["text"] or ["vision", "text"] for a
            decoder (default: the language model for a decoder, else the only tower).
        noise_std: relative noise on the expert copies (0 keeps exact equality at init).
    """
    config = upcycle_config(
        model, moe, moe_every=moe_every, moe_layers=moe_layers, towers=towers, layers=layers
    )
    kwargs = {}
    if getattr(model.config, "vision", "") is None:  # decoder with an external encoder
        kwargs["vision_encoder"] = model.vision
    new = type(model)(config, **kwargs)
    param = next(model.parameters())
    new.to(device=param.device, dtype=param.dtype)
    dense_modules = dict(model.named_modules())
    replaced = []
    for name, module in list(new.named_modules()):
        if isinstance(module, MoELayer):
            dense = dense_modules.get(name)
            if not isinstance(dense, MLP):
                raise ConfigError(
                    f"{name}: expected a dense MLP to upcycle, found {type(dense).__name__}"
                )
            _set_module(new, name, upcycle_mlp(dense, module.cfg, noise_std=noise_std))
            replaced.append(name)
    dense_state = model.state_dict()
    new_state = new.state_dict()
    missing = [
        k
        for k in new_state
        if k not in dense_state and not any(k.startswith(r + ".") for r in replaced)
    ]
    if missing:
        raise ConfigError(f"upcycling left tensors without dense weights: {missing[:5]}")
    new.load_state_dict({k: v for k, v in dense_state.items() if k in new_state}, strict=False)
    new.tokenizer = model.tokenizer
    new.train(model.training)
    return new


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)
