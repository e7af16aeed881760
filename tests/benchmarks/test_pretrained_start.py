"""The pretrained-start study (`benchmarks/pretrained_start.py`): arms pair up in the report,
and the EfficientNet-Lite0 arms differ only in their starting weights."""

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def study():
    sys.path.insert(0, str(BENCH))
    import pretrained_start

    yield pretrained_start
    sys.path.remove(str(BENCH))


def test_report_pairs_each_start_with_its_scratch_twin(study, tmp_path):
    runs = {}
    for arm, values in {"lite0": (0.5, 0.7, 0.6), "lite0-scratch": (0.1, 0.2, 0.3)}.items():
        for seed, v in enumerate(values):
            key = f"vqa/{arm}/seed{seed}"
            runs[key] = {"task": "vqa", "arm": arm, "seed": seed, "metrics": {"vqa/accuracy": v}}
    path = tmp_path / "study.json"
    path.write_text(json.dumps({"runs": runs}))
    table = study.report(path).splitlines()
    assert len(table) == 3  # header, rule, the one complete pair
    assert table[2] == (
        "| Lite0 + MiniLM | vqa | VQA acc | 60.0 ± 10.0 | "
        "20.0 ± 10.0 | +40.0 | 50.0 / 70.0 / 60.0 vs 10.0 / 20.0 / 30.0 |"
    )


@pytest.mark.slow
def test_lite0_arms_share_the_architecture(study):
    pre = study.build_run("photos", "lite0", 0, 2).model
    scratch = study.build_run("photos", "lite0-scratch", 0, 2).model
    assert type(pre) is type(scratch)
    assert pre.config.tower.trainable is False and scratch.config.tower.trainable is True
    a, b = pre.state_dict(), scratch.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    stem = "image_embed.patch.cnn.stem.0.weight"
    assert not torch.equal(a[stem], b[stem])  # ImageNet weights vs a random start
    assert not any(p.requires_grad for p in pre.image_embed.patch.cnn.parameters())
