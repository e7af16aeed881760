"""Datasets by name and the small error-report type."""

import pytest

from vlmoe.data import (
    DataError,
    DigitsDataset,
    ErrorReport,
    ManifestDataset,
    MnistDataset,
    ShapesConfig,
    ShapesDataset,
    load_dataset,
    write_shapes,
)


def test_load_dataset_by_name(tmp_path):
    ds = load_dataset("shapes", "val", num=7, shapes=ShapesConfig(max_objects=2))
    assert isinstance(ds, ShapesDataset) and len(ds) == 7 and ds.split == "val"
    assert isinstance(load_dataset("mnist", "test"), MnistDataset)
    assert isinstance(load_dataset("digits", "all"), DigitsDataset)
    write_shapes(tmp_path, 3)
    assert isinstance(load_dataset(str(tmp_path)), ManifestDataset)
    assert len(load_dataset(str(tmp_path / "manifest.jsonl"))) == 3
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet")


def test_error_report_and_data_error():
    e = DataError("bad box", "m.jsonl", "line 4")
    assert str(e) == "m.jsonl (line 4): bad box" and isinstance(e, ValueError)
    assert (e.path, e.where, e.reason) == ("m.jsonl", "line 4", "bad box")
    r = ErrorReport(max_reasons=2)
    assert not r
    for k in range(5):
        r.handle(DataError(f"e{k}"), "skip")
    assert r and r.skipped == 5 and r.reasons == ["e0", "e1"]
    with pytest.raises(DataError, match="e9"):
        r.handle(DataError("e9"), "raise")
