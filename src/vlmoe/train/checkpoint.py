"""Atomic, pickle-free training checkpoints and exact resume.

A checkpoint is a directory `checkpoints/step_XXXXXXX/` holding

- the model as a Hugging Face shaped model directory (`config.json` + `model.safetensors`,
  via the model's `save_pretrained` when it has one), so any checkpoint is also a model that
  `vlmoe predict` / `vlmoe eval` can load;
- `optimizer.safetensors` + `optimizer.json`: optimizer tensors and hyper-parameters;
- `rng.safetensors`: torch (CPU and CUDA) and numpy generator states;
- `trainer_state.json`: step, data order position, Python's RNG state, metrics so far;
- `ema.safetensors` when the run keeps EMA weights (`vlmoe.train.ema`).

Nothing is pickled, so loading never executes code from the file. A checkpoint is written into a
temporary directory, every file is fsynced, and the directory is renamed into place with
`os.replace` (atomic on POSIX): a crash or kill mid-write leaves the previous checkpoint intact
and only a `.tmp-*` directory behind, which is ignored and cleaned up later. The last
`keep_last` checkpoints are kept.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, save_model
from torch import nn

from vlmoe.io import CheckpointError, write_json_atomic  # noqa: F401 - re-exported names
from vlmoe.io import fsync_dir as _fsync_dir

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d+)$")
MODEL_WEIGHTS = "model.safetensors"


# ----------------------------------------------------------------------------- file helpers


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


# ----------------------------------------------------------------------------- state <-> files


def save_model_weights(model: nn.Module, directory: Path) -> None:
    """Write the model into `directory` (its own `save_pretrained` when it has one)."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(directory)
    else:
        save_model(model, str(directory / MODEL_WEIGHTS))


def save_weights_file(model: nn.Module, path: Path) -> None:
    """Write `model`'s weights to one safetensors file (tied weights stored once)."""
    save_model(model, str(path))


def load_model_weights(
    model: nn.Module, directory: str | Path, filename: str = MODEL_WEIGHTS
) -> None:
    """Load `filename` from `directory` into `model`, strictly (names and shapes)."""
    path = Path(directory) / filename
    if not path.is_file():
        raise CheckpointError(f"{path}: missing model weights")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors file ({e})") from None
    own = model.state_dict()
    # Tied weights are stored once; fill the other names from the stored twin.
    missing = sorted(set(own) - set(state))
    for name in list(missing):
        ptr = own[name].data_ptr()
        twin = next((n for n in state if n in own and own[n].data_ptr() == ptr), None)
        if twin is not None:
            state[name] = state[twin]
            missing.remove(name)
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the model "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(tensor.shape)} in the checkpoint but "
                f"{tuple(own[name].shape)} in the model"
            )
    model.load_state_dict(state, strict=True)


def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in sd["param_groups"]
    ]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state of every RNG a training step draws from: (tensors, JSON-able values)."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, pystate, gauss = random.getstate()
    values = {
        "numpy": [kind, int(pos), int(has_gauss), float(cached)],
        "python": [version, list(pystate), gauss],
    }
    return tensors, values


def restore_rng(tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    kind, pos, has_gauss, cached = values["numpy"]
    np.random.set_state(
        (kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached)
    )
    version, pystate, gauss = values["python"]
    random.setstate((version, tuple(pystate), gauss))


# ----------------------------------------------------------------------------- save / find / load


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary directories are skipped)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _STEP_DIR.match(p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    trainer_state: dict[str, Any],
    keep_last: int = 2,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write checkpoint `step` atomically and prune to the last `keep_last`. Returns its path.

    `extra(directory)` may add files (e.g. task metadata) before the directory is sealed.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # left by a crash mid-write
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp-step_{step:07d}-{os.getpid()}"
    tmp.mkdir()
    save_model_weights(model, tmp)
    if optimizer is not None:
        tensors, meta = _optimizer_to_files(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(meta))
    rng_tensors, rng_values = capture_rng()
    save_file(rng_tensors, str(tmp / "rng.safetensors"))
    state = {**trainer_state, "step": step, "rng": rng_values}
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
    if extra is not None:
        extra(tmp)
    for path in tmp.rglob("*"):
        if path.is_file():
            _fsync_file(path)
    _fsync_dir(tmp)
    if final.exists():  # a rerun over an old run directory: move the old one aside first
        trash = root / f".tmp-old-{final.name}-{os.getpid()}"
        os.replace(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in checkpoint_dirs(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    log.info("saved checkpoint %s", final)
    return final


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    path = Path(path) / "trainer_state.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{path.parent}: not a training checkpoint (no trainer_state.json)"
        ) from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupt ({e})") from None


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng_state: bool = True,
) -> dict[str, Any]:
    """Load weights (+ optimizer, + RNG) from a checkpoint directory; return the trainer state."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    state = read_trainer_state(path)
    load_model_weights(model, path)
    if optimizer is not None:
        try:
            tensors = load_file(str(path / "optimizer.safetensors"))
            meta = json.loads((path / "optimizer.json").read_text())
            optimizer.load_state_dict(_optimizer_from_files(tensors, meta))
        except FileNotFoundError as e:
            raise CheckpointError(f"{path}: missing optimizer state ({e.filename})") from None
        except (SafetensorError, json.JSONDecodeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: optimizer state does not match ({e})") from None
    if restore_rng_state:
        try:
            restore_rng(load_file(str(path / "rng.safetensors")), state["rng"])
        except (FileNotFoundError, SafetensorError, KeyError) as e:
            raise CheckpointError(f"{path}: missing or corrupt RNG state ({e})") from None
    return state
