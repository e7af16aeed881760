"""Run named evaluators on a model and write their results to `eval.json`.

Results are one flat mapping `"<evaluator>/<metric>" -> value` (numbers, or lists for
per-expert counts), written atomically as JSON, together with the time each evaluator took.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmoe.eval.common import Evaluator
from vlmoe.io import write_json_atomic

logger = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    """A JSON-friendly copy: tensors to numbers/lists, non-finite floats to None."""
    if isinstance(value, torch.Tensor | np.ndarray | np.generic):
        value = value.tolist()  # a Python number for 0-d, nested lists otherwise
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def run_evaluators(model: torch.nn.Module, evaluators: Mapping[str, Evaluator]) -> dict[str, Any]:
    """Run each evaluator in eval mode and collect `{"<name>/<metric>": value}`.

    The model's train/eval mode is restored afterwards. Timings are added as
    `"<name>/seconds"`.
    """
    was_training = model.training
    model.eval()
    results: dict[str, Any] = {}
    try:
        for name, evaluator in evaluators.items():
            start = time.perf_counter()
            for metric, value in evaluator.run(model):
                results[f"{name}/{metric}"] = _plain(value)
            results[f"{name}/seconds"] = round(time.perf_counter() - start, 3)
            logger.info("eval %s done in %.1fs", name, results[f"{name}/seconds"])
    finally:
        model.train(was_training)
    return results


def write_eval_json(results: Mapping[str, Any], path: str | Path) -> Path:
    """Write results as indented JSON, atomically (`vlmoe.io`: temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(path, _plain(dict(results)))


def evaluate(
    model: torch.nn.Module,
    evaluators: Mapping[str, Evaluator],
    out_path: str | Path | None = None,
) -> dict[str, Any]:
    """`run_evaluators`, then write `eval.json` to `out_path` when given."""
    results = run_evaluators(model, evaluators)
    if out_path is not None:
        write_eval_json(results, out_path)
    return results
