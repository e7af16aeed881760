"""Freezing by component, for staged training (MoE-LLaVA, Lin et al. 2024: stage I trains the
projector, stage II everything, stage III only the MoE layers).

A component is a module path (a top-level child like "vision", "projector", "lm", or a deeper
one like "lm.embed"), or one of the groups "moe" (every MoE layer: routers, experts, shared
experts), "experts" (routed and shared experts), "routers" (routers and shared-expert gates),
"all".
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from vlmoe.moe.layer import MoELayer

GROUPS = ("all", "moe", "experts", "routers")


def _group_modules(model: nn.Module, group: str) -> list[nn.Module]:
    if group == "all":
        return [model]
    layers = [m for m in model.modules() if isinstance(m, MoELayer)]
    if group == "moe":
        return layers
    if group == "experts":
        return [
            m for layer in layers for m in (layer.experts, layer.shared_experts) if m is not None
        ]
    return [m for layer in layers for m in (layer.router, layer.shared_gate) if m is not None]


def component_names(model: nn.Module) -> list[str]:
    """The groups and the model's top-level children (`freeze` also takes deeper paths)."""
    return list(GROUPS) + [name for name, _ in model.named_children()]


def select_modules(model: nn.Module, components: Iterable[str]) -> list[nn.Module]:
    """The modules the named components stand for; an unknown name raises ValueError."""
    if isinstance(components, str):
        components = [components]
    modules = dict(model.named_modules())
    out: list[nn.Module] = []
    for name in components:
        if name in GROUPS:
            out.extend(_group_modules(model, name))
        elif name in modules and name:
            out.append(modules[name])
        else:
            raise ValueError(
                f"unknown component {name!r}; expected one of {component_names(model)} "
                "or a module path such as 'lm.embed'"
            )
    return out


def _set(model: nn.Module, components: Iterable[str], requires_grad: bool) -> int:
    count = 0
    for module in select_modules(model, components):
        for p in module.parameters():
            count += p.numel() if p.requires_grad != requires_grad else 0
            p.requires_grad_(requires_grad)
    return count


def freeze(model: nn.Module, components: Iterable[str]) -> int:
    """Stop gradients to the named components; returns how many parameters changed state."""
    return _set(model, components, False)


def unfreeze(model: nn.Module, components: Iterable[str]) -> int:
    """Let gradients reach the named components again; returns how many parameters changed."""
    return _set(model, components, True)


def set_trainable(model: nn.Module, components: Iterable[str]) -> int:
    """Train only the named components (e.g. `["moe"]` for MoE-LLaVA stage III); returns the
    number of trainable parameters."""
    freeze(model, ["all"])
    unfreeze(model, components)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
