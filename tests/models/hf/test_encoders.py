"""Vision towers (CLIP, SigLIP, ViT) and BERT encoders imported from Hugging Face compute what
transformers computes."""

from __future__ import annotations

import pytest
import torch

from tests.models.hf.helpers import VISION_FAMILIES, build_hf_bert, build_hf_vision, rel_err
from vlmoe.models import TextTransformer, ViT
from vlmoe.models.hf import HFImportError, import_model


@pytest.mark.parametrize("family", sorted(VISION_FAMILIES))
@pytest.mark.parametrize("feature_layer", [None, -1, -2])
def test_vision_features_match_transformers(tmp_path, family, feature_layer):
    hf = build_hf_vision(family)
    hf.save_pretrained(tmp_path / family)
    model = import_model(tmp_path / family, feature_layer=feature_layer)
    assert isinstance(model, ViT)
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = hf(pixel_values=images, output_hidden_states=True)
        ours, _ = model.forward_features(images)
    theirs = out.last_hidden_state if feature_layer is None else out.hidden_states[feature_layer]
    assert ours.shape == theirs.shape
    assert rel_err(ours, theirs) < 1e-5


def test_vision_feature_layer_out_of_range(tmp_path):
    build_hf_vision("clip").save_pretrained(tmp_path)
    with pytest.raises(HFImportError, match="feature_layer=-4"):
        import_model(tmp_path, feature_layer=-4)


def test_bert_hidden_states_match_transformers(tmp_path):
    hf = build_hf_bert()
    hf.save_pretrained(tmp_path)
    model = import_model(tmp_path)
    assert isinstance(model, TextTransformer) and not model.causal
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        out = model(ids, mask)
    valid = mask.bool()
    assert rel_err(out.hidden_states[valid], theirs[valid]) < 1e-5
    mean = (theirs * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert rel_err(out.pooled, mean) < 1e-5


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_vision_half_of_a_full_checkpoint(tmp_path, family):
    import transformers

    names = {"clip": ("CLIPConfig", "CLIPModel"), "siglip": ("SiglipConfig", "SiglipModel")}
    cfg_name, model_name = names[family]
    text = dict(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=16,
        patch_size=4,
    )
    torch.manual_seed(0)
    config = getattr(transformers, cfg_name)(text_config=text, vision_config=vision)
    hf = getattr(transformers, model_name)(config).eval()
    hf.save_pretrained(tmp_path)
    model = import_model(tmp_path, feature_layer=-2)
    images = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        theirs = hf.vision_model(pixel_values=images, output_hidden_states=True).hidden_states[-2]
        ours, _ = model.forward_features(images)
    assert rel_err(ours, theirs) < 1e-5
