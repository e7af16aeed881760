"""Tokenizer: training, special tokens, batch encoding, save/load, the bundled MiniLM tokenizer."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmoe.data import SPECIAL_TOKENS, DataError, Tokenizer


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_train_round_trip_and_special_ids(shapes_texts, kind):
    tok = Tokenizer.train(shapes_texts, vocab_size=300, kind=kind)
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.image_id) == (0, 1, 2, 3, 4)
    assert tok.vocab_size <= 300
    for text in shapes_texts[:300]:
        ids = tok.encode(text)
        assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
        assert tok.unk_id not in ids
        if kind == "bpe":
            assert tok.decode(ids) == text
        else:  # WordPiece (BERT-style) loses spacing around punctuation only
            assert tok.decode(ids).replace(" ", "") == text.replace(" ", "")
    assert tok.encode("a red circle", add_special=False)[0] != tok.bos_id


def test_scene_vocabulary_is_small(shapes_tokenizer, shapes_texts):
    words = {w for t in shapes_texts for w in t.replace("?", " ").replace(",", " ").split()}
    assert len(words) < 80
    mean_len = sum(len(shapes_tokenizer.encode(t)) for t in shapes_texts) / len(shapes_texts)
    assert mean_len < 16


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.sampled_from(["red", "circle", "is", "the", "left", "of", "a", "star", "three"]),
        min_size=1,
    )
)
def test_property_decode_inverts_encode(shapes_tokenizer, words):
    text = " ".join(words)
    assert shapes_tokenizer.decode(shapes_tokenizer.encode(text)) == text


def test_image_token_and_unknown_chars(shapes_tokenizer):
    ids = shapes_tokenizer.encode("<image> what colour is the star?")
    assert ids[1] == shapes_tokenizer.image_id
    assert shapes_tokenizer.decode(ids) == "what colour is the star?"
    assert shapes_tokenizer.decode(ids, skip_special=False).startswith("<bos>")
    odd = shapes_tokenizer.encode("Ω", add_special=False)
    assert shapes_tokenizer.unk_id in odd


def test_encode_batch_padding_and_truncation(shapes_tokenizer):
    tok = shapes_tokenizer
    texts = ["a red circle", "is the blue star to the left of the red circle?"]
    right = tok.encode_batch(texts)
    ids, mask = right["input_ids"], right["attention_mask"]
    assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == mask.shape
    n0 = len(tok.encode(texts[0]))
    assert mask[0].sum() == n0 and mask[0, :n0].all() and (ids[0, n0:] == tok.pad_id).all()
    assert mask[1].all()
    left = tok.encode_batch(texts, padding_side="left")
    assert left["attention_mask"][0, -n0:].all() and not left["attention_mask"][0, 0]
    assert left["input_ids"][0, -n0:].tolist() == tok.encode(texts[0])
    cut = tok.encode_batch(texts, max_len=5)
    assert cut["input_ids"].shape[1] == 5 and cut["input_ids"][1, -1] == tok.eos_id
    assert tok.encode(texts[1], max_len=4)[-1] == tok.eos_id
    assert tok.decode_batch(right["input_ids"]) == texts
    with pytest.raises(ValueError, match="padding_side"):
        tok.encode_batch(texts, padding_side="middle")  # type: ignore[arg-type]


def test_save_load_round_trip(shapes_tokenizer, shapes_texts, tmp_path):
    path = shapes_tokenizer.save(tmp_path / "model")
    assert (
        path.name == "tokenizer.json" and (tmp_path / "model" / "tokenizer_config.json").is_file()
    )
    loaded = Tokenizer.load(tmp_path / "model")
    assert loaded.vocab_size == shapes_tokenizer.vocab_size
    assert loaded.special_tokens == shapes_tokenizer.special_tokens
    for t in shapes_texts[:50]:
        assert loaded.encode(t) == shapes_tokenizer.encode(t)
    single = shapes_tokenizer.save(tmp_path / "tok.json")
    assert Tokenizer.load(single).encode("a star") == shapes_tokenizer.encode("a star")


def test_minilm_pretrained_tokenizer(tmp_path):
    tok = Tokenizer.minilm()
    assert tok.special_tokens["pad"] == "[PAD]" and tok.pad_id == 0
    assert (tok.bos_id, tok.eos_id, tok.unk_id) == (101, 102, 100)
    assert tok.image_id == 30522 and tok.vocab_size == 30523
    ids = tok.encode("A red circle")
    assert ids == [101, 1037, 2417, 4418, 102]
    assert tok.decode(ids) == "a red circle"
    batch = tok.encode_batch(["hello", "a much longer sentence here"])
    assert batch["input_ids"].shape[1] == 7  # no fixed padding to 128 from the file
    tok.save(tmp_path / "m")
    again = Tokenizer.load(tmp_path / "m")
    assert again.image_id == tok.image_id and again.encode("A red circle") == ids


def test_bad_tokenizer_files(tmp_path):
    with pytest.raises(DataError, match="tokenizer.json not found"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(DataError, match="not a valid tokenizer.json"):
        Tokenizer.load(tmp_path)
    with pytest.raises(DataError, match="folder not found"):
        Tokenizer.from_pretrained(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path / "empty")
    with pytest.raises(ValueError, match="kind"):
        Tokenizer.train(["a"], kind="unigram")  # type: ignore[arg-type]


def test_special_token_names_documented():
    assert SPECIAL_TOKENS == ("<pad>", "<unk>", "<bos>", "<eos>", "<image>")


def test_saved_folder_loads_in_transformers(shapes_tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    shapes_tokenizer.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    text = "is the red circle to the left of the blue star?"
    assert hf(text, add_special_tokens=False)["input_ids"] == shapes_tokenizer.encode(
        text, add_special=False
    )
    assert hf.pad_token_id == shapes_tokenizer.pad_id and hf.eos_token_id == shapes_tokenizer.eos_id
