"""`vlmoe train --task detection|grounding`, `vlmoe eval` and `vlmoe predict` writing boxes."""

import json

import numpy as np
from PIL import Image

from vlmoe.cli.main import main

TINY = ["--set", "data.num_train=16", "--set", "data.num_eval=4", "--batch-size", "4", "-q"]
SCENES = ["--set", "data.shapes={max_objects: 6, occlusion: 0.3, large_objects: any}"]


def test_detection_train_eval_predict(tmp_path, scene_png, capsys):
    run = tmp_path / "det"
    args = ["train", "--preset", "det-debug-moe", "--task", "detection", "--steps", "2"]
    assert main([*args, "--out", str(run), *SCENES, *TINY]) == 0
    assert main(["eval", str(run)]) == 0
    assert "detection/mAP50" in capsys.readouterr().out
    out = tmp_path / "pred" / "boxes.png"
    assert (
        main(
            ["predict", str(run), "--image", str(scene_png), "--out", str(out), "--threshold", "0"]
        )
        == 0
    )
    assert "boxes:" in capsys.readouterr().out
    assert np.asarray(Image.open(out)).ndim == 3
    assert "boxes" in json.loads(out.with_suffix(".json").read_text())
    # Routing of the backbone's patches (MoE) through the task's predict pass.
    insp = tmp_path / "inspect"
    assert main(["inspect", str(run), "--image", str(scene_png), "--out", str(insp)]) == 0
    assert (insp / "routing.png").is_file()


def test_grounding_train_and_predict(tmp_path, scene_png, capsys):
    run = tmp_path / "ground"
    args = ["train", "--preset", "decoder-debug", "--task", "grounding", "--steps", "2"]
    assert main([*args, "--out", str(run), *TINY]) == 0
    assert "grounding/acc@0.5" in capsys.readouterr().out
    out = tmp_path / "g.png"
    assert (
        main(
            [
                "predict",
                str(run),
                "--image",
                str(scene_png),
                "--text",
                "the red circle",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert out.with_suffix(".json").is_file()


def test_detection_trains_on_coco_instances(tmp_path, capsys):
    data = tmp_path / "coco"
    assert main(["data", "shapes", str(data), "--num", "24", "--format", "coco", "-q"]) == 0
    run = tmp_path / "det-coco"
    args = ["train", "--preset", "det-debug", "--task", "detection", "--steps", "2", "--data"]
    args += ["coco", "--data-path", str(data / "instances.json"), "--set", "data.coco=instances"]
    assert main([*args, "--out", str(run), "--batch-size", "4", "-q"]) == 0
    assert main(["eval", str(run)]) == 0
    assert "detection/mAP50" in capsys.readouterr().out


def test_grounding_recipe_options_from_the_command_line(tmp_path, scene_png, capsys):
    """The grounding recipe's options: location bins and soft target (`grounding.*`), the
    prompt before the image and grid positions (model config); the bins survive in the saved
    tokenizer, so predict reads them back."""
    run = tmp_path / "ground"
    args = ["train", "--preset", "decoder-debug", "--task", "grounding", "--steps", "2"]
    options = ["grounding.num_bins=8", "grounding.loc_sigma=1.0", "model.image_token_id=4"]
    options.append("model.image_positions=sincos")
    sets = [x for kv in options for x in ("--set", kv)]
    assert main([*args, "--out", str(run), *TINY, *sets]) == 0
    assert "grounding/acc@0.5" in capsys.readouterr().out
    tokenizer = json.loads(next(run.rglob("tokenizer.json")).read_text())
    locs = [t["content"] for t in tokenizer["added_tokens"] if t["content"].startswith("<loc")]
    assert locs == [f"<loc{k}>" for k in range(8)]
    out = tmp_path / "g.png"
    assert (
        main(
            [
                "predict",
                str(run),
                "--image",
                str(scene_png),
                "--text",
                "the red circle",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert out.with_suffix(".json").is_file()
