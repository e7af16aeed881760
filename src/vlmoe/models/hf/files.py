"""Reading and writing Hugging Face model directories: `config.json` plus safetensors weights,
one `model.safetensors` or shards listed in `model.safetensors.index.json`.

Weights are read with safetensors only. A directory that holds only PyTorch pickles
(`pytorch_model.bin`, `*.pt`, ...) is refused without opening them: unpickling runs arbitrary
code. Every problem is one `HFImportError` naming the file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from vlmoe.io import CheckpointError, load_safetensors, save_safetensors, write_text_atomic

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class HFImportError(CheckpointError):
    """A Hugging Face directory that vlmoe cannot import (or a model it cannot export)."""


def read_config(directory: str | Path) -> dict[str, Any]:
    """`directory/config.json` as a dict, with a clear error when absent or malformed."""
    directory = Path(directory)
    if not directory.is_dir():
        raise HFImportError(f"{directory}: not a directory")
    path = directory / CONFIG
    if not path.is_file():
        raise HFImportError(
            f"{path}: not found (a Hugging Face model directory holds {CONFIG} and {WEIGHTS})"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HFImportError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise HFImportError(f"{path}: expected a JSON object with a 'model_type' string")
    return data


def _refuse_pickles(directory: Path, names: list[str]) -> None:
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise HFImportError(
            f"{directory}: weights {pickles} are PyTorch pickle files, which vlmoe never loads "
            "(unpickling can run arbitrary code); convert them to safetensors first"
        )


def weight_files(directory: str | Path) -> list[Path]:
    """The safetensors files holding `directory`'s weights (one, or the index's shards)."""
    directory = Path(directory)
    single, index = directory / WEIGHTS, directory / INDEX
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise HFImportError(f"{index}: not a valid safetensors index ({e!r})") from None
        _refuse_pickles(index, names)
        missing = [n for n in names if not (directory / n).is_file()]
        if missing:
            raise HFImportError(f"{index}: shard file(s) {missing} not found")
        return [directory / n for n in names]
    _refuse_pickles(directory, sorted(p.name for p in directory.iterdir()))
    raise HFImportError(f"{directory}: no {WEIGHTS} or {INDEX} found")


def load_tensors(directory: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of `directory`'s safetensors weights, by name."""
    tensors: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        try:
            part = load_safetensors(path)
        except CheckpointError as e:  # names the file: truncated or corrupt
            raise HFImportError(str(e)) from None
        clash = sorted(set(part) & set(tensors))
        if clash:
            raise HFImportError(f"{path}: tensor(s) {clash[:5]} also appear in another shard")
        tensors.update(part)
    return tensors


def save_directory(
    directory: str | Path,
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    max_shard_bytes: int | None = None,
) -> Path:
    """Write config.json and the weights (sharded with an index past `max_shard_bytes`),
    each file atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    shards = _shard(tensors, max_shard_bytes)
    if len(shards) == 1:
        save_safetensors(shards[0], directory / WEIGHTS, {"format": "pt"})
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        for name, shard in zip(names, shards, strict=True):
            save_safetensors(shard, directory / name, {"format": "pt"})
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
            "weight_map": {k: name for name, shard in zip(names, shards) for k in shard},
        }
        write_text_atomic(directory / INDEX, json.dumps(index, indent=2) + "\n")
    write_text_atomic(directory / CONFIG, json.dumps(config, indent=2) + "\n")
    return directory


def _shard(tensors: dict[str, torch.Tensor], limit: int | None) -> list[dict[str, torch.Tensor]]:
    if not limit:
        return [tensors]
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += nbytes
    return shards


def parse_size(text: str) -> int:
    """'2GB', '500MB', '10KB' or a byte count -> bytes (as transformers' `max_shard_size`)."""
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    t = text.strip().upper()
    for unit, factor in sorted(units.items(), key=lambda u: -len(u[0])):
        if t.endswith(unit):
            value = float(t[: -len(unit)])
            return int(math.floor(value * factor))
    return int(t)
