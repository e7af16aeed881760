"""Directories vlmoe cannot import exactly are refused with one error naming the problem."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from vlmoe.models.hf import HFImportError, import_model


def _edit_config(directory, **changes):
    path = directory / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def test_directory_without_config(tmp_path):
    with pytest.raises(HFImportError, match=r"config\.json: not found"):
        import_model(tmp_path)


def test_missing_directory(tmp_path):
    with pytest.raises(HFImportError, match="not a directory"):
        import_model(tmp_path / "nope")


def test_unsupported_model_type(hf_lm_dir):
    directory, _ = hf_lm_dir("llama")
    _edit_config(directory, model_type="gpt2")
    with pytest.raises(HFImportError, match="model_type 'gpt2' is not supported"):
        import_model(directory)


def test_rope_scaling_refused_by_name(hf_lm_dir):
    directory, _ = hf_lm_dir("llama")
    _edit_config(directory, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4})
    with pytest.raises(HFImportError, match="rope scaling type 'yarn'"):
        import_model(directory)


def test_activation_refused_by_name(hf_lm_dir):
    directory, _ = hf_lm_dir("qwen2")
    _edit_config(directory, hidden_act="relu")
    with pytest.raises(HFImportError, match="hidden_act 'relu'"):
        import_model(directory)


def test_renamed_and_misshaped_keys_listed_in_one_error(hf_lm_dir):
    directory, _ = hf_lm_dir("llama")
    path = directory / "model.safetensors"
    tensors = load_file(path)
    tensors["model.layers.1.mlp.up_projection.weight"] = tensors.pop(
        "model.layers.1.mlp.up_proj.weight"
    )
    tensors["model.norm.weight"] = torch.ones(31)
    save_file(tensors, path)
    with pytest.raises(HFImportError) as info:
        import_model(directory)
    message = str(info.value)
    assert "missing keys: model.layers.1.mlp.up_proj.weight" in message
    assert "unexpected keys: model.layers.1.mlp.up_projection.weight" in message
    assert "mis-shaped keys: model.norm.weight (31,) (expected (32,))" in message
    assert "\n" not in message


def test_truncated_shard(hf_lm_dir):
    directory, _ = hf_lm_dir("llama", shard=True)
    shard = sorted(directory.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(HFImportError, match=f"{shard.name}: not a readable safetensors file"):
        import_model(directory)


def test_missing_shard(hf_lm_dir):
    directory, _ = hf_lm_dir("llama", shard=True)
    shard = sorted(directory.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(HFImportError, match=rf"shard file\(s\) \['{shard.name}'\] not found"):
        import_model(directory)


def test_pickle_weights_refused_without_unpickling(hf_lm_dir, monkeypatch):
    directory, model = hf_lm_dir("llama")
    (directory / "model.safetensors").unlink()
    (directory / "pytorch_model.bin").write_bytes(b"not opened")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(HFImportError, match=r"\['pytorch_model\.bin'\] are PyTorch pickle files"):
        import_model(directory)


def test_pickle_shards_in_index_refused(hf_lm_dir):
    directory, _ = hf_lm_dir("llama")
    (directory / "model.safetensors").unlink()
    index = {"weight_map": {"lm_head.weight": "pytorch_model-00001-of-00001.bin"}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(HFImportError, match="pickle"):
        import_model(directory)
