import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import vlmoe
from vlmoe.models import CheckpointError, ContrastiveModel, FusionModel, ViT, load_model

from .helpers import DEBUG_PRESETS, float_tensors, make_inputs


@pytest.mark.parametrize("name", DEBUG_PRESETS)
def test_round_trip_gives_identical_outputs(name, tmp_path):
    torch.manual_seed(0)
    model = vlmoe.create_model(name).eval()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text())["architecture"] == model.architecture
    loaded = load_model(tmp_path).eval()
    assert type(loaded) is type(model) and loaded.config == model.config
    inputs = make_inputs(model)
    a, b = float_tensors(model(**inputs)), float_tensors(loaded(**inputs))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _saved(tmp_path, name="vit-debug-moe"):
    model = vlmoe.create_model(name)
    model.save_pretrained(tmp_path)
    return model


def _edit_weights(tmp_path, edit):
    tensors = load_file(str(tmp_path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(tmp_path / "model.safetensors"))


def _edit_config(tmp_path, edit):
    data = json.loads((tmp_path / "config.json").read_text())
    edit(data)
    (tmp_path / "config.json").write_text(json.dumps(data))


def test_missing_tensor(tmp_path):
    _saved(tmp_path)
    _edit_weights(tmp_path, lambda t: t.pop("head.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) \['head.weight'\]"):
        load_model(tmp_path)


def test_unexpected_tensor(tmp_path):
    _saved(tmp_path)
    _edit_weights(tmp_path, lambda t: t.__setitem__("extra.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\) \['extra.weight'\]"):
        load_model(tmp_path)


def test_shape_mismatch(tmp_path):
    _saved(tmp_path)
    _edit_weights(tmp_path, lambda t: t.__setitem__("head.weight", torch.zeros(3, 32)))
    with pytest.raises(
        CheckpointError, match=r"'head.weight' has shape \(3, 32\).*expects \(10, 32\)"
    ):
        load_model(tmp_path)


def test_unknown_architecture(tmp_path):
    _saved(tmp_path)
    _edit_config(tmp_path, lambda d: d.__setitem__("architecture", "resnet"))
    with pytest.raises(CheckpointError, match="unknown architecture 'resnet'"):
        load_model(tmp_path)


def test_invalid_config_value(tmp_path):
    _saved(tmp_path)
    _edit_config(tmp_path, lambda d: d["transformer"]["moe"].__setitem__("top_k", 9))
    with pytest.raises(CheckpointError, match="top_k=9 must be <= moe.num_experts=8"):
        load_model(tmp_path)


def test_unknown_config_key(tmp_path):
    _saved(tmp_path)
    _edit_config(tmp_path, lambda d: d.__setitem__("depth", 3))
    with pytest.raises(CheckpointError, match=r"unknown key\(s\) \['depth'\]"):
        load_model(tmp_path)


def test_missing_files_and_wrong_class(tmp_path):
    with pytest.raises(CheckpointError, match="config.json: not found"):
        load_model(tmp_path)
    _saved(tmp_path)
    with pytest.raises(CheckpointError, match="architecture is 'vit'"):
        FusionModel.from_pretrained(tmp_path)
    assert isinstance(ViT.from_pretrained(tmp_path), ViT)
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(tmp_path)


def test_never_unpickles(tmp_path):
    # A pickle under the weights' name is refused, not executed.
    _saved(tmp_path)
    torch.save({"head.weight": torch.zeros(1)}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError):
        load_model(tmp_path)


def test_tokenizer_is_saved_and_loaded(tmp_path):
    from vlmoe.data.tokenizer import Tokenizer

    tok = Tokenizer.train(["a red circle", "a blue square"] * 4, vocab_size=40, kind="wordpiece")
    model = vlmoe.create_model("contrastive-debug", vocab_size=tok.vocab_size)
    model.tokenizer = tok
    model.save_pretrained(tmp_path)
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in tmp_path.iterdir()}
    loaded = ContrastiveModel.from_pretrained(tmp_path)
    assert isinstance(loaded.tokenizer, Tokenizer)
    assert loaded.tokenizer.encode("a red square") == tok.encode("a red square")


def test_any_object_with_save_is_accepted_as_tokenizer(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import WordLevel

    raw = HFTokenizer(WordLevel({"[PAD]": 0, "[UNK]": 1, "red": 2}, unk_token="[UNK]"))
    vlmoe.create_model("vit-debug").save_pretrained(tmp_path, tokenizer=raw)
    assert (tmp_path / "tokenizer.json").is_file()
    assert load_model(tmp_path).tokenizer.token_to_id("red") == 2


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    model = _saved(tmp_path)
    model.save_pretrained(tmp_path)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
