"""Decoder LMs imported from Hugging Face compute what transformers computes, and export back."""

from __future__ import annotations

import pytest
import torch

from tests.models.hf.helpers import LM_FAMILIES, rel_err
from vlmoe.models import TextTransformer
from vlmoe.models.hf import HFImportError, export_model, import_model


@pytest.mark.parametrize("family", sorted(LM_FAMILIES))
def test_logits_match_transformers(hf_lm_dir, family):
    directory, hf = hf_lm_dir(family)
    model = import_model(directory)
    assert isinstance(model, TextTransformer)
    ids = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(ids).logits
        theirs = hf(ids).logits
    assert rel_err(ours, theirs) < 1e-5


@pytest.mark.parametrize("family", sorted(LM_FAMILIES))
def test_greedy_generation_matches_transformers(hf_lm_dir, family):
    directory, hf = hf_lm_dir(family)
    model = import_model(directory)
    ids = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),  # else transformers masks ids equal to pad
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[:, ids.shape[1] :]
    ours = model.generate(ids, max_new_tokens=12)
    assert ours.tolist() == theirs.tolist()


def test_sharded_checkpoint_imports(hf_lm_dir):
    directory, hf = hf_lm_dir("mixtral", shard=True)
    assert (directory / "model.safetensors.index.json").is_file()
    model = import_model(directory)
    ids = torch.arange(10)[None]
    with torch.no_grad():
        assert rel_err(model(ids).logits, hf(ids).logits) < 1e-5


@pytest.mark.parametrize("family", ["llama", "llama-bias-tied", "qwen2", "mixtral", "qwen2_moe"])
def test_export_round_trip_loads_in_transformers(hf_lm_dir, tmp_path, family):
    import transformers

    directory, hf = hf_lm_dir(family)
    model = import_model(directory)
    export_model(model, tmp_path / "out", max_shard_size=30_000)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert rel_err(back(ids).logits, hf(ids).logits) < 1e-5
        assert rel_err(back(ids).logits, model(ids).logits) < 1e-5


def test_export_refuses_an_lm_with_no_hf_twin():
    from vlmoe.models import TextConfig

    model = TextTransformer(TextConfig())  # vlmoe's default: LayerNorm
    with pytest.raises(HFImportError, match="transformer.norm='layernorm'"):
        export_model(model, "unused")


@pytest.mark.parametrize("preset", ["decoder-debug", "text-debug"])
def test_vlmoe_native_lm_exports_as_llama(tmp_path, preset):
    """A vlmoe decoder trained from scratch (RMSNorm, SwiGLU, RoPE: Llama-shaped) saves in the
    Llama layout; transformers computes the same logits and greedy continuation."""
    import transformers

    from vlmoe.models.registry import create_model

    torch.manual_seed(0)
    model = create_model(preset).eval()
    lm = model.lm if hasattr(model, "lm") else model
    with torch.no_grad():  # random norms, so that a mixed-up norm would show
        for name, p in lm.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    export_model(model, tmp_path)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(back).__name__ == "LlamaForCausalLM"
    ids = torch.randint(0, lm.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel_err(back(ids).logits, lm(ids).logits) < 1e-5
        theirs = back.generate(
            ids[:1],
            attention_mask=torch.ones_like(ids[:1]),
            max_new_tokens=6,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[:, 6:]
    assert lm.generate(ids[:1], max_new_tokens=6).tolist() == theirs.tolist()
