"""Typed dataclass configs: dict/YAML round trips, `a.b.c=value` overrides, validation.

Every config in vlmoe is a dataclass deriving from `Config`. Configs hold data only and check
themselves in `__post_init__`, raising `ConfigError` with the field and the value named.
Nested configs are dataclass-typed fields; `from_dict` builds them recursively and rejects
unknown keys, so a typo in a YAML file is one clear error rather than a silently ignored knob.

This file holds the machinery and the MoE layer's slice (`MoEConfig`), which `vlmoe.moe`
consumes. Model, data and training configs live beside the code they configure and use the
same machinery.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A config value, key or file is invalid. The message names the field and the value."""


def check(condition: bool, message: str) -> None:
    """Raise `ConfigError(message)` unless `condition` holds (for `__post_init__` checks)."""
    if not condition:
        raise ConfigError(message)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Convert a parsed YAML/JSON/CLI value to the annotated type, or raise ConfigError."""
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own error says more than "not a valid X | None"
            return _coerce(value, options[0], path)
        for arg in options:
            try:
                return _coerce(value, arg, path)
            except ConfigError:
                pass
        raise ConfigError(f"{path}: {value!r} is not a valid {_type_name(tp)}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{path}: {value!r} is not one of {list(args)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {value!r}")
        return tp.from_dict(value, _path=path)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        key_tp, val_tp = args if args else (Any, Any)
        return {
            _coerce(k, key_tp, path): _coerce(v, val_tp, f"{path}.{k}") for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{path}: cannot read {value!r} as {_type_name(tp)}")


def parse_override(text: str) -> tuple[str, Any]:
    """`"a.b=value"` -> ("a.b", value): the one parser of `--set` overrides. The value is read
    as YAML (`3`, `true`, `[1, 2]`, `{a: 1}`), and `3e-4` as a number."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key=value")
    return key.strip(), _parse_scalar(raw.strip())


def suggest(name: str, known: Sequence[str]) -> str:
    """ "; did you mean 'x'?" for the closest of `known`, or ""."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _leaf_paths(data: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in data.items():
        paths.append(prefix + key)
        if isinstance(value, dict):
            paths.extend(_leaf_paths(value, prefix + key + "."))
    return paths


def _parse_scalar(text: str) -> Any:
    """Parse the right-hand side of `--set key=value` the way YAML would read it."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    return value


