import errno
import json
import os
import stat

import pytest
import torch

import vlmoe
import vlmoe.models.checkpoint as model_ckpt
import vlmoe.train.checkpoint as train_ckpt
from vlmoe import io
from vlmoe.eval import write_eval_json


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield 0o644
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_one_checkpoint_error_class():
    assert model_ckpt.CheckpointError is io.CheckpointError
    assert train_ckpt.CheckpointError is io.CheckpointError
    assert issubclass(io.CheckpointError, ValueError)
    assert issubclass(io.CheckpointError, RuntimeError)


def test_atomic_files_get_the_umask_mode(tmp_path, umask_022):
    io.write_text_atomic(tmp_path / "a.txt", "hi")
    io.write_json_atomic(tmp_path / "b.json", {"x": 1})
    io.save_safetensors({"w": torch.ones(2)}, tmp_path / "c.safetensors")
    for name in ("a.txt", "b.json", "c.safetensors"):
        assert _mode(tmp_path / name) == umask_022, name
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": 1}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_save_pretrained_and_eval_json_get_the_umask_mode(tmp_path, umask_022):
    from vlmoe.data.tokenizer import Tokenizer

    tokenizer = Tokenizer.train(["a red circle left of a blue square"] * 3, vocab_size=40)
    model = vlmoe.create_model("fusion-debug-moe", vocab_size=max(64, tokenizer.vocab_size))
    model.save_pretrained(tmp_path / "model", tokenizer=tokenizer)
    write_eval_json({"acc": 0.5}, tmp_path / "eval.json")
    files = [*(tmp_path / "model").iterdir(), tmp_path / "eval.json"]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in files}
    for path in files:
        assert _mode(path) == umask_022, path.name


def test_umask_is_honoured_not_hard_coded(tmp_path):
    old = os.umask(0o077)
    try:
        io.write_text_atomic(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "private.txt") == 0o600


def test_disk_full_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "eval.json"
    target.write_text("old")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left on device") as info:
        io.write_text_atomic(target, "new")
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(target) and str(target) in str(info.value)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]


def test_unwritable_directory_names_the_file(tmp_path):
    missing = tmp_path / "no" / "such" / "dir" / "x.json"
    with pytest.raises(FileNotFoundError) as info:
        io.write_json_atomic(missing, {})
    assert info.value.filename == str(missing)


def test_failed_body_leaves_no_temporary(tmp_path):
    with pytest.raises(RuntimeError), io.atomic_path(tmp_path / "x.bin"):
        raise RuntimeError("writer failed")
    assert list(tmp_path.iterdir()) == []


def test_load_safetensors_errors_name_the_file(tmp_path):
    with pytest.raises(io.CheckpointError, match="w.safetensors: not found"):
        io.load_safetensors(tmp_path / "w.safetensors")
    (tmp_path / "w.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(io.CheckpointError, match="w.safetensors: not a readable safetensors"):
        io.load_safetensors(tmp_path / "w.safetensors")


def test_check_tensors_names_and_shapes(tmp_path):
    path = io.save_safetensors({"a": torch.zeros(2, 3), "b": torch.zeros(4)}, tmp_path / "w.st")
    tensors = io.load_safetensors(path)
    io.check_tensors(path, tensors, {"a": (2, 3), "b": torch.zeros(4)})
    with pytest.raises(io.CheckpointError, match=r"missing tensor\(s\) \['c'\]"):
        io.check_tensors(path, tensors, {"a": (2, 3), "b": (4,), "c": (1,)})
    with pytest.raises(io.CheckpointError, match=r"unexpected tensor\(s\) \['b'\]"):
        io.check_tensors(path, tensors, {"a": (2, 3)})
    with pytest.raises(io.CheckpointError, match=r"'a' has shape \(2, 3\), but the model expects"):
        io.check_tensors(path, tensors, {"a": (3, 2), "b": (4,)})
