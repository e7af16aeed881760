"""The scene presets and detectors (conv stem, dense and MoE twins) and their training recipes."""

import pytest
import torch

import vlmoe
from vlmoe.models import count_parameters
from vlmoe.models.presets import RECIPES
from vlmoe.moe.layer import MoEAux
from vlmoe.nn import ConvStem
from vlmoe.train.config import RunConfig

from .helpers import make_inputs

FAMILIES = ["fusion-scene", "decoder-scene", "vit-mnist", "det-small"]


@pytest.mark.parametrize("family", FAMILIES)
def test_scene_twins_run_and_match_active_parameters(family):
    torch.manual_seed(0)
    dense, moe = vlmoe.create_model(family), vlmoe.create_model(f"{family}-moe")
    for model in (dense, moe):
        assert any(isinstance(m, ConvStem) for m in model.modules())
        out = model(**make_inputs(model))
        assert all(isinstance(a, MoEAux) for a in out.moe_aux)
        assert bool(out.moe_aux) == (model is moe)
    (d_total, d_active), (m_total, m_active) = count_parameters(dense), count_parameters(moe)
    assert d_total == d_active and m_total > 1.5 * m_active
    assert abs(m_active - d_active) / d_active < 0.01  # only the routers differ


@pytest.mark.parametrize("family", FAMILIES)
def test_recipes_are_valid_run_configs(family):
    recipe = RECIPES[family]
    cfg = RunConfig().with_overrides({"model.preset": family, **recipe.overrides()})
    assert cfg.train.steps == recipe.steps and cfg.optim.lr == recipe.lr
    assert cfg.losses.label_smoothing == recipe.label_smoothing
    assert all(getattr(cfg.data.shapes, k) == v for k, v in recipe.world.items())
    default = type(cfg.data.augment)().to_dict()
    assert cfg.data.augment.to_dict() == {**default, **recipe.augment}
