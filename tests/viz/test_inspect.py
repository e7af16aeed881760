"""`inspect_model` on tiny real models: PNGs and routing.json for each architecture."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlmoe.data.tokenizer import Tokenizer
from vlmoe.models.registry import create_model
from vlmoe.tasks import TaskInfo, build_task, default_task
from vlmoe.viz.inspect import inspect_model

WORDS = "[PAD] [BOS] [EOS] [UNK] what colour is the big square ? a red circle blue"


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    img = np.zeros((40, 48, 3), np.uint8)
    img[4:20, 4:24] = (255, 0, 0)
    img[22:38, 26:46] = (0, 128, 255)
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(img).save(path)
    return path


@pytest.fixture(scope="module")
def vlmoe_tokenizer():
    return Tokenizer.train([WORDS.lower()] * 3, vocab_size=200, kind="wordpiece")


def task_of(model, tokenizer=None, **names):
    """The model's default task, with its image size and text length."""
    cfg = model.config
    vision = getattr(cfg, "vision", None) or cfg
    info = TaskInfo(
        default_task(model.architecture).name,
        model.architecture,
        vision.image_size,
        16,
        **names,
    )
    return build_task(info, tokenizer)


@pytest.mark.parametrize("preset", ["fusion-debug-moe", "contrastive-debug-moe"])
def test_inspect_with_text(preset, vlmoe_tokenizer, image_path, tmp_path):
    torch.manual_seed(0)
    model = create_model(preset, vocab_size=vlmoe_tokenizer.vocab_size)
    model.train()
    task = task_of(model, vlmoe_tokenizer, label_names=["a", "b"], answer_vocab=["red", "blue"])
    result = inspect_model(model, task, image_path, "what colour is the big square ?", tmp_path)
    assert model.training  # mode restored
    for path in result.paths():
        assert path.exists() and path.stat().st_size > 500
    with Image.open(result.routing_png) as im:
        w, h = im.size
        assert w > 400 and h > 400
    record = json.loads(result.routing_json.read_text())
    (layer,) = record["layers"]  # the debug presets have one MoE layer
    assert layer["name"] == "transformer.blocks.1.ffn"
    grid = model.image_embed.grid_size
    assert np.asarray(layer["patch_experts"]).shape == grid
    assert [t["token"] for t in layer["tokens"]] == result.text_tokens
    words = ["what", "colour", "is", "the", "big", "square", "?"]
    assert result.text_tokens == ["<bos>", *words, "<eos>"]
    assert all(0 <= t["expert"] < 8 for t in layer["tokens"])
    if preset.startswith("fusion"):
        # modality expert groups: image patches never reach the text group (experts 3-5)
        assert not set(np.ravel(layer["patch_experts"])) & {3, 4, 5}
        assert not {t["expert"] for t in layer["tokens"]} & {0, 1, 2}


def test_inspect_decoder_captions_when_no_text(vlmoe_tokenizer, image_path, tmp_path):
    torch.manual_seed(0)
    model = create_model("decoder-debug-moe", vocab_size=vlmoe_tokenizer.vocab_size)
    result = inspect_model(model, task_of(model, vlmoe_tokenizer), image_path, None, tmp_path)
    assert result.caption is not None
    assert result.text_tokens[0] == "<bos>"
    # the caption fits the model's text length (bos + at most max_len - 1 new tokens)
    assert 1 <= len(result.text_tokens) <= 16
    record = json.loads(result.routing_json.read_text())
    assert record["caption"] == result.caption
    assert record["layers"][-1]["name"].startswith("lm.")
    assert len(record["layers"][-1]["tokens"]) == len(result.text_tokens)


def test_inspect_refuses_dense_models(image_path, tmp_path):
    with pytest.raises(ValueError, match="no MoE layers"):
        model = create_model("vit-debug")
        inspect_model(model, task_of(model), image_path, None, tmp_path)


def test_inspect_vit_without_text(image_path, tmp_path):
    torch.manual_seed(0)
    model = create_model("vit-debug-moe")
    result = inspect_model(model, task_of(model), Image.open(image_path), None, tmp_path)
    record = json.loads(result.routing_json.read_text())
    assert all("patch_experts" in layer and "tokens" not in layer for layer in record["layers"])
