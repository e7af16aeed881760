"""PyTorch checkpoint files (`torch.save`) read without unpickling.

`torch.load` runs the pickle virtual machine, which imports and calls whatever the file names:
a crafted `.pth` file runs arbitrary code. This module never does. It walks the pickle opcodes
with `pickletools.genops` (which only decodes them) and interprets a small whitelisted subset:
plain containers and scalars, the memo, `collections.OrderedDict`, and the tensor rebuilders
`torch._utils._rebuild_tensor_v2` / `_rebuild_parameter` over storages of the `torch.*Storage`
dtypes (persistent ids). Any other global (`os.system`, `builtins.eval`, ...) is refused by name
before anything else happens; nothing named in the file is ever imported or called.

Both layouts of `torch.save` are read:

- zip (the default since PyTorch 1.6): `<name>/data.pkl` plus one raw file per storage,
  `<name>/data/<key>`;
- legacy (`_use_new_zipfile_serialization=False`): five things one after the other in one file:
  the magic number, the protocol version and the sys-info dict (three small pickles), the object
  pickle, the pickled list of storage keys, then per storage an 8-byte element count and its
  raw bytes.

Every problem (a refused global, a truncated or corrupt file, an unknown opcode) is one
`TorchFileError` naming the file.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pickletools
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

from vlmoe.io import CheckpointError

__all__ = ["TorchFileError", "load_torch_file"]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
}
_REBUILD_TENSOR = "torch._utils._rebuild_tensor_v2"
_REBUILD_PARAMETER = "torch._utils._rebuild_parameter"
_ORDERED_DICT = "collections.OrderedDict"


class TorchFileError(CheckpointError):
    """A PyTorch file that vlmoe will not or cannot read (refused global, truncated, corrupt)."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


@dataclasses.dataclass(frozen=True)
class _Storage:
    key: str
    dtype: torch.dtype
    numel: int


@dataclasses.dataclass(frozen=True)
class _Global:
    name: str  # one of the whitelisted callables


