"""The pickle-free reader of `torch.save` files: bit-exact in both layouts, refuses globals."""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from vlmoe.torch_files import TorchFileError, load_torch_file

LAYOUTS = {"zip": True, "legacy": False}


def _state() -> collections.OrderedDict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 7, generator=g)
    shared = torch.arange(40, dtype=torch.int64)
    state = collections.OrderedDict(
        f32=torch.randn(3, 4, generator=g),
        f64=torch.randn(5, generator=g, dtype=torch.float64),
        f16=torch.randn(2, 3, generator=g).half(),
        bf16=torch.randn(4, 2, generator=g).bfloat16(),
        i32=torch.randint(-9, 9, (3, 3), generator=g, dtype=torch.int32),
        u8=torch.randint(0, 255, (8,), generator=g, dtype=torch.uint8),
        flag=torch.rand(5, generator=g) > 0.5,
        scalar=torch.tensor(3.5),
        empty=torch.zeros(0, 3),
        transposed=base.t(),  # non-contiguous strides
        sliced=base[1:5:2, 2:],  # an offset view of the same storage
        shared_a=shared[:10],
        shared_b=shared[20:].view(4, 5),
        param=torch.nn.Parameter(torch.randn(2, 2, generator=g)),
    )
    state["nested"] = {"list": [torch.ones(2), 1, 2.5, "x", None, True], "tuple": (1, (2, 3))}
    return state


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(-1).view(torch.uint8)


def _equal(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        assert a.stride() == b.stride() and a.storage_offset() == b.storage_offset()
        assert torch.equal(_bits(a), _bits(b))
        assert bytes(a.untyped_storage()) == bytes(b.untyped_storage())
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _equal(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _equal(x, y)
    else:
        assert a == b and type(a) is type(b)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_round_trip_bit_exact(tmp_path: Path, layout: str) -> None:
    state = _state()
    path = tmp_path / "state.pth"
    torch.save(state, path, _use_new_zipfile_serialization=LAYOUTS[layout])
    loaded = load_torch_file(path)
    assert type(loaded) is collections.OrderedDict
    _equal(state, loaded)
    assert loaded["param"].requires_grad and not loaded["f32"].requires_grad
    # views of one storage still share it
    assert loaded["shared_a"].untyped_storage().data_ptr() == (
        loaded["shared_b"].untyped_storage().data_ptr()
    )
    assert loaded["transposed"].untyped_storage().data_ptr() == (
        loaded["sliced"].untyped_storage().data_ptr()
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_module_state_dict_with_metadata(tmp_path: Path, layout: str) -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=LAYOUTS[layout])
    loaded = load_torch_file(path)
    assert loaded._metadata == model.state_dict()._metadata
    fresh = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    fresh.load_state_dict(loaded)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)


class _Evil:
    """Unpickled, it would create `target` through a shell."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_malicious_global_refused_without_running(tmp_path: Path, layout: str) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.ones(2), "x": _Evil(target)}, path,
               _use_new_zipfile_serialization=LAYOUTS[layout])  # fmt: skip
    with pytest.raises(TorchFileError, match=r"refuses global '(posix|os)\.system'"):
        load_torch_file(path)
    assert not target.exists()


def test_os_system_in_a_plain_pickle_refused(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps(_Evil(target), protocol=4))
    with pytest.raises(TorchFileError, match=r"refuses global '(posix|os)\.system'"):
        load_torch_file(path)
    assert not target.exists()
    pickle.loads(zipfile.ZipFile(path).read("evil/data.pkl"))  # the payload is live:
    assert target.exists()  # unpickling it does run the shell
    path.write_bytes(pickle.dumps(eval, protocol=4))  # STACK_GLOBAL builtins.eval
    with pytest.raises(TorchFileError, match="magic number|builtins.eval"):
        load_torch_file(path)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("keep", [0.3, 0.999])
def test_truncated_file_clear_error(tmp_path: Path, layout: str, keep: float) -> None:
    path = tmp_path / "state.pth"
    torch.save(_state(), path, _use_new_zipfile_serialization=LAYOUTS[layout])
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(TorchFileError, match=r"state\.pth: .*(truncated|unreadable|bytes)"):
        load_torch_file(path)


def test_not_a_torch_file(tmp_path: Path) -> None:
    with pytest.raises(TorchFileError, match="not found"):
        load_torch_file(tmp_path / "absent.pth")
    path = tmp_path / "x.pth"
    path.write_bytes(b"hello world")
    with pytest.raises(TorchFileError, match=r"x\.pth: "):
        load_torch_file(path)
