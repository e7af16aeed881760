import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY = [
    "--set",
    "data.num_train=24",
    "--set",
    "data.num_eval=6",
    "--set",
    "train.log_every=1",
    "--set",
    "eval.max_new_tokens=4",
    "--batch-size",
    "4",
    "-q",
]


@pytest.fixture(scope="session")
def fusion_run(tmp_path_factory):
    """A fusion MoE model trained for 2 steps through `vlmoe train` (in-process)."""
    from vlmoe.cli.main import main

    out = tmp_path_factory.mktemp("runs") / "fusion"
    assert (
        main(["train", "--preset", "fusion-debug-moe", "--steps", "2", "--out", str(out), *TINY])
        == 0
    )
    return out


@pytest.fixture(scope="session")
def decoder_run(tmp_path_factory):
    from vlmoe.cli.main import main

    out = tmp_path_factory.mktemp("runs") / "decoder"
    assert (
        main(["train", "--preset", "decoder-debug-moe", "--steps", "2", "--out", str(out), *TINY])
        == 0
    )
    return out


@pytest.fixture(scope="session")
def scene_png(tmp_path_factory):
    from PIL import Image

    from vlmoe.data.shapes import ShapesConfig
    from vlmoe.data.shapes_data import make_sample

    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(make_sample(ShapesConfig(image_size=32), "test", 0).image).save(path)
    return path
