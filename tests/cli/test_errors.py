"""Every bad input is one line on stderr and a non-zero exit code, never a traceback."""

import shutil

import pytest

from vlmoe.cli.main import main


def _one_error(capsys, argv, *expected):
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code != 0, err
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_missing_corrupt_and_wrong_images(fusion_run, tmp_path, capsys):
    _one_error(
        capsys, ["predict", str(fusion_run), "--image", str(tmp_path / "nope.png")], "not found"
    )
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    _one_error(capsys, ["predict", str(fusion_run), "--image", str(bad)], "bad.png")
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    _one_error(capsys, ["predict", str(fusion_run), "--image", str(txt)], "expected a")
    _one_error(capsys, ["inspect", str(fusion_run), "--image", str(tmp_path)], "directory")


def test_missing_corrupt_and_mismatched_checkpoints(fusion_run, scene_png, tmp_path, capsys):
    _one_error(capsys, ["predict", str(tmp_path / "no-run"), "--image", str(scene_png)], "no-run")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(fusion_run / "model", corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 64)
    _one_error(capsys, ["predict", str(corrupt), "--image", str(scene_png)], "model.safetensors")
    mismatched = tmp_path / "mismatched"
    shutil.copytree(fusion_run / "model", mismatched)
    cfg = (mismatched / "config.json").read_text().replace('"num_layers": 2', '"num_layers": 3')
    (mismatched / "config.json").write_text(cfg)
    _one_error(capsys, ["eval", str(mismatched)], "missing")
    broken = tmp_path / "broken"
    shutil.copytree(fusion_run / "model", broken)
    (broken / "config.json").write_text("{not json")
    _one_error(capsys, ["generate", str(broken), "--image", str(scene_png)], "config.json")
    _one_error(capsys, ["generate", str(fusion_run), "--image", str(scene_png)], "decoder")
    _one_error(
        capsys, ["train", "--out", str(tmp_path / "fresh"), "--resume", "-q"], "nothing to resume"
    )


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "--set", "optim.lr=-1"], "optim.lr"),
        (["train", "--set", "train.stepz=3"], "train.stepz"),
        (["train", "--set", "train.precision=fp8"], "fp8"),
        (["train", "--set", "nonsense"], "key=value"),
        (["train", "--preset", "no-such-preset", "--steps", "1"], "no-such-preset"),
        (["train", "--data", "jsonl", "--steps", "1"], "data.path"),
        (["train", "notthere.yaml"], "notthere.yaml"),
        (["train", "config.txt"], ".yaml"),
        (["upcycle", "a", "b", "--top-k", "9"], "top-k"),
        (["data", "shapes", "x", "--num", "0"], "--num"),
        (["train", "--set", "data.shapes.max_objects=12"], "ShapesConfig.max_objects=12"),
        (["train", "--set", "data.shapes.colours=[red, teal]"], "'teal'"),
        (["train", "--set", "data.shapes.seed=3"], "data.seed"),
        (["train", "--set", "data.augment.hflip=always"], "data.augment.hflip"),
        (["train", "--set", "data.augment.crop_scale=[0, 1]"], "augment.crop_scale"),
        (["train", "--set", "data.options={max_objects: 6}"], "data.options"),
    ],
)
def test_invalid_configs(argv, expected, capsys):
    _one_error(capsys, argv, expected)


def test_invalid_yaml_and_unknown_model_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    _one_error(capsys, ["train", str(bad)], "bad.yaml")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("train:\n  steps: many\n")
    _one_error(capsys, ["train", str(wrong)], "train.steps")
    _one_error(
        capsys,
        [
            "train",
            "--preset",
            "vit-debug",
            "--set",
            "model.transformer.bogus=1",
            "--steps",
            "1",
            "--set",
            "data.num_train=4",
            "--out",
            str(tmp_path / "r"),
        ],
        "bogus",
    )


def test_bad_manifest(tmp_path, capsys):
    m = tmp_path / "m.jsonl"
    m.write_text('{"image": "missing.png", "label": "cat"}\n')
    _one_error(
        capsys,
        [
            "train",
            "--preset",
            "vit-debug",
            "--data",
            "jsonl",
            "--data-path",
            str(m),
            "--task",
            "classification",
            "--steps",
            "1",
            "--out",
            str(tmp_path / "r"),
        ],
        "missing.png",
    )


def test_usage_errors_exit_2(capsys):
    assert main(["predict"]) == 2
    assert main(["no-such-command"]) == 2
    capsys.readouterr()
