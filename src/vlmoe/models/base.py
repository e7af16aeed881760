"""`PretrainedModel`: what every vlmoe model shares — its config, checkpoint I/O, the
architecture name written into `config.json`, and parameter counts (total and active)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from vlmoe.config import Config
from vlmoe.models import checkpoint
from vlmoe.moe.layer import MoELayer

_ARCHITECTURES: dict[str, type[PretrainedModel]] = {}


def architectures() -> dict[str, type[PretrainedModel]]:
    """Architecture name -> model class (importing `vlmoe.models` defines the built-in ones)."""
    return dict(_ARCHITECTURES)


class PretrainedModel(nn.Module):
    """Base class of vlmoe models. Subclasses set `architecture` and `config_class`."""

    architecture: ClassVar[str]
    config_class: ClassVar[type[Config]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "architecture" in cls.__dict__:
            _ARCHITECTURES[cls.architecture] = cls

    def __init__(self, config: Config) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, "
                f"got {type(config).__name__}"
            )
        self.config = config
        self.tokenizer: Any = None  # attached tokenizer, saved as tokenizer.json

    def save_pretrained(self, directory: str | Path, tokenizer: Any = None) -> Path:
        """Write config.json + model.safetensors (+ tokenizer.json) into `directory`."""
        return checkpoint.save_pretrained(self, directory, tokenizer)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs: Any) -> PretrainedModel:
        """Load a model saved by `save_pretrained`; raises `CheckpointError` on any mismatch."""
        arch, _ = checkpoint.read_config(directory)
        if arch != cls.architecture and cls is not PretrainedModel:
            raise checkpoint.CheckpointError(
                f"{Path(directory) / checkpoint.CONFIG_NAME}: architecture is {arch!r}, "
                f"but {cls.__name__}.from_pretrained loads {cls.architecture!r} "
                "(use vlmoe.models.load_model to load any architecture)"
            )
        return checkpoint.load_model(directory, **kwargs)

    def num_parameters(self) -> tuple[int, int]:
        """(total, active per token) parameter counts; see `count_parameters`."""
        return count_parameters(self)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, active) parameters. Active counts each MoE layer's routed experts at the
    fraction a token uses (experts_per_token / num_experts); routers, shared experts and dense
    layers count in full."""

    total = sum(p.numel() for p in model.parameters())
    inactive = 0.0
    for layer in model.modules():
        if isinstance(layer, MoELayer):
            cfg = layer.cfg
            expert_params = sum(p.numel() for p in layer.experts.parameters())
            frac = min(1.0, cfg.experts_per_token / cfg.num_experts)
            inactive += expert_params * (1.0 - frac)
    return total, int(round(total - inactive))
