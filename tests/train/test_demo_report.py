"""The demo report's per-kind table (VQA per question type, caption attributes)."""

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
            assert cfg.model.overrides[key] == "conv", name
            if name.startswith("decoder"):  # listing captions, scored per attribute
                assert cfg.data.shapes.num_captions == 1
