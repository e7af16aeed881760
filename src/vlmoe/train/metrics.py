"""Run metrics: `metrics.jsonl` (one JSON object a line), TensorBoard when installed, progress bar.

Each line of `metrics.jsonl` is `{"step": int, "split": "train"|"eval", ...scalars}`. On resume the
file is cut back to the checkpoint's step, so a resumed run's file equals an uninterrupted one's.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from vlmoe.io import write_text_atomic

log = logging.getLogger(__name__)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a `metrics.jsonl` (a run directory or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line after a kill
                break
    return out


def _clean(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLogger:
    """Appends records to `run_dir/metrics.jsonl` and mirrors scalars to TensorBoard."""

    def __init__(
        self,
        run_dir: str | Path,
        resume_step: int | None = None,
        tensorboard: Literal["auto", "none"] = "auto",
    ) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            write_text_atomic(self.path, "")
        else:
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            # Atomic: a kill during this rewrite leaves the whole history, never half of it.
            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a")  # noqa: SIM115 - closed by close()
        self._tb = None
        if tensorboard == "auto":
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:
                log.debug("tensorboard is not installed; logging to metrics.jsonl only")

    def log(self, step: int, split: str, values: dict[str, Any]) -> None:
        record = {"step": step, "split": split, **{k: _clean(v) for k, v in values.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("step", "split") and isinstance(v, int | float):
                    self._tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


class ProgressLoader:
    """A loader that shows a tqdm bar over its batches each time it is iterated (evaluation,
    generation), when `mode` allows ("auto": stderr is a terminal); the bar stays on screen."""

    def __init__(
        self, loader: Any, desc: str, mode: Literal["auto", "bar", "none"] = "auto"
    ) -> None:
        self.loader, self.desc = loader, desc
        self.enabled = mode == "bar" or (mode == "auto" and sys.stderr.isatty())

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        if not self.enabled:
            yield from self.loader
            return
        with tqdm(total=len(self.loader), desc=self.desc, unit="batch", leave=True) as bar:
            for batch in self.loader:
                yield batch
                bar.update(1)


class Progress:
    """A tqdm bar over optimizer steps showing loss and throughput; tqdm supplies the ETA."""

    def __init__(
        self,
        total: int,
        initial: int = 0,
        mode: Literal["auto", "bar", "none"] = "auto",
        desc: str = "train",
    ):
        enabled = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self._bar = None
        if enabled:
            self._bar = tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit="step",
                dynamic_ncols=True,
                leave=True,
            )

    @property
    def active(self) -> bool:
        return self._bar is not None

    def update(self, loss: float, examples_per_s: float, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", ex_s=f"{examples_per_s:.0f}", refresh=False)
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
