"""Atomic file writes and pickle-free safetensors reads: the one way vlmoe puts files on disk.

A file is written under a temporary name beside its destination, fsynced, and renamed over the
destination with `os.replace` (atomic on POSIX), then the directory is fsynced so the rename
survives a power loss (the write-fsync-rename recipe of `rename(2)`). A crash or a full disk
mid-write never leaves a half-written file under the real name.

The temporary file is created with `os.open(..., 0o666)`, so the kernel applies the user's
umask, and that mode is restored before the rename should a writer have replaced the file: the
result has the same mode as any other file the user creates (not the 0600 of `tempfile.mkstemp`).
An OS error while writing (disk full, permission, quota) is re-raised as the same `OSError`
subclass naming the destination file, not the temporary one.

Weights are read with safetensors only, never unpickled. Every problem with a weight file
(missing, unreadable, missing or unexpected tensors, wrong shapes) raises the one
`CheckpointError`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

__all__ = [
    "CheckpointError",
    "atomic_path",
    "check_tensors",
    "fsync_dir",
    "load_safetensors",
    "save_safetensors",
    "write_json_atomic",
    "write_text_atomic",
]


class CheckpointError(ValueError, RuntimeError):
    """A model or checkpoint directory is missing a file, is corrupt, or does not match.

    Derives from both `ValueError` and `RuntimeError` because the two classes it replaces (in
    `vlmoe.models.checkpoint` and `vlmoe.train.checkpoint`) did: existing handlers still catch it.
    """


def fsync_dir(path: str | Path) -> None:
    """Make renames inside `path` durable, where the platform allows opening a directory."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _naming(e: OSError, path: Path) -> OSError:
    """The same kind of OSError, naming the destination `path` instead of a temporary file."""
    if e.errno is None:
        return OSError(f"cannot write {path}: {e}")
    return type(e)(e.errno, f"cannot write {path}: {e.strerror}", str(path))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary path beside `path`; on success fsync it and rename it over `path`.

    The body writes the temporary path with any writer (open, safetensors, PIL). On an exception
    the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        # 0o666 & ~umask, like any file the user creates; O_EXCL: never reuse someone's file.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        mode = stat.S_IMODE(os.stat(tmp).st_mode)
    except OSError as e:
        raise _naming(e, path) from e
    try:
        yield tmp
        # Some writers (safetensors) replace the file with their own 0600 one: restore the mode.
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:
            os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
            raise _naming(e, path) from e
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    """Write `data` as JSON (plus a final newline) to `path` atomically."""
    return write_text_atomic(path, json.dumps(data, indent=indent) + "\n")


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Write `tensors` to a safetensors file at `path` atomically (contiguous CPU copies)."""
    path = Path(path)
    plain = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(plain, str(tmp), metadata=metadata)
    return path


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; `CheckpointError` naming the file when it is missing
    or unreadable. Nothing is unpickled."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def _listed(names: list[str]) -> str:
    return f"{names[:10]}{' ...' if len(names) > 10 else ''}"


def check_tensors(
    path: str | Path,
    tensors: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor | torch.Size | tuple[int, ...]],
) -> None:
    """Raise `CheckpointError` naming `path` unless `tensors` has exactly the names of `expected`
    with the same shapes (`expected` maps names to tensors or shapes, e.g. a `state_dict()`)."""
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise CheckpointError(f"{path}: missing tensor(s) {_listed(missing)}")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"{path}: unexpected tensor(s) {_listed(unexpected)} "
            "(the checkpoint does not match its config.json)"
        )
    for name, tensor in tensors.items():
        want = expected[name]
        want = tuple(want.shape if isinstance(want, torch.Tensor) else want)
        if tuple(tensor.shape) != want:
            raise CheckpointError(
                f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                f"but the model expects {want}"
            )
