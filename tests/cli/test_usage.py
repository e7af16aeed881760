"""User mistakes are usage errors: one plain line, exit code 2, a suggestion where one helps;
and what a run shows a newcomer (its summary, the heads it trained, the data it uses)."""

import shutil

import pytest

from conftest import TINY
from vlmoe.cli.main import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_typos_get_suggestions(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--preset", "fusion-debg", "--out", str(tmp_path / "a"))
    assert code == 2 and "did you mean 'fusion-debug'" in err and "Traceback" not in err
    code, _, err = run(capsys, "train", "--set", "train.stepz=3", "--out", str(tmp_path / "b"))
    assert code == 2 and "did you mean 'train.steps'" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_wrong_model_for_a_command(capsys, fusion_run, scene_png):
    code, _, err = run(capsys, "generate", str(fusion_run), "--image", str(scene_png))
    assert code == 2 and "does not generate text" in err and "ValueError" not in err


def test_vqa_questions_are_checked(capsys, fusion_run, scene_png):
    code, _, err = run(
        capsys, "predict", str(fusion_run), "--image", str(scene_png), "--question", " "
    )
    # the fusion run trained both heads: no question means the label
    assert code == 0
    long = "is the " + "very " * 40 + "big circle red?"
    code, out, err = run(
        capsys, "predict", str(fusion_run), "--image", str(scene_png), "--question", long
    )
    assert code == 0 and out.startswith("answer: ")
    assert "so it was cut to its first 15 tokens" in err  # said, not silent


def test_vqa_only_run_shows_no_untrained_label(capsys, tmp_path, scene_png):
    out = tmp_path / "vqa"
    assert (
        main(
            [
                "train",
                "--preset",
                "fusion-debug",
                "--task",
                "vqa",
                "--steps",
                "1",
                "--out",
                str(out),
                *TINY,
            ]
        )
        == 0
    )
    capsys.readouterr()
    code, text, _ = run(
        capsys,
        "predict",
        str(out),
        "--image",
        str(scene_png),
        "--question",
        "what colour is the star?",
    )
    assert code == 0 and text.startswith("answer: ") and "label:" not in text
    code, _, err = run(capsys, "predict", str(out), "--image", str(scene_png))
    assert code == 2 and "ask a question" in err


def test_negative_temperature_refused(capsys, decoder_run, scene_png):
    code, _, err = run(
        capsys, "generate", str(decoder_run), "--image", str(scene_png), "--temperature", "-1"
    )
    assert code == 2 and "--temperature must be >= 0" in err


def test_missing_tokenizer_is_named(capsys, decoder_run, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(decoder_run / "model", model)
    (model / "tokenizer.json").unlink()
    code, _, err = run(capsys, "eval", str(model))
    assert code == 2 and "no tokenizer.json" in err and "AttributeError" not in err


def test_inspect_of_a_dense_model_is_a_usage_error(capsys, tmp_path, scene_png):
    out = tmp_path / "dense"
    assert main(["train", "--preset", "vit-debug", "--steps", "1", "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    code, _, err = run(capsys, "inspect", str(out), "--image", str(scene_png))
    assert code == 2 and "no MoE layers" in err


def test_init_from_trains_on_the_source_runs_data(capsys, tmp_path):
    data = tmp_path / "data"
    assert main(["data", "shapes", str(data), "--num", "24", "-q"]) == 0
    dense = tmp_path / "dense"
    args = ["--data", "jsonl", "--data-path", str(data / "manifest.jsonl")]
    assert (
        main(
            ["train", "--preset", "fusion-debug", "--steps", "1", "--out", str(dense), *args, *TINY]
        )
        == 0
    )
    assert (
        main(["upcycle", str(dense), str(tmp_path / "up"), "--num-experts", "4", "--top-k", "2"])
        == 0
    )
    capsys.readouterr()
    code, text, _ = run(
        capsys,
        "train",
        "--init-from",
        str(tmp_path / "up"),
        "--steps",
        "1",
        "--out",
        str(tmp_path / "tuned"),
        "-q",
    )
    assert code == 0
    assert f"data:   jsonl ({data / 'manifest.jsonl'})" in text


@pytest.mark.parametrize("flags", [["--resume", "--overwrite"]])
def test_contradicting_flags(capsys, tmp_path, flags):
    code, _, err = run(capsys, "train", "--out", str(tmp_path), *flags)
    assert code == 2 and "contradict" in err


def test_train_help_names_every_task_and_dataset():
    import argparse

    from vlmoe.cli.train import add_arguments
    from vlmoe.data.registry import DATASET_NAMES
    from vlmoe.tasks import get_task, task_names

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    helps = {a.dest: a.help for a in parser._actions}
    built_in = {n for n in task_names() if get_task(n).__module__.startswith("vlmoe.tasks.")}
    assert built_in <= {t.strip() for t in helps["task"].split("(")[0].split("|")}
    assert set(DATASET_NAMES) <= {d.strip() for d in helps["data"].split("|")}
