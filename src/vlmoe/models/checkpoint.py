"""Hugging Face-layout model directories: `config.json` + `model.safetensors` (+ `tokenizer.json`).

Files are written atomically (temporary name in the same directory, fsync, `os.replace`), so a
crash never leaves a half-written checkpoint under the real name. Loading never unpickles:
weights come from safetensors, the config from JSON, and each problem (a missing file, an
unknown architecture, an invalid config value, a missing or unexpected tensor, a shape mismatch)
raises one `CheckpointError` that names it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vlmoe.config import ConfigError
from vlmoe.data.tokenizer import Tokenizer

if TYPE_CHECKING:
    from vlmoe.models.base import PretrainedModel

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.json"
FORMAT_VERSION = 1
_META_KEYS = ("architecture", "format_version", "vlmoe_version")


def _version() -> str:
    try:
        return importlib.metadata.version("vlmoe")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class CheckpointError(ValueError):
    """A model directory is missing a file or does not match the model it describes."""


@contextlib.contextmanager
def _atomic_path(path: Path):
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable where the OS allows it
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_text_atomic(path: Path, text: str) -> None:
    with _atomic_path(path) as tmp:
        tmp.write_text(text)


def save_pretrained(model: PretrainedModel, directory: str | Path, tokenizer: Any = None) -> Path:
    """Write `model` (and `tokenizer`, or the one attached as `model.tokenizer`) to `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "architecture": model.architecture,
        "format_version": FORMAT_VERSION,
        "vlmoe_version": _version(),
        **model.config.to_dict(),
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with _atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "architecture": model.architecture})
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is not None:
        check_tokenizer_fits(tokenizer, model.config, f"saving to {directory}")
        save_tokenizer(tokenizer, directory)
    write_text_atomic(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    log.info("saved %s model to %s", model.architecture, directory)
    return directory


def read_config(directory: str | Path) -> tuple[str, Any]:
    """(architecture, validated config) from `directory/config.json`."""
    from vlmoe.models.base import architectures  # base imports this module: import at call

    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{path}: not found (a model directory holds {CONFIG_NAME} and {WEIGHTS_NAME})"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    arch = data.get("architecture")
    known = architectures()
    if arch not in known:
        raise CheckpointError(
            f"{path}: unknown architecture {arch!r}; known architectures: {sorted(known)}"
        )
    version = data.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {version!r} is not supported (expected {FORMAT_VERSION})"
        )
    fields = {k: v for k, v in data.items() if k not in _META_KEYS}
    try:
        config = known[arch].config_class.from_dict(fields)
    except ConfigError as e:
        raise CheckpointError(f"{path}: invalid {arch} config: {e}") from None
    return arch, config


def load_weights(model: torch.nn.Module, directory: str | Path) -> None:
    """Load `directory/model.safetensors` into `model`, checking names and shapes first."""
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise CheckpointError(
            f"{path}: missing tensor(s) {missing[:10]}{' ...' if len(missing) > 10 else ''}"
        )
    if unexpected:
        raise CheckpointError(
            f"{path}: unexpected tensor(s) {unexpected[:10]}"
            f"{' ...' if len(unexpected) > 10 else ''} "
            "(the checkpoint does not match its config.json)"
        )
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                f"but the model expects {tuple(expected[name].shape)}"
            )
    model.load_state_dict(tensors, strict=True)


def _is_vlmoe_tokenizer(tokenizer: Any) -> bool:
    return isinstance(tokenizer, Tokenizer)


def save_tokenizer(tokenizer: Any, directory: Path) -> None:
    """Save any object with `save(path)` as `directory/tokenizer.json`, atomically.

    A `vlmoe.data.tokenizer.Tokenizer` saves into a folder (tokenizer.json and its
    tokenizer_config.json naming the special tokens); other objects get a `.json` file path.
    Either way the files are written in a temporary folder beside, fsynced, then renamed.
    """
    tmp_dir = Path(tempfile.mkdtemp(dir=directory, prefix=".tokenizer."))
    try:
        tokenizer.save(str(tmp_dir if _is_vlmoe_tokenizer(tokenizer) else tmp_dir / TOKENIZER_NAME))
        if not (tmp_dir / TOKENIZER_NAME).is_file():
            raise CheckpointError(f"{type(tokenizer).__name__}.save did not write {TOKENIZER_NAME}")
        for file in sorted(tmp_dir.iterdir()):
            with open(file, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(file, directory / file.name)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def load_tokenizer(directory: str | Path) -> Any:
    """The `vlmoe.data.tokenizer.Tokenizer` saved in `directory`, or None."""
    path = Path(directory) / TOKENIZER_NAME
    if not path.is_file():
        return None
    try:
        return Tokenizer.load(directory)
    except ValueError as e:  # vlmoe.data.DataError names the file
        raise CheckpointError(str(e)) from None


def _vocab_size(tokenizer: Any) -> int | None:
    """Token count of a vlmoe or Hugging Face `tokenizers` tokenizer (None if unknown)."""
    size = getattr(tokenizer, "vocab_size", None)
    if isinstance(size, int):
        return size
    get = getattr(tokenizer, "get_vocab_size", None)
    return int(get(with_added_tokens=True)) if callable(get) else None


def _config_vocab_size(config: Any) -> int | None:
    """The model's `vocab_size` (a decoder's is under `text`); None for an image-only model."""
    size = getattr(config, "vocab_size", None)
    if size is None and getattr(config, "text", None) is not None:
        size = getattr(config.text, "vocab_size", None)
    return size


def check_tokenizer_fits(tokenizer: Any, config: Any, where: str) -> None:
    """Refuse a tokenizer whose ids reach past the model's embedding table."""
    tokens, vocab = _vocab_size(tokenizer), _config_vocab_size(config)
    if tokens is not None and vocab is not None and tokens > vocab:
        raise CheckpointError(
            f"{where}: the tokenizer has {tokens} tokens but the model's vocab_size={vocab}, so "
            "token ids >= vocab_size would have no embedding; use the tokenizer the model was "
            f"trained with, or build the model with vocab_size >= {tokens}"
        )


def load_model(directory: str | Path, **kwargs: Any) -> PretrainedModel:
    """Build the model `directory/config.json` names and load its weights (and tokenizer)."""
    from vlmoe.models.base import architectures  # base imports this module: import at call

    arch, config = read_config(directory)
    tokenizer = load_tokenizer(directory)
    if tokenizer is not None:
        check_tokenizer_fits(tokenizer, config, str(Path(directory) / TOKENIZER_NAME))
    model = architectures()[arch](config, **kwargs)
    load_weights(model, directory)
    model.tokenizer = tokenizer
    return model
