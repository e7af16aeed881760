"""Smoke test of the scaling study (`benchmarks/scaling.py`): a two-step run of dense and MoE
on scene VQA writes its JSON, table and plots, and a second call skips the finished runs."""

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def scaling():
    sys.path.insert(0, str(BENCH))
    import scaling

    yield scaling
    sys.path.remove(str(BENCH))


def test_caption_attribute_match(scaling):
    from scaling_tasks import attribute_match

    canonical = "two objects: a large red triangle and a small blue star"
    assert attribute_match("a red triangle and a blue star", canonical) == (True, True)
    assert attribute_match("a large red triangle", canonical) == (False, True)
    assert attribute_match("a small red triangle", canonical) == (False, False)
    assert attribute_match("a star and a triangle", canonical) == (False, True)
    assert attribute_match("two objects", canonical) == (False, False)


def test_quick_study_runs_and_resumes(scaling, tmp_path):
    out = tmp_path / "scaling.json"
    args = [
        "--tasks",
        "vqa",
        "--seeds",
        "0",
        "--variants",
        "dense",
        "e8k2",
        "dense-wide",
        "dense-narrow",
        "--steps",
        "2",
        "--out",
        str(out),
        "--threads",
        "1",
    ]
    assert scaling.main(args) == 0
    runs = json.loads(out.read_text())["runs"]
    assert set(runs) == {
        "vqa/dense/seed0",
        "vqa/e8k2/seed0",
        "vqa/dense-wide/seed0",
        "vqa/dense-narrow/seed0",
    }
    dense, moe = runs["vqa/dense/seed0"], runs["vqa/e8k2/seed0"]
    wide = runs["vqa/dense-wide/seed0"]
    assert moe["total_params"] > dense["total_params"]
    assert abs(moe["active_params"] - dense["active_params"]) < 0.02 * dense["active_params"]
    # The capacity control: all of the MoE's parameters, all active (routers aside).
    assert wide["active_params"] == wide["total_params"]
    assert abs(wide["total_params"] - moe["total_params"]) < 0.01 * moe["total_params"]
    narrow = runs["vqa/dense-narrow/seed0"]
    assert narrow["active_params"] == narrow["total_params"] < dense["total_params"]
    assert "dead_experts" in moe["routing"] and not dense["routing"]
    assert (tmp_path / "scaling.md").read_text().startswith("# Scaling study")
    assert (tmp_path / "scaling_experts.png").is_file()
    mtime = out.stat().st_mtime_ns
    assert scaling.main(args) == 0  # everything done: nothing retrained
    assert json.loads(out.read_text())["runs"] == runs
    assert out.stat().st_mtime_ns == mtime
