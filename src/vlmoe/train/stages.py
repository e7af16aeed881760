"""Freeze and unfreeze model components by name, for staged training (MoE-LLaVA).

MoE-LLaVA (Lin et al. 2024) trains in three stages: the projector alone, then everything
(dense), then, after upcycling the FFNs into experts, only the MoE layers. A stage lists the
components that train (`StageConfig.trainable`); everything else is frozen.

A pattern matches a parameter when it equals one of the dotted parts of its name
(`"projector"` matches `projector.fc.weight`, `"router"` matches
`lm.blocks.3.moe.router.proj.weight`), a dotted prefix of it, or matches the whole name with
fnmatch (`"lm.blocks.*.moe.*"`); `"*"` matches everything.
"""

from __future__ import annotations

import fnmatch
import logging

from torch import nn

log = logging.getLogger(__name__)


def matches(name: str, pattern: str) -> bool:
    if pattern == "*" or fnmatch.fnmatchcase(name, pattern):
        return True
    parts = name.split(".")
    if pattern in parts:
        return True
    return name.startswith(pattern + ".")


def set_trainable(model: nn.Module, trainable: list[str]) -> tuple[int, int]:
    """Train the parameters matching any pattern, freeze the rest.

    Returns (trainable, total) parameter counts. Raises ValueError naming a pattern that
    matches no parameter (a typo would otherwise freeze the whole model silently).
    """
    used = dict.fromkeys(trainable, False)
    n_train = n_total = 0
    for name, p in model.named_parameters():
        hit = [pat for pat in trainable if matches(name, pat)]
        for pat in hit:
            used[pat] = True
        p.requires_grad_(bool(hit))
        n_total += p.numel()
        n_train += p.numel() if hit else 0
    unused = [pat for pat, ok in used.items() if not ok]
    if unused:
        raise ValueError(f"trainable pattern(s) {unused} match no parameter of {type(model).__name__}")
    log.info("trainable parameters: %d of %d (%s)", n_train, n_total, ", ".join(trainable))
    return n_train, n_total