@dataclasses.dataclass
class Config:
    """Base of every vlmoe config: dict/YAML I/O, overrides, validation."""

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], _path: str = "") -> C:
        """Build from a plain mapping; unknown keys and ill-typed values raise ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError(f"{_path or cls.__name__}: expected a mapping, got {data!r}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            where = _path or cls.__name__
            raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(fields)}")
        kwargs = {
            name: _coerce(value, hints[name], f"{_path}.{name}" if _path else name)
            for name, value in data.items()
        }
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON/YAML-serializable mapping (tuples become lists)."""

        def plain(v: Any) -> Any:
            if isinstance(v, Config):
                return v.to_dict()
            if isinstance(v, list | tuple):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_yaml(cls: type[C], path: str | Path) -> C:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    def replace(self: C, **changes: Any) -> C:
        """A copy with some top-level fields changed (validated again)."""
        return self.from_dict({**self.to_dict(), **changes})

    def find(self, name: str) -> Any:
        """The value of field `name` anywhere in this config (first found, depth first), or
        None."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == name:
                return value
            if isinstance(value, Config):
                found = value.find(name)
                if found is not None:
                    return found
        return None

    def resolve_key(self, key: str) -> str:
        """A dotted key as it is, or the dotted path of the one field named `key` anywhere in
        the config (`num_classes` -> `transformer.num_classes`); ConfigError otherwise."""
        data = self.to_dict()
        if "." in key or key in data:
            return key
        paths = _leaf_paths(data)
        matches = [p for p in paths if p.rsplit(".", 1)[-1] == key]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise ConfigError(
                f"override {key!r} is ambiguous: it matches {matches}; use the dotted key"
            )
        leaves = {p.rsplit(".", 1)[-1] for p in paths}
        raise ConfigError(f"override {key!r} is unknown{suggest(key, sorted(leaves))}")

    def with_overrides(self: C, overrides: list[str] | dict[str, Any]) -> C:
        """Apply `a.b.c=value` overrides (strings, read by `parse_override`) or a
        {key: value} mapping. A key is dotted, or a bare field name that names exactly one
        field anywhere (`resolve_key`). Values are checked against the field's type; an
        unknown key raises ConfigError naming it, with the closest known key."""
        if isinstance(overrides, dict):
            items = list(overrides.items())
        else:
            items = [parse_override(text) for text in overrides]
        data = self.to_dict()
        for key, value in items:
            key = self.resolve_key(key)
            node = data
            parts = key.split(".")
            for i, part in enumerate(parts):
                if not isinstance(node, dict) or part not in node:
                    where = ".".join(parts[: i + 1])
                    known = (
                        [".".join([*parts[:i], k]) for k in node] if isinstance(node, dict) else []
                    )
                    raise ConfigError(
                        f"override {key!r}: unknown key {where!r}{suggest(where, known)}"
                    )
                if i == len(parts) - 1:
                    node[part] = value
                else:
                    if node[part] is None:
                        raise ConfigError(f"override {key!r}: {part!r} is not set (None)")
                    node = node[part]
        return self.from_dict(data)


@dataclasses.dataclass
class MoEConfig(Config):
    """One sparse MoE feed-forward layer (router + dispatch + experts).

    Sizes: `dim` is the model width, `hidden_dim` each expert's hidden width (free of the dense
    FFN's size, so fine-grained experts are just a smaller `hidden_dim`).

    Routing pools: with `expert_groups="none"` every token may reach every routed expert (LIMoE,
    MoE-LLaVA). With `"modality"` (VL-MoE), the first `num_experts - num_cross_modal_experts`
    experts are split evenly into one group per modality (image = 0, text = 1) and the last
    `num_cross_modal_experts` are reachable by every modality; a token can never reach another
    modality's group. `num_shared_experts` always-on experts (DeepSeekMoE) run on every token.
    """

    dim: int = 64
    hidden_dim: int = 128
    num_experts: int = 8
    top_k: int = 2
    activation: Literal["swiglu", "gelu"] = "swiglu"
    router: Literal["topk", "expert_choice", "soft"] = "topk"
    score_func: Literal["softmax", "sigmoid"] = "softmax"
    renormalize: bool = True
    # Training-time router noise: multiplicative input jitter (Switch) or noisy top-k gating
    # (Shazeer et al. 2017). Off at eval.
    router_noise: Literal["none", "jitter", "gaussian"] = "none"
    router_noise_eps: float = 1e-2
    # Aux-loss-free balancing (DeepSeek-V3): a per-expert bias added for selection only.
    balance_bias: bool = False
    balance_bias_rate: float = 1e-3
    # None = dropless. Otherwise capacity per expert = ceil(capacity_factor * T * k / E).
    capacity_factor: float | None = None
    drop_policy: Literal["position", "score"] = "score"
    # Expert choice: each expert takes ceil(capacity * T / E) tokens (Zhou et al. 2022).
    expert_choice_capacity: float = 2.0
    # Soft MoE: slots per expert (Puigcerver et al. 2023).
    slots_per_expert: int = 1
    expert_groups: Literal["none", "modality"] = "none"
    num_modalities: int = 2
    num_cross_modal_experts: int = 0
    num_shared_experts: int = 0
    shared_hidden_dim: int | None = None  # defaults to hidden_dim per shared expert
    shared_expert_gate: bool = False  # Qwen2-MoE: sigmoid gate on the shared experts' output
    backend: Literal["auto", "loop", "grouped_mm", "bmm"] = "auto"

    def __post_init__(self) -> None:
        for name in ("dim", "hidden_dim", "num_experts", "top_k", "slots_per_expert"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 1, f"moe.{name} must be >= 1, got {value!r}")
        check(
            self.top_k <= self.num_experts,
            f"moe.top_k={self.top_k} must be <= moe.num_experts={self.num_experts}",
        )
        check(
            self.router_noise_eps >= 0,
            f"moe.router_noise_eps must be >= 0, got {self.router_noise_eps}",
        )
        check(
            self.balance_bias_rate >= 0,
            f"moe.balance_bias_rate must be >= 0, got {self.balance_bias_rate}",
        )
        if self.capacity_factor is not None:
            check(
                self.capacity_factor > 0,
                f"moe.capacity_factor must be > 0 or null (dropless), got {self.capacity_factor}",
            )
        check(
            self.expert_choice_capacity > 0,
            f"moe.expert_choice_capacity must be > 0, got {self.expert_choice_capacity}",
        )
        check(
            self.num_shared_experts >= 0,
            f"moe.num_shared_experts must be >= 0, got {self.num_shared_experts}",
        )
        if self.shared_hidden_dim is not None:
            check(
                self.shared_hidden_dim >= 1,
                f"moe.shared_hidden_dim must be >= 1, got {self.shared_hidden_dim}",
            )
        check(
            not self.shared_expert_gate or self.num_shared_experts > 0,
            "moe.shared_expert_gate needs moe.num_shared_experts > 0",
        )
        if self.expert_groups == "modality":
            check(
                self.router == "topk",
                f"moe.expert_groups='modality' needs router='topk', got {self.router!r}",
            )
            check(
                self.num_modalities >= 1,
                f"moe.num_modalities must be >= 1, got {self.num_modalities}",
            )
            own = self.num_experts - self.num_cross_modal_experts
            check(
                0 <= self.num_cross_modal_experts <= self.num_experts
                and own % self.num_modalities == 0,
                f"moe.num_experts - moe.num_cross_modal_experts = {own} must split evenly into "
                f"{self.num_modalities} modality groups",
            )
            reachable = own // self.num_modalities + self.num_cross_modal_experts
            check(
                self.top_k <= reachable,
                f"moe.top_k={self.top_k} exceeds the {reachable} experts each modality can reach",
            )
        if self.router != "topk":
            check(
                not self.balance_bias, f"moe.balance_bias needs router='topk', got {self.router!r}"
            )
            check(self.capacity_factor is None, "moe.capacity_factor applies to router='topk' only")

    @property
    def experts_per_token(self) -> int:
        """Routed experts a token activates on average (for active-parameter counts)."""
        if self.router == "soft":
            return self.num_experts * self.slots_per_expert  # every slot mixes all tokens
        if self.router == "expert_choice":
            return round(self.expert_choice_capacity)
        return self.top_k
