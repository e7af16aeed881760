"""Fixtures: tiny random Hugging Face models saved to temp dirs."""

from __future__ import annotations

import pytest


@pytest.fixture
def hf_lm_dir(tmp_path):
    """save(family, shard=False) -> (directory, transformers model)."""

    from tests.models.hf.helpers import build_hf_lm  # skips the module without transformers

    def save(family: str, shard: bool = False):
        model = build_hf_lm(family)
        out = tmp_path / family
        model.save_pretrained(out, max_shard_size="20KB" if shard else "5GB")
        return out, model

    return save
