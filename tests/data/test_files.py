"""Users' files: JSONL manifests, COCO JSON, class folders; round trips and every bad input."""

import json
import logging

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vlmoe.data import (
    CocoDataset,
    DataError,
    ImageFolderDataset,
    ManifestDataset,
    ShapesConfig,
    ShapesDataset,
    cli_write,
    load_dataset,
    write_coco,
    write_manifest,
    write_shapes,
)


def same_sample(a, b, with_qa=True):
    assert a.image.tobytes() == b.image.tobytes() and a.image.shape == b.image.shape
    assert a.captions == b.captions
    assert [bx.xyxy + (bx.label,) for bx in a.boxes] == [bx.xyxy + (bx.label,) for bx in b.boxes]
    if with_qa:
        assert a.qa == b.qa and a.refs == b.refs and a.label == b.label


def test_write_shapes_round_trip(tmp_path):
    cfg = ShapesConfig(seed=5)
    report = write_shapes(tmp_path, 12, split="val", cfg=cfg)
    assert report.num == 12 and report.manifest.name == "manifest.jsonl"
    assert len(list((tmp_path / "images").glob("*.png"))) == 12
    streamed = ShapesDataset(cfg, "val", 12)
    loaded = ManifestDataset(report.manifest)
    assert len(loaded) == 12 and not loaded.errors
    assert loaded.label_names == streamed.label_names
    assert loaded.answer_vocab == streamed.answer_vocab
    assert loaded.box_label_names == streamed.box_label_names
    for i in range(12):
        same_sample(streamed[i], loaded[i])
        assert loaded[i].meta["scene"] == streamed[i].meta["scene"].to_dict()
    saved = json.loads((tmp_path / "shapes_config.json").read_text())
    assert saved["seed"] == 5 and saved["split"] == "val"


def test_cli_write(tmp_path):
    report = cli_write(tmp_path / "out", 5, seed=3, image_size=32, holdout=["red:circle"])
    loaded = ManifestDataset(report.manifest)
    cfg = ShapesConfig(seed=3, image_size=32, holdout=(("red", "circle"),))
    for i in range(5):
        same_sample(loaded[i], ShapesDataset(cfg, "train", 5)[i])
    assert loaded[0].image.shape == (32, 32, 3)
    (tmp_path / "c.json").write_text(json.dumps({"max_objects": 2, "image_size": 48}))
    r2 = cli_write(tmp_path / "out2", 3, config=tmp_path / "c.json")
    assert ManifestDataset(r2.manifest)[0].image.shape == (48, 48, 3)
    with pytest.raises(ValueError, match="colour:shape"):
        cli_write(tmp_path / "x", 1, holdout=["red-circle"])
    with pytest.raises(ValueError, match="ShapesConfig.image_size"):
        cli_write(tmp_path / "x", 1, image_size=4)


def test_manifest_written_from_any_dataset_round_trips(tmp_path):
    samples = [ShapesDataset(ShapesConfig(), "train", 4)[i] for i in range(4)]
    manifest = write_manifest(samples, tmp_path)  # no sidecars: names from the data
    ds = ManifestDataset(manifest)
    for a, b in zip(samples, ds, strict=True):
        same_sample(a, b, with_qa=False)
        assert a.qa == b.qa and a.refs == b.refs
    assert ds.label_names == ["0", "1", "2", "3"][: len(ds.label_names)]


def test_coco_round_trip(tmp_path):
    samples = [ShapesDataset(ShapesConfig(), "test", 6)[i] for i in range(6)]
    caps, inst = write_coco(samples, tmp_path)
    ds = CocoDataset(tmp_path / "images", captions=caps, instances=inst)
    assert len(ds) == 6
    for a, b in zip(samples, ds, strict=True):
        same_sample(a, b, with_qa=False)
    assert ds.box_label_names == sorted({b.label for s in samples for b in s.boxes})
    with pytest.raises(ValueError, match="not in categories"):
        write_coco(samples, tmp_path / "x", categories=["red circle"])
    only_caps = CocoDataset(tmp_path / "images", captions=caps)
    assert only_caps[0].captions == samples[0].captions and only_caps[0].boxes == []


# ---------------------------------------------------------------------------------------------
# bad manifests


