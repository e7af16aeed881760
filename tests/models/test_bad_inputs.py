"""Bad inputs give one clear error naming the problem, never a shape error from inside torch."""

import json

import pytest
import torch

import vlmoe
from vlmoe.models import CheckpointError, load_model

from .helpers import image_size, make_inputs, vocab_size

IMAGE_MODELS = ["vit-debug", "fusion-debug-moe", "contrastive-debug-moe", "decoder-debug-moe"]
TEXT_MODELS = ["fusion-debug-moe", "contrastive-debug-moe", "decoder-debug-moe", "text-debug-moe"]


def _max_seq_len(model) -> int:
    c = model.config
    return c.text.max_seq_len if model.architecture == "decoder" else c.max_seq_len


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {n: vlmoe.create_model(n).eval() for n in set(IMAGE_MODELS + TEXT_MODELS)}


@pytest.mark.parametrize("name", IMAGE_MODELS)
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x: x[:, :1], r"1 channel\(s\), the model expects in_channels=3"),
        (lambda x: x[0], r"must be a batch \(B, 3, 16, 16\), got shape \(3, 16, 16\)"),
        (lambda x: torch.cat([x, x], -1), r"expected 16x16 images \(image_size=16\), got 16x32"),
        (lambda x: (x * 100).to(torch.uint8), "must be floating point.*uint8"),
    ],
    ids=["channels", "no-batch-dim", "size", "uint8"],
)
def test_bad_images(models, name, change, message):
    model = models[name]
    inputs = make_inputs(model)
    inputs["images"] = change(inputs["images"])
    with pytest.raises(ValueError, match=message):
        model(**inputs)


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_bad_token_ids(models, name):
    model = models[name]
    inputs = make_inputs(model)
    V = vocab_size(model)
    inputs["input_ids"] = inputs["input_ids"].clone()
    inputs["input_ids"][0, 0] = V
    with pytest.raises(ValueError, match=rf"token ids must be in \[0, vocab_size={V}\)"):
        model(**inputs)
    inputs["input_ids"][0, 0] = -1
    with pytest.raises(ValueError, match=r"got range \[-1, "):
        model(**inputs)
    inputs["input_ids"] = inputs["input_ids"].float()
    with pytest.raises(ValueError, match="input_ids must be integer token ids"):
        model(**inputs)
    inputs = make_inputs(model)
    inputs["input_ids"] = inputs["input_ids"][0]
    inputs.pop("attention_mask")
    with pytest.raises(ValueError, match=r"input_ids must have shape \(B, L\), got \(7,\)"):
        model(**inputs)


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_text_longer_than_max_seq_len(models, name):
    model = models[name]
    n = _max_seq_len(model)
    inputs = make_inputs(model, seq_len=n)
    model(**inputs)  # exactly max_seq_len tokens is fine
    inputs = make_inputs(model, seq_len=n + 1)
    with pytest.raises(ValueError, match=f"has {n + 1} tokens, more than .*max_seq_len={n}"):
        model(**inputs)


@pytest.mark.parametrize("name", ["fusion-debug-moe", "decoder-debug-moe"])
def test_image_and_text_batch_sizes_must_agree(models, name):
    model = models[name]
    inputs = make_inputs(model, batch=2)
    inputs["images"] = torch.cat([inputs["images"], inputs["images"][:1]])
    with pytest.raises(ValueError, match=r"3 image\(s\) but 2 text\(s\)"):
        model(**inputs)


def test_placeholder_tokens_do_not_count_against_max_seq_len():
    model = vlmoe.create_model("decoder-debug-moe", image_token_id=4).eval()
    N, n = model.num_image_tokens, _max_seq_len(model)
    ids = torch.cat([torch.full((1, N), 4), torch.randint(5, 64, (1, n))], 1)
    images = torch.randn(1, 3, image_size(model), image_size(model))
    assert model(images, ids).logits.shape == (1, N + n, 64)


def _tokenizer(n_words: int):
    from vlmoe.data.tokenizer import Tokenizer

    words = [f"w{i}" for i in range(n_words)]
    return Tokenizer.train([" ".join(words)] * 2, vocab_size=200, kind="wordpiece")


def test_tokenizer_larger_than_the_model_vocab_is_refused(tmp_path):
    tok = _tokenizer(80)
    assert tok.vocab_size > 64
    model = vlmoe.create_model("contrastive-debug")  # vocab_size=64
    with pytest.raises(CheckpointError, match=rf"tokenizer has {tok.vocab_size} tokens.*=64"):
        model.save_pretrained(tmp_path, tokenizer=tok)
    # A directory whose config was edited after saving: caught on load, naming the file.
    model = vlmoe.create_model("contrastive-debug", vocab_size=tok.vocab_size)
    model.save_pretrained(tmp_path, tokenizer=tok)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["vocab_size"] = 64
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"tokenizer.json: the tokenizer has \d+ tokens"):
        load_model(tmp_path)


def test_corrupt_tokenizer_file_is_a_checkpoint_error(tmp_path):
    vlmoe.create_model("vit-debug").save_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        load_model(tmp_path)
