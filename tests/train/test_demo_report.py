"""The demo report's per-kind table (VQA per question type, caption attributes)."""

import functools

from vlmoe.models.presets import RECIPES
from vlmoe.recipes.demos.scenes import FULL, QUICK, ModelResult, demo_configs, per_kind_table


def _result(name, task, ev):
    return ModelResult(name, task, {}, 1, 1, 1.0, 1.0, ev)


def test_per_kind_table_lists_each_type_for_the_models_that_have_it():
    results = {
        "fusion-dense": _result(
            "fusion-dense", "vqa", {"vqa/accuracy/colour": 0.9, "vqa/accuracy/shape": 0.5}
        ),
        "decoder-moe": _result(
            "decoder-moe",
            "captioning",
            {"captioning/attr/count": 1.0, "captioning/attr/num_scored": 9},
        ),
    }
    table = per_kind_table(results)
    assert "| model | colour | shape |" in table and "| fusion dense | 90.0% | 50.0% |" in table
    assert "| model | count |" in table and "| decoder moe | 100.0% |" in table
    assert "num_scored" not in table
    assert per_kind_table({}) == ""


def test_demo_models_see_through_a_conv_stem():
    for scale in (FULL, QUICK):
        for name, cfg in demo_configs(scale).items():
            key = "vision.patch_embed" if name.startswith("decoder") else "patch_embed"
            # the fusion model adds the linear patch projection to the stem (colour survives)
            assert cfg.model.overrides[key] == ("conv" if "decoder" in name else "hybrid"), name
            if name.startswith("decoder"):  # listing captions, scored per attribute
                assert cfg.data.shapes.num_captions == 1


def test_the_full_demo_trains_by_the_scene_recipes():
    for name, cfg in demo_configs(FULL).items():
        recipe = RECIPES["fusion-scene" if name.startswith("fusion") else "decoder-scene"]
        for key, value in recipe.overrides().items():
            assert functools.reduce(getattr, key.split("."), cfg) == value, (name, key)


def test_demo_decoder_reads_whole_listing_captions():
    """A four-object listing caption is 21 tokens with <bos> and <eos>; the decoder must not
    cut it (the debug preset's max_seq_len of 16 did)."""
    for scale in (FULL, QUICK):
        for name, cfg in demo_configs(scale).items():
            if name.startswith("decoder"):
                assert cfg.model.overrides["text.max_seq_len"] >= 24, name