@pytest.fixture
def good_dir(tmp_path):
    img = np.zeros((10, 20, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(img).save(tmp_path / "b.png")
    return tmp_path


def write_lines(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


BAD_LINES = [
    ("{not json", "invalid JSON"),
    ([1, 2], "expected a JSON object"),
    ({"image": "a.png", "colour": "red"}, r"unknown field\(s\) \['colour'\]"),
    ({"caption": "x"}, "field 'image'"),
    ({"image": 3}, "field 'image'"),
    ({"image": "a.png", "caption": 7}, "field 'caption' must be a string or a list"),
    ({"image": "a.png", "caption": ["ok", 2]}, "field 'caption'"),
    ({"image": "a.png", "question": ["q1", "q2"], "answer": "a"}, "2 question"),
    ({"image": "a.png", "label": True}, "field 'label'"),
    ({"image": "a.png", "label": 1.5}, "field 'label'"),
    ({"image": "a.png", "boxes": [[0, 0, 5, 5]]}, "box 0 must be"),
    ({"image": "a.png", "boxes": [[0, 0, "5", 5, "x"]]}, "box 0 must be"),
    ({"image": "a.png", "boxes": [[5, 0, 2, 5, "x"]]}, "x1 > x0"),
    ({"image": "a.png", "boxes": {"a": 1}}, "field 'boxes' must be a list"),
    (
        {"image": "a.png", "boxes": [[0, 0, 5, 5, "x"]], "refs": [["the x", 3]]},
        "ref 0 points at box 3",
    ),
    ({"image": "a.png", "meta": [1]}, "field 'meta'"),
    ({"image": "missing.png"}, "missing.png.*not found"),
    ({"image": "a.png", "boxes": [[0, 0, 25, 5, "x"]]}, "box 0 .* outside the image of size 20x10"),
]


@pytest.mark.parametrize("line, message", BAD_LINES)
def test_bad_manifest_line_raises_naming_file_and_line(good_dir, line, message):
    m = write_lines(good_dir / "m.jsonl", [{"image": "b.png", "caption": "fine"}, "", line])
    with pytest.raises(DataError, match=message) as e:
        ManifestDataset(m)
    assert "m.jsonl" in str(e.value) and "line 3" in str(e.value)


def test_skip_policy_counts_and_reports(good_dir, caplog):
    lines = (
        [{"image": "a.png", "caption": "ok"}]
        + [line for line, _ in BAD_LINES]
        + [{"image": "b.png"}]
    )
    m = write_lines(good_dir / "m.jsonl", lines)
    with caplog.at_level(logging.WARNING):
        ds = ManifestDataset(m, on_error="skip")
    assert len(ds) == 2
    assert ds.errors.skipped == len(BAD_LINES)
    assert len(ds.errors.reasons) == 10 and "line 2" in ds.errors.reasons[0]
    assert f"skipped {len(BAD_LINES)} of {len(BAD_LINES) + 2}" in caplog.text


def test_label_names_and_unknown_label(good_dir):
    m = write_lines(
        good_dir / "m.jsonl",
        [{"image": "a.png", "label": "dog"}, {"image": "b.png", "label": "cat"}],
    )
    ds = ManifestDataset(m)
    assert ds.label_names == ["cat", "dog"] and [s.label for s in ds] == [1, 0]
    (good_dir / "labels.txt").write_text("dog\ncat\n")
    assert [s.label for s in ManifestDataset(m)] == [0, 1]
    with pytest.raises(DataError, match="line 2.*label 'cat' is not one of"):
        ManifestDataset(m, label_names=["dog"])
    m2 = write_lines(good_dir / "n.jsonl", [{"image": "a.png", "label": 4}])
    with pytest.raises(DataError, match="label id 4 out of range"):
        ManifestDataset(m2, label_names=["a", "b"])


def test_truncated_and_corrupt_images_in_manifest(good_dir):
    noise = np.random.default_rng(0).integers(0, 256, (10, 20, 3), dtype=np.uint8)
    Image.fromarray(noise).save(good_dir / "t.png")
    data = (good_dir / "t.png").read_bytes()
    (good_dir / "t.png").write_bytes(data[: len(data) // 2])
    (good_dir / "c.png").write_bytes(b"garbage")
    lines = [{"image": "a.png"}, {"image": "t.png"}, {"image": "c.png"}, {"image": "b.png"}]
    m = write_lines(good_dir / "m.jsonl", lines)
    with pytest.raises(DataError, match="c.png.*line 2.*not a readable image"):
        ManifestDataset(write_lines(good_dir / "c.jsonl", [{"image": "a.png"}, {"image": "c.png"}]))
    for check in ("header", "decode"):  # the header check finds a PNG without its end
        with pytest.raises(DataError, match="t.png.*line 2.*truncated"):
            ManifestDataset(m, check=check, on_error="raise")
        ds = ManifestDataset(m, check=check, on_error="skip")
        assert len(ds) == 2 and ds.errors.skipped == 2
        assert [s.meta["file"][-5:] for s in ds] == ["a.png", "b.png"]
    # Unchecked, the bad file is found at load time: an error naming it, never another sample.
    lazy = ManifestDataset(m, check="none", on_error="skip")
    assert len(lazy) == 4 and lazy.errors.skipped == 0
    with pytest.raises(DataError, match=r"t.png.*line 2.*check='decode'"):
        lazy[1]
    assert lazy.errors.skipped == 0
    strict = ManifestDataset(m, check="none")
    with pytest.raises(DataError, match="t.png"):
        strict[1]


@pytest.mark.parametrize("fmt", ["png", "jpg", "bmp", "webp"])
def test_skip_drops_exactly_the_truncated_images(tmp_path, fmt):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(12):
        noise = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(noise).save(tmp_path / f"{i}.{fmt}")
        lines.append({"image": f"{i}.{fmt}", "caption": f"sample {i}"})
    for i in (3, 7):  # cut two files short: their headers stay readable
        data = (tmp_path / f"{i}.{fmt}").read_bytes()
        (tmp_path / f"{i}.{fmt}").write_bytes(data[: len(data) * 2 // 3])
    m = write_lines(tmp_path / "m.jsonl", lines)
    ds = ManifestDataset(m, on_error="skip")  # the default header check
    assert ds.errors.skipped == 2 and len(ds) == 10
    texts = [s.captions[0] for s in ds]
    assert texts == [f"sample {i}" for i in range(12) if i not in (3, 7)]  # no duplicate
    assert ds.errors.skipped == 2  # loading every sample counted nothing twice


def test_header_check_accepts_bytes_after_the_end_marker(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.jpg")
    with open(tmp_path / "a.jpg", "ab") as f:
        f.write(b"\0" * 10_000)  # a camera trailer after the JPEG's end marker
    m = write_lines(tmp_path / "m.jsonl", [{"image": "a.jpg"}])
    assert len(ManifestDataset(m)) == 1


def test_bomb_in_manifest_refused(good_dir):
    from tests.data.test_images import png_with_header

    png_with_header(good_dir / "bomb.png", 20_000, 5_000)
    m = write_lines(good_dir / "m.jsonl", [{"image": "a.png"}, {"image": "bomb.png"}])
    with pytest.raises(DataError, match="bomb.png.*line 2.*max_pixels"):
        ManifestDataset(m)
    assert len(ManifestDataset(m, on_error="skip")) == 1


def test_missing_manifest_and_all_bad(tmp_path):
    with pytest.raises(DataError, match="manifest file not found"):
        ManifestDataset(tmp_path / "none.jsonl")
    m = write_lines(tmp_path / "m.jsonl", [{"image": "x.png"}])
    with pytest.raises(DataError, match="no usable samples"):
        ManifestDataset(m, on_error="skip")
    with pytest.raises(ValueError, match="on_error"):
        ManifestDataset(m, on_error="ignore")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# bad COCO files


def coco_files(tmp_path, caps_ann=None, inst_ann=None, images=None, cats=None):
    Image.fromarray(np.zeros((10, 20, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    images = (
        images
        if images is not None
        else [{"id": 1, "file_name": "a.png", "width": 20, "height": 10}]
    )
    c = tmp_path / "captions.json"
    c.write_text(json.dumps({"images": images, "annotations": caps_ann or []}))
    i = tmp_path / "instances.json"
    cats = cats if cats is not None else [{"id": 1, "name": "thing"}]
    i.write_text(json.dumps({"images": images, "annotations": inst_ann or [], "categories": cats}))
    return c, i


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"caps_ann": [{"image_id": 9, "caption": "x"}]},
            r"captions.json \(annotations\[0\]\).*image_id 9",
        ),
        ({"caps_ann": [{"image_id": 1, "caption": 5}]}, "field 'caption' must be a string"),
        (
            {"inst_ann": [{"image_id": 1, "bbox": [0, 0, 5], "category_id": 1}]},
            r"annotations\[0\].*bbox",
        ),
        (
            {"inst_ann": [{"image_id": 1, "bbox": [15, 0, 10, 5], "category_id": 1}]},
            "outside the image",
        ),
        ({"inst_ann": [{"image_id": 1, "bbox": [0, 0, 5, 5], "category_id": 7}]}, "category_id 7"),
        ({"inst_ann": [{"image_id": 1, "bbox": [0, 0, 0, 5], "category_id": 1}]}, "no area"),
        ({"inst_ann": [{"bbox": [0, 0, 1, 1], "category_id": 1}]}, "missing field 'image_id'"),
        ({"images": [{"id": "1", "file_name": "a.png"}]}, r"images\[0\].*field 'id'"),
        ({"images": [{"id": 1, "file_name": "gone.png"}]}, "gone.png.*not found"),
    ],
)
def test_bad_coco(tmp_path, kwargs, message):
    c, i = coco_files(tmp_path, **kwargs)
    with pytest.raises(DataError, match=message):
        CocoDataset(tmp_path, captions=c, instances=i)


def test_coco_invalid_json_and_skip(tmp_path):
    c, i = coco_files(
        tmp_path, inst_ann=[{"image_id": 1, "bbox": [15, 0, 10, 5], "category_id": 1}]
    )
    ds = CocoDataset(tmp_path, captions=c, instances=i, on_error="skip")
    assert len(ds) == 1 and ds.errors.skipped == 1 and ds[0].boxes == []
    c.write_text('{"images": [],\n "annotations": [,]}')
    with pytest.raises(DataError, match=r"captions.json \(line 2\).*invalid JSON"):
        CocoDataset(tmp_path, captions=c)
    with pytest.raises(DataError, match="not found"):
        CocoDataset(tmp_path, captions=tmp_path / "nope.json")
    with pytest.raises(ValueError, match="captions"):
        CocoDataset(tmp_path)


# ---------------------------------------------------------------------------------------------
# class folders


def test_image_folder(tmp_path):
    for cls, colour in (("red_things", (255, 0, 0)), ("blue", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        for k in range(2):
            Image.new("RGB", (8, 6), colour).save(tmp_path / cls / f"{k}.png")
    (tmp_path / "blue" / "notes.txt").write_text("not an image")
    (tmp_path / "blue" / "bad.jpg").write_bytes(b"xx")
    with pytest.raises(DataError, match="bad.jpg"):
        ImageFolderDataset(tmp_path)
    ds = ImageFolderDataset(tmp_path, on_error="skip")
    assert ds.label_names == ["blue", "red_things"] and len(ds) == 4 and ds.errors.skipped == 1
    s = ds[3]
    assert s.label == 1 and s.captions == ["a photo of a red things."]
    assert s.qa[0].answer == "red things" and s.image[0, 0].tolist() == [255, 0, 0]
    assert isinstance(load_dataset(str(tmp_path), on_error="skip"), ImageFolderDataset)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        ImageFolderDataset(tmp_path / "nope")
    with pytest.raises(DataError, match="no class sub-folders"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        ImageFolderDataset(tmp_path)


_scalar = st.none() | st.booleans() | st.integers(-5, 30) | st.floats(-5, 30) | st.text(max_size=5)
_json = st.recursive(
    _scalar,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
_FIELDS = ["image", "caption", "question", "answer", "label", "boxes", "refs", "meta", "x"]


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(record=st.dictionaries(st.sampled_from(_FIELDS), _json | st.just("a.png"), max_size=6))
def test_property_any_record_parses_or_raises_data_error(good_dir, record):
    from vlmoe.data.manifest import parse_record

    try:
        rec, _ = parse_record(record, good_dir, good_dir / "m.jsonl", 1)
    except DataError as e:
        assert "m.jsonl (line 1)" in str(e)
    else:
        assert rec.path.name == record["image"]


def test_first_error_is_the_first_bad_line(tmp_path):
    """A missing image on line 2 is reported before invalid JSON on line 4: errors come in
    file order (the JSON used to be reported first)."""
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "m.jsonl").write_text(
        '{"image": "a.png"}\n{"image": "missing.png"}\n{"image": "a.png"}\nnot json\n'
    )
    with pytest.raises(DataError, match=r"m.jsonl line 2\): image file not found"):
        ManifestDataset(tmp_path / "m.jsonl")
    skipped = ManifestDataset(tmp_path / "m.jsonl", on_error="skip")
    assert len(skipped) == 2 and skipped.errors.skipped == 2
