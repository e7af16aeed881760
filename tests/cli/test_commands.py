"""Each subcommand in-process through `vlmoe.cli.main.main`, on tiny runs."""

import json

from vlmoe.cli.main import main


def test_help_is_for_newcomers(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for word in (
        "Mixture-of-Experts",
        "vlmoe demo --quick",
        "train",
        "predict",
        "inspect",
        "upcycle",
    ):
        assert word in out
    assert main([]) == 0
    for cmd in ("train", "eval", "predict", "generate", "inspect", "upcycle", "data", "demo"):
        assert main([cmd, "--help"]) == 0
        assert "usage: vlmoe " + cmd in capsys.readouterr().out


def test_train_writes_a_run(fusion_run, capsys):
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "eval.json",
        "model/config.json",
        "model/model.safetensors",
        "model/tokenizer.json",
        "model/task.json",
    ):
        assert (fusion_run / name).is_file(), name
    results = json.loads((fusion_run / "eval.json").read_text())
    assert "vqa/accuracy" in results and "classification/accuracy" in results
    assert any(k.endswith("tokens_per_expert") for k in results)
    checkpoints = list((fusion_run / "checkpoints").iterdir())
    # periodic checkpoints by default (about every tenth of the run), the last two kept
    assert len(checkpoints) == 2 and all((c / "task.json").is_file() for c in checkpoints)


def test_print_config_and_presets(capsys):
    assert main(["train", "--preset", "vit-debug", "--set", "optim.lr=3e-4", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "preset: vit-debug" in out and "lr: 0.0003" in out
    assert main(["train", "--list-presets"]) == 0
    assert "fusion-debug-moe" in capsys.readouterr().out


def test_resume_continues(fusion_run, capsys):
    assert main(["train", "--out", str(fusion_run), "--resume", "--steps", "3", "-q"]) == 0
    assert "trained to step 3" in capsys.readouterr().out
    steps = [
        json.loads(line)["step"] for line in (fusion_run / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps[:2] == [1, 2] and 3 in steps


def test_predict_eval_inspect(fusion_run, scene_png, capsys, tmp_path):
    assert main(["predict", str(fusion_run), "--image", str(scene_png)]) == 0
    assert capsys.readouterr().out.startswith("label: ")
    assert (
        main(
            [
                "predict",
                str(fusion_run),
                "--image",
                str(scene_png),
                "--question",
                "what colour is the star?",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith("answer: ")
    out = tmp_path / "e.json"
    assert main(["eval", str(fusion_run), "--out", str(out), "--max-examples", "8", "-q"]) == 0
    assert "vqa/accuracy" in json.loads(out.read_text())
    assert (
        main(
            [
                "inspect",
                str(fusion_run),
                "--image",
                str(scene_png),
                "--text",
                "a red star",
                "--out",
                str(tmp_path / "insp"),
                "-q",
            ]
        )
        == 0
    )
    assert (tmp_path / "insp" / "routing.png").is_file()


def test_generate_and_upcycle(decoder_run, scene_png, capsys, tmp_path):
    assert (
        main(["generate", str(decoder_run), "--image", str(scene_png), "--max-new-tokens", "3"])
        == 0
    )
    generated = capsys.readouterr().out.strip()
    assert main(["predict", str(decoder_run), "--image", str(scene_png)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("caption:")
    # Both are greedy: the 3 generated tokens begin the full caption.
    assert out.removeprefix("caption:").strip().startswith(generated)
    dense = tmp_path / "dense"
    assert (
        main(
            [
                "train",
                "--preset",
                "fusion-debug",
                "--steps",
                "1",
                "--out",
                str(dense),
                "--set",
                "data.num_train=8",
                "--set",
                "data.num_eval=4",
                "--batch-size",
                "4",
                "-q",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "upcycle",
                str(dense),
                str(tmp_path / "up"),
                "--num-experts",
                "4",
                "--top-k",
                "2",
                "-q",
            ]
        )
        == 0
    )
    assert "upcycled" in capsys.readouterr().out
    assert (
        main(
            [
                "predict",
                str(tmp_path / "up"),
                "--image",
                str(scene_png),
                "--question",
                "is there a star?",
            ]
        )
        == 0
    )


def test_data_writes_manifest_that_trains(tmp_path, capsys):
    assert (
        main(["data", "shapes", str(tmp_path / "d"), "--num", "12", "--image-size", "16", "-q"])
        == 0
    )
    manifest = tmp_path / "d" / "manifest.jsonl"
    assert manifest.is_file()
    assert (
        main(
            [
                "train",
                "--preset",
                "vit-debug",
                "--data",
                "jsonl",
                "--data-path",
                str(manifest),
                "--task",
                "classification",
                "--steps",
                "1",
                "--batch-size",
                "4",
                "--set",
                "data.eval_fraction=0.25",
                "--out",
                str(tmp_path / "r"),
                "-q",
            ]
        )
        == 0
    )
    assert (tmp_path / "r" / "model" / "task.json").is_file()