@dataclasses.dataclass(frozen=True)
class _TensorRef:
    """A tensor to build once the storage bytes are read: `as_strided` over the storage."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    requires_grad: bool


class _Mark:
    pass


_MARK = _Mark()


def _global(name: str) -> Any:
    """The stand-in for a whitelisted global; anything else is refused by name."""
    module, _, attr = name.rpartition(".")
    if module == "torch" and attr in _STORAGE_DTYPES:
        return _StorageType(_STORAGE_DTYPES[attr])
    if name in (_ORDERED_DICT, _REBUILD_TENSOR, _REBUILD_PARAMETER):
        return _Global(name)
    raise TorchFileError(
        f"refuses global {name!r}: only containers, OrderedDict and tensors are read "
        "(nothing in the file is imported or run)"
    )


def _reduce(func: Any, args: Any) -> Any:
    if not isinstance(func, _Global) or not isinstance(args, tuple):
        raise TorchFileError(f"REDUCE of {func!r} is not supported")
    if func.name == _ORDERED_DICT:
        if args not in ((), ([],)):
            raise TorchFileError("OrderedDict with arguments is not supported")
        return collections.OrderedDict()
    if func.name == _REBUILD_PARAMETER:
        if len(args) != 3 or not isinstance(args[0], _TensorRef):
            raise TorchFileError("malformed _rebuild_parameter arguments")
        return dataclasses.replace(args[0], requires_grad=bool(args[1]))
    # _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])
    if len(args) not in (6, 7) or not isinstance(args[0], _Storage):
        raise TorchFileError("malformed _rebuild_tensor_v2 arguments")
    storage, offset, size, stride, requires_grad = args[:5]
    ints = (offset, *size, *stride)
    if not all(isinstance(i, int) and i >= 0 for i in ints) or len(size) != len(stride):
        raise TorchFileError(f"malformed tensor view: offset {offset}, size {size}, {stride=}")
    return _TensorRef(storage, offset, tuple(size), tuple(stride), bool(requires_grad))


def _persistent(pid: Any) -> _Storage:
    # zip: ('storage', type, key, location, numel); legacy adds view_metadata (None).
    if (
        not isinstance(pid, tuple)
        or len(pid) not in (5, 6)
        or pid[0] != "storage"
        or not isinstance(pid[1], _StorageType)
        or not isinstance(pid[2], str)
        or not isinstance(pid[4], int)
    ):
        raise TorchFileError(f"unsupported persistent id {pid!r}")
    if len(pid) == 6 and pid[5] is not None:
        raise TorchFileError("storage views (legacy view_metadata) are not supported")
    return _Storage(pid[2], pid[1].dtype, pid[4])


def _pop_mark(stack: list[Any]) -> list[Any]:
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is _MARK:
            items = stack[i + 1 :]
            del stack[i:]
            return items
    raise TorchFileError("pickle stack has no MARK")


def _build(obj: Any, state: Any) -> None:
    # Only a state dict's `_metadata` (module versions) rides on an OrderedDict; kept as is.
    if not isinstance(obj, collections.OrderedDict) or not isinstance(state, dict):
        raise TorchFileError(f"BUILD on {type(obj).__name__} is not supported")
    if set(state) - {"_metadata"}:
        raise TorchFileError(f"BUILD with attributes {sorted(state)} is not supported")
    if "_metadata" in state:
        obj._metadata = state["_metadata"]  # type: ignore[attr-defined]


_PUSH_ARG = {
    "BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG", "BINFLOAT", "FLOAT",
    "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINBYTES", "BINBYTES",
    "BINBYTES8", "SHORT_BINSTRING", "BINSTRING",
}  # fmt: skip
_PUSH_CONST = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_IGNORED = {"PROTO", "FRAME"}


def _interpret(stream: IO[bytes]) -> Any:
    """Run one pickle (up to STOP) from `stream` through the whitelist; see the module doc."""
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    try:
        for op, arg, _ in pickletools.genops(stream):
            name = op.name
            if name in _IGNORED:
                continue
            if name in _PUSH_ARG:
                stack.append(arg)
            elif name in _PUSH_CONST:
                stack.append(_PUSH_CONST[name])
            elif name == "EMPTY_DICT":
                stack.append({})
            elif name == "EMPTY_LIST":
                stack.append([])
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name == "MARK":
                stack.append(_MARK)
            elif name == "TUPLE":
                stack.append(tuple(_pop_mark(stack)))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items = tuple(stack[-n:])
                del stack[-n:]
                stack.append(items)
            elif name == "LIST":
                stack.append(_pop_mark(stack))
            elif name == "DICT":
                items = _pop_mark(stack)
                stack.append(dict(zip(items[::2], items[1::2], strict=True)))
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(arg)] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                stack.append(memo[int(arg)])
            elif name == "SETITEM":
                value, key = stack.pop(), stack.pop()
                _setitems(stack[-1], [key, value])
            elif name == "SETITEMS":
                items = _pop_mark(stack)
                _setitems(stack[-1], items)
            elif name == "APPEND":
                _appends(stack[-1], [stack.pop()])
            elif name == "APPENDS":
                items = _pop_mark(stack)
                _appends(stack[-1], items)
            elif name == "GLOBAL":
                stack.append(_global(arg.replace(" ", ".")))
            elif name == "STACK_GLOBAL":
                attr, module = stack.pop(), stack.pop()
                stack.append(_global(f"{module}.{attr}"))
            elif name == "REDUCE":
                args = stack.pop()
                stack.append(_reduce(stack.pop(), args))
            elif name == "BUILD":
                state = stack.pop()
                _build(stack[-1], state)
            elif name == "BINPERSID":
                stack.append(_persistent(stack.pop()))
            elif name == "STOP":
                if len(stack) != 1:
                    raise TorchFileError(f"pickle ends with {len(stack)} objects on the stack")
                return stack[0]
            else:
                raise TorchFileError(f"pickle opcode {name} is not supported")
    except TorchFileError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, struct.error) as e:
        # genops: truncated data or an unknown opcode; ours: an empty stack or memo miss.
        raise TorchFileError(f"corrupt or truncated pickle ({e})") from None
    raise TorchFileError("pickle ended without STOP")


def _setitems(target: Any, items: list[Any]) -> None:
    if not isinstance(target, dict) or len(items) % 2:
        raise TorchFileError("SETITEM(S) on something other than a dict")
    for key, value in zip(items[::2], items[1::2], strict=True):
        if not isinstance(key, str | int | float | bool | tuple | type(None)):
            raise TorchFileError(f"dict key of type {type(key).__name__} is not supported")
        target[key] = value


def _appends(target: Any, items: list[Any]) -> None:
    if not isinstance(target, list):
        raise TorchFileError("APPEND(S) on something other than a list")
    target.extend(items)


def _storages(obj: Any) -> Iterator[_Storage]:
    if isinstance(obj, _TensorRef):
        yield obj.storage
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _storages(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _storages(v)


def _resolve(obj: Any, flat: dict[str, torch.Tensor]) -> Any:
    """Replace every `_TensorRef` by its tensor: a view of its storage's flat tensor, so that
    tensors sharing a storage share it after loading too."""
    if isinstance(obj, _TensorRef):
        data = flat[obj.storage.key]
        if data.dtype != obj.storage.dtype:
            raise TorchFileError(f"storage {obj.storage.key} is read with two dtypes")
        span = sum((s - 1) * st for s, st in zip(obj.size, obj.stride, strict=True))
        if 0 not in obj.size and obj.offset + span >= data.numel():
            raise TorchFileError(
                f"tensor view (offset {obj.offset}, size {obj.size}, stride {obj.stride}) "
                f"reaches past its storage of {data.numel()} elements"
            )
        tensor = data.as_strided(obj.size, obj.stride, obj.offset)
        return tensor.requires_grad_(obj.requires_grad) if tensor.is_floating_point() else tensor
    if isinstance(obj, collections.OrderedDict):
        out = collections.OrderedDict((k, _resolve(v, flat)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(obj, dict):
        return {k: _resolve(v, flat) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v, flat) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v, flat) for v in obj)
    return obj


def _tensor_from_bytes(raw: bytes, storage: _Storage) -> torch.Tensor:
    itemsize = torch.empty((), dtype=storage.dtype).element_size()
    if len(raw) != storage.numel * itemsize:
        raise TorchFileError(
            f"storage {storage.key} has {len(raw)} bytes, expected "
            f"{storage.numel} x {itemsize} (truncated?)"
        )
    if not raw:
        return torch.empty(0, dtype=storage.dtype)
    return torch.frombuffer(bytearray(raw), dtype=storage.dtype)


def _unique(obj: Any) -> dict[str, _Storage]:
    found: dict[str, _Storage] = {}
    for s in _storages(obj):
        if found.setdefault(s.key, s) != s:
            raise TorchFileError(f"storage {s.key} is described two ways")
    return found


def _load_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as zf:
        pickles = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise TorchFileError("a zip without exactly one <name>/data.pkl is not a torch file")
        prefix = pickles[0][: -len("data.pkl")]
        if prefix + "byteorder" in zf.namelist() and zf.read(prefix + "byteorder") != b"little":
            raise TorchFileError("big-endian tensor data is not supported")
        obj = _interpret(io.BytesIO(zf.read(pickles[0])))
        flat = {}
        for key, storage in _unique(obj).items():
            try:
                raw = zf.read(f"{prefix}data/{key}")
            except KeyError:
                raise TorchFileError(f"storage {prefix}data/{key} is missing") from None
            flat[key] = _tensor_from_bytes(raw, storage)
    return _resolve(obj, flat)


def _load_legacy(f: IO[bytes], size: int) -> Any:
    if _interpret(f) != MAGIC_NUMBER:
        raise TorchFileError("not a PyTorch file (no magic number)")
    if _interpret(f) != PROTOCOL_VERSION:
        raise TorchFileError(f"legacy protocol version other than {PROTOCOL_VERSION}")
    sys_info = _interpret(f)
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise TorchFileError("big-endian tensor data is not supported")
    obj = _interpret(f)
    keys = _interpret(f)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise TorchFileError("the storage key list is malformed")
    wanted = _unique(obj)
    flat = {}
    for key in keys:
        if key not in wanted:
            raise TorchFileError(f"storage {key} is listed but no tensor uses it")
        storage = wanted[key]
        head = f.read(8)
        if len(head) != 8:
            raise TorchFileError(f"truncated before storage {key}")
        (numel,) = struct.unpack("<q", head)
        if numel != storage.numel:
            raise TorchFileError(f"storage {key} holds {numel} elements, expected {storage.numel}")
        itemsize = torch.empty((), dtype=storage.dtype).element_size()
        if numel * itemsize > size - f.tell():  # never allocate what the file cannot hold
            raise TorchFileError(f"storage {key} runs past the end of the file (truncated?)")
        flat[key] = _tensor_from_bytes(f.read(numel * itemsize), storage)
    missing = sorted(set(wanted) - set(flat))
    if missing:
        raise TorchFileError(f"storage(s) {missing[:5]} are not in the file")
    return _resolve(obj, flat)


def load_torch_file(path: str | Path) -> Any:
    """The object `torch.save` wrote to `path` (typically a state dict of tensors), read
    without unpickling; see the module docstring for what is accepted.

    Raises:
        TorchFileError: naming `path`, for a refused global, a corrupt or truncated file.
    """
    path = Path(path)
    if not path.is_file():
        raise TorchFileError(f"{path}: not found")
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        with open(path, "rb") as f:
            return _load_legacy(f, path.stat().st_size)
    except TorchFileError as e:
        raise TorchFileError(f"{path}: {e}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise TorchFileError(f"{path}: unreadable or truncated ({e})") from None
