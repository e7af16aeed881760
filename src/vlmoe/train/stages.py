"""Freeze and unfreeze model components by name, for staged training (MoE-LLaVA).

MoE-LLaVA (Lin et al. 2024) trains in three stages: the projector alone, then everything
(dense), then, after upcycling the FFNs into experts, only the MoE layers. A stage lists the
components that train (`StageConfig.trainable`); everything else is frozen.

A name is one of the models' components (`vlmoe.models.freeze`: "moe", "experts", "routers",
"all", or a module path such as "projector" or "lm.embed"); otherwise a pattern, which matches a
parameter when it equals one of the dotted parts of its name
(`"projector"` matches `projector.fc.weight`, `"router"` matches
`lm.blocks.3.moe.router.proj.weight`), a dotted prefix of it, or matches the whole name with
fnmatch (`"lm.blocks.*.moe.*"`); `"*"` matches everything.
"""

from __future__ import annotations

import fnmatch
import logging

from torch import nn

from vlmoe.models.freeze import GROUPS, select_modules

log = logging.getLogger(__name__)


def matches(name: str, pattern: str) -> bool:
    if pattern == "*" or fnmatch.fnmatchcase(name, pattern):
        return True
    parts = name.split(".")
    if pattern in parts:
        return True
    return name.startswith(pattern + ".")


def _selected(model: nn.Module, pattern: str) -> set[int]:
    """ids of the parameters a component name or pattern stands for."""
    try:  # the models' component names: "moe", "experts", "routers", module paths
        if pattern in GROUPS or pattern in dict(model.named_modules()):
            return {id(p) for m in select_modules(model, [pattern]) for p in m.parameters()}
    except ImportError:
        pass
    return {id(p) for name, p in model.named_parameters() if matches(name, pattern)}


def set_trainable(model: nn.Module, trainable: list[str]) -> tuple[int, int]:
    """Train the parameters matching any pattern, freeze the rest.

    Returns (trainable, total) parameter counts. Raises ValueError naming a pattern that
    matches no parameter (a typo would otherwise freeze the whole model silently).
    """
    chosen: set[int] = set()
    for pattern in trainable:
        hit = _selected(model, pattern)
        if not hit:
            raise ValueError(
                f"trainable pattern {pattern!r} matches no parameter of {type(model).__name__}"
            )
        chosen |= hit
    n_train = n_total = 0
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
        n_total += p.numel()
        n_train += p.numel() if id(p) in chosen else 0
    log.info("trainable parameters: %d of %d (%s)", n_train, n_total, ", ".join(trainable))
    return n_train, n_total
