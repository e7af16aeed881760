"""Errors for bad input data, and the record kept when the ``skip`` policy drops samples.

Every problem with a user's file becomes a :class:`DataError` whose message names the file and,
where there is one, the manifest line or JSON entry. With ``on_error="skip"`` a loader catches
those errors, counts them in an :class:`ErrorReport` and logs a summary, so nothing is lost
silently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

# What a dataset does with a bad sample: "raise" (stop, naming the file and line) or "skip" (drop
# exactly that sample before the dataset is used, count it once in `ErrorReport`, warn once).
OnError = Literal["raise", "skip"]

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """A bad input file or record; the message names the file (and line where known)."""

    def __init__(self, message: str, path: str | Path | None = None, where: str | None = None):
        self.path = None if path is None else str(path)
        self.where = where
        self.reason = message
        prefix = ""
        if self.path is not None:
            prefix = self.path + (f" ({where})" if where else "") + ": "
        elif where:
            prefix = f"{where}: "
        super().__init__(prefix + message)


def check_on_error(on_error: str) -> OnError:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    return on_error  # type: ignore[return-value]


@dataclass
class ErrorReport:
    """Count of skipped samples and the first reasons, kept by loaders under ``on_error="skip"``.

    Attributes:
        skipped: how many samples were dropped.
        reasons: the messages of the first ``max_reasons`` dropped samples.
    """

    skipped: int = 0
    reasons: list[str] = field(default_factory=list)
    max_reasons: int = 10

    def add(self, error: Exception) -> None:
        self.skipped += 1
        if len(self.reasons) < self.max_reasons:
            self.reasons.append(str(error))

    def handle(self, error: DataError, on_error: OnError) -> None:
        """Raise ``error`` under ``raise``; count it under ``skip``."""
        if on_error == "raise":
            raise error
        logger.debug("skipping sample: %s", error)
        self.add(error)

    def log_summary(self, source: str, total: int) -> None:
        """Log one warning if anything was skipped."""
        if self.skipped:
            logger.warning(
                "%s: skipped %d of %d samples; first reasons:\n  %s",
                source,
                self.skipped,
                total,
                "\n  ".join(self.reasons),
            )

    def __bool__(self) -> bool:
        return self.skipped > 0
