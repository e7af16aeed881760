"""The detection demo's tables and configs (the end-to-end run is tests/cli/test_demo.py, slow)."""

import math

from vlmoe.models.presets import DETECTION_SCENES, RECIPES
from vlmoe.recipes.demos.detection import (
    FULL,
    QUICK,
    coco_table,
    demo_configs,
    per_class_table,
    routing_lines,
)
from vlmoe.recipes.demos.scenes import ModelResult


def result(name: str, eval_: dict) -> ModelResult:
    return ModelResult(name, "detection", {}, 2_000_000, 1_000_000, 50.0, 300.0, eval_)


def _world(cfg) -> dict:
    return {k: getattr(cfg.data.shapes, k) for k in DETECTION_SCENES}


def test_configs_follow_the_recipe():
    recipe = RECIPES["det-small"]
    full, quick = demo_configs(FULL), demo_configs(QUICK)
    assert full["dense"].model.preset == "det-small" and full["moe"].model.preset == "det-small-moe"
    for cfg in full.values():
        assert cfg.task == "detection" and _world(cfg) == DETECTION_SCENES
        assert cfg.train.steps == recipe.steps and cfg.optim.lr == recipe.lr
    assert quick["moe"].train.steps < recipe.steps and _world(quick["moe"]) == DETECTION_SCENES


def test_tables_show_each_model_and_class():
    dense = result(
        "dense", {"detection/mAP": 0.8, "detection/mAP50": 0.99, "detection/AP/red circle": 0.7}
    )
    moe = result(
        "moe",
        {
            "detection/mAP": 0.81,
            "detection/AP_medium": math.nan,
            "detection/AP/red circle": 0.75,
            "object_routing/routing/layer1/object_vs_background_tv": 0.5,
            "object_routing/routing/layer0/object_vs_background_tv": 0.25,
        },
    )
    table = coco_table({"dense": dense, "moe": moe}).splitlines()
    assert table[0].startswith("| backbone | mAP@[.5:.95] | mAP@0.5 |")
    assert table[2].startswith("| dense | 0.800 | 0.990 | – |")  # missing stats show as a dash
    assert table[3].startswith("| moe | 0.810 | – |") and "| 1.00M | 2.00M | 5.0 min |" in table[3]
    assert (
        per_class_table({"dense": dense, "moe": moe}).splitlines()[2]
        == "| red circle | 0.700 | 0.750 |"
    )
    (line, _) = routing_lines(moe)
    assert "layer0 0.25, layer1 0.50" in line
    assert routing_lines(dense) == []
