"""Named model presets (timm / torchtitan style): `register_preset`, `list_presets`,
`preset_config`, `create_model`. Every architecture has `debug` and `small` presets, dense and
MoE (`vlmoe.models.presets`, registered when `vlmoe.models` is imported).

Overrides are dotted config keys (`"transformer.num_layers": 6`) or a bare field name that
names exactly one field anywhere in the config (`vocab_size=300`, `num_classes=5`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vlmoe.config import Config, ConfigError, suggest
from vlmoe.models.base import architectures

if TYPE_CHECKING:
    from vlmoe.models.base import PretrainedModel


@dataclass(frozen=True)
class Preset:
    name: str
    architecture: str
    config: Config
    description: str = ""


_PRESETS: dict[str, Preset] = {}


def register_preset(name: str, architecture: str, config: Config, description: str = "") -> None:
    """Add a preset; re-registering a name replaces it."""
    known = architectures()
    if architecture not in known:
        raise ConfigError(
            f"preset {name!r}: unknown architecture {architecture!r}; known: {sorted(known)}"
        )
    if not isinstance(config, known[architecture].config_class):
        raise ConfigError(
            f"preset {name!r}: a {architecture} preset needs a "
            f"{known[architecture].config_class.__name__}, "
            f"got {type(config).__name__}"
        )
    _PRESETS[name] = Preset(name, architecture, config, description)


def list_presets(architecture: str | None = None) -> list[str]:
    """Preset names, sorted; only those of `architecture` when given."""
    return sorted(
        n for n, p in _PRESETS.items() if architecture is None or p.architecture == architecture
    )


def get_preset(name: str) -> Preset:
    if name not in _PRESETS:
        raise ConfigError(
            f"unknown preset {name!r}{suggest(name, list(_PRESETS))} (see --list-presets)"
        )
    return _PRESETS[name]


def preset_config(name: str, **overrides: Any) -> Config:
    """A fresh copy of the preset's config with `overrides` applied and validated."""
    config = get_preset(name).config
    config = type(config).from_dict(config.to_dict())
    return config.with_overrides(overrides) if overrides else config


def create_model(name: str, **overrides: Any) -> PretrainedModel:
    """Build the model of preset `name`, e.g. `create_model("fusion-small-moe", vocab_size=300)`."""
    preset = get_preset(name)
    return architectures()[preset.architecture](preset_config(name, **overrides))
