"""vlmoe: sparse Mixture-of-Experts vision-language models in PyTorch.

The model entry points are exported here lazily (importing `vlmoe` stays cheap):
`create_model`, `list_presets`, `register_preset`, `load_model`, `count_parameters`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "create_model": "vlmoe.models",
    "list_presets": "vlmoe.models",
    "register_preset": "vlmoe.models",
    "preset_config": "vlmoe.models",
    "load_model": "vlmoe.models",
    "count_parameters": "vlmoe.models",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlmoe' has no attribute {name!r}")
