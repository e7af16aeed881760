"""Shared fixtures for vlmoe.data tests. Tests never touch the network."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def shapes_texts():
    from vlmoe.data import ShapesConfig, ShapesDataset

    return list(ShapesDataset(ShapesConfig(), "train", 200).texts())


@pytest.fixture(scope="session")
def shapes_tokenizer(shapes_texts):
    from vlmoe.data import Tokenizer

    return Tokenizer.train(shapes_texts, vocab_size=300, kind="bpe")
