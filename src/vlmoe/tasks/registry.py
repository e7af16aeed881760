"""Tasks by name: `register_task` (a class decorator), `get_task`, `task_names`,
`default_task`. A task registered from outside the package (e.g. a user's module imported
before training) is used by `vlmoe train --task NAME` like a built-in one.
"""

from __future__ import annotations

import difflib
from typing import Any

from vlmoe.config import ConfigError

_TASKS: dict[str, type] = {}


def register_task(cls: type) -> type:
    """Register a `Task` subclass under its `name` (re-registering replaces it)."""
    if not getattr(cls, "name", ""):
        raise ValueError(f"{cls.__name__} has no `name`")
    _TASKS[cls.name] = cls
    return cls


def task_names() -> list[str]:
    return sorted(_TASKS)


def get_task(name: str) -> Any:
    """The task class registered as `name`; a ConfigError with a suggestion otherwise."""
    if name not in _TASKS:
        close = difflib.get_close_matches(name, list(_TASKS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown task {name!r}{hint} (known: {task_names()})")
    return _TASKS[name]


def resolve_task(name: str, architecture: str) -> Any:
    """The task class a run trains: `name`, or the architecture's default for "auto"; a
    ConfigError when the task does not fit the architecture."""
    if name == "auto":
        return default_task(architecture)
    cls = get_task(name)
    if architecture not in cls.architectures:
        fits = [n for n, c in sorted(_TASKS.items()) if architecture in c.architectures]
        raise ConfigError(f"task {name!r} does not fit a {architecture} model; it can train {fits}")
    return cls


def default_task(architecture: str) -> Any:
    for cls in _TASKS.values():
        if architecture in cls.default_for:
            return cls
    raise ConfigError(f"no default task for architecture {architecture!r}; set the task")
