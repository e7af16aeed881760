"""`vlmoe demo --quick` end to end (the test run's big one), and `vlmoe demo mnist --quick`."""

import json

import numpy as np
import pytest
from PIL import Image

from vlmoe.cli.main import main


def test_quick_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"Report: {out / 'report.md'}" in printed
    report = (out / "report.md").read_text()
    assert (
        "| vqa+classification | fusion dense |" in report
        and "| captioning | decoder moe |" in report
    )
    assert "its dense twin" not in report  # no verdicts from a few seconds of training
    for png in (
        "fusion_curves.png",
        "decoder_curves.png",
        "fusion_expert_load.png",
        "decoder_expert_load.png",
        "fusion_routing.png",
        "decoder_routing.png",
    ):
        assert (out / png).is_file() and png in report, png
    summary = json.loads((out / "results.json").read_text())
    models = summary["models"]
    assert set(models) == {"fusion-dense", "fusion-moe", "decoder-dense", "decoder-moe"}
    for name, m in models.items():
        # equal active parameters (within the router's few weights), more total for MoE
        twin = models[name.replace("moe", "dense")]
        assert abs(m["active_params"] - twin["active_params"]) / twin["active_params"] < 0.02
        if name.endswith("moe"):
            assert m["total_params"] > 1.3 * twin["total_params"]
    assert 0.0 <= models["fusion-moe"]["metrics"]["vqa/accuracy"] <= 1.0
    assert "captioning/bleu4" in models["decoder-moe"]["metrics"]


def test_quick_mnist_demo(tmp_path, capsys):
    assert main(["demo", "mnist", "--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "moe (top-2 of 8)" in printed and "dense" in printed and "expert load" in printed


@pytest.mark.slow
def test_quick_detection_demo(tmp_path, capsys):
    out = tmp_path / "det"
    assert main(["demo", "detection", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"Report: {out / 'report.md'}" in printed and "mAP@0.5" in printed
    report = (out / "report.md").read_text()
    assert "| dense |" in report and "| moe |" in report and "![detections](boxes.png)" in report
    assert "AP per class" in report and "red circle" in report
    picture = np.asarray(Image.open(out / "boxes.png"))
    assert picture.shape[0] > 2 * 256 and picture.shape[1] > 8 * 256  # 2 rows of 8 scenes
    models = json.loads((out / "results.json").read_text())["models"]
    dense, moe = models["dense"], models["moe"]
    assert abs(moe["active_params"] - dense["active_params"]) / dense["active_params"] < 0.02
    assert moe["total_params"] > 1.3 * dense["total_params"]
    for m in (dense, moe):
        assert 0.0 <= m["eval"]["detection/mAP50"] <= 1.0
        assert (out / m["name"] / "model" / "model.safetensors").is_file()
    assert any(k.startswith("object_routing/") for k in moe["eval"])
