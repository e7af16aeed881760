"""MoE-LLaVA's start: a pretrained vision tower and LM composed into a decoder, the LM's
tokenizer with an <image> token, upcycling by layer choice, and `vlmoe import` end to end."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from tests.models.hf.helpers import build_hf_bert, build_hf_lm, build_hf_vision, rel_err
from vlmoe.cli.main import main
from vlmoe.config import MoEConfig
from vlmoe.models import Decoder, load_model, upcycle_model
from vlmoe.models.hf import compose_contrastive, compose_decoder, compose_fusion, import_model
from vlmoe.models.registry import preset_config
from vlmoe.models.upcycle import LAYER_CHOICES, choose_layers


def _save_tokenizer(directory, size: int) -> None:
    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(size - 3)]
    backend = HFTokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.save(str(directory / "tokenizer.json"))


@pytest.fixture
def hf_dirs(tmp_path):
    lm, vision = build_hf_lm("llama"), build_hf_vision("clip")
    lm.save_pretrained(tmp_path / "lm")
    vision.save_pretrained(tmp_path / "vision")
    _save_tokenizer(tmp_path / "lm", 97)  # exactly the LM's vocab_size: <image> must grow it
    return tmp_path, lm, vision


def test_tokenizer_comes_with_the_lm_and_the_vocab_grows_for_image(hf_dirs):
    root, hf, _ = hf_dirs
    model = import_model(root / "lm")
    assert model.tokenizer.image_id == 97 and model.config.vocab_size == 98
    ids = torch.tensor([model.tokenizer.encode("w1 w5 w9", add_special=False)])
    with torch.no_grad():
        assert rel_err(model(ids).logits[..., :97], hf(ids).logits) < 1e-5
    model.save_pretrained(root / "saved")
    assert load_model(root / "saved").tokenizer.image_id == 97


def test_composed_decoder_keeps_both_pretrained_parts(hf_dirs):
    root, hf_lm, hf_vision = hf_dirs
    model = compose_decoder(root / "vision", root / "lm", feature_layer=-2, image_placeholders=True)
    assert isinstance(model, Decoder) and model.config.image_token_id == 97
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        feats, _ = model.vision.forward_features(images)
        theirs = hf_vision(pixel_values=images, output_hidden_states=True).hidden_states[-2]
        assert rel_err(feats[:, 1:], theirs[:, 1:]) < 1e-5  # patch tokens of layer -2
        ids = torch.randint(3, 97, (2, 6))
        assert rel_err(model(None, ids).logits[..., :97], hf_lm(ids).logits) < 1e-5
    n = model.num_image_tokens
    prompt = torch.cat([torch.full((2, n), 97), ids], dim=1)
    out = model.generate(prompt, images=images, max_new_tokens=4)
    assert out.shape == (2, 4) and not (out == 97).any()


@pytest.mark.parametrize("choice", LAYER_CHOICES)
def test_upcycled_decoder_starts_equal(hf_dirs, choice):
    root, _, _ = hf_dirs
    dense = compose_decoder(root / "vision", root / "lm", image_placeholders=True)
    moe = upcycle_model(dense, MoEConfig(num_experts=4, top_k=2), layers=choice)
    L = dense.config.text.transformer.num_layers
    assert moe.config.text.transformer.moe_layer_ids() == choose_layers(L, choice)
    assert moe.config.vision.transformer.moe is None  # MoE-LLaVA upcycles the LM only
    images, ids = torch.randn(1, 3, 16, 16), torch.randint(3, 97, (1, 5))
    prompt = torch.cat([torch.full((1, dense.num_image_tokens), 97), ids], dim=1)
    with torch.no_grad():
        assert rel_err(moe(images, prompt).logits, dense(images, prompt).logits) < 1e-5


def test_choose_layers_follows_moe_llava():
    assert choose_layers(6, "all") == [0, 1, 2, 3, 4, 5]
    assert choose_layers(6, "every-other") == [0, 2, 4]
    assert choose_layers(6, "first-half") == [0, 1, 2]
    assert choose_layers(6, "second-half") == [3, 4, 5]


def test_cli_layer_choices_match_the_library():
    from vlmoe.cli import upcycle

    assert upcycle.LAYER_CHOICES == LAYER_CHOICES


def test_cli_import_compose_upcycle_export(hf_dirs, capsys):
    import transformers

    root, hf_lm, _ = hf_dirs
    assert (
        main(
            [
                "import",
                "--vision",
                str(root / "vision"),
                "--text",
                str(root / "lm"),
                str(root / "start"),
            ]
        )
        == 0
    )
    start = load_model(root / "start")
    assert isinstance(start, Decoder) and start.tokenizer.image_id == 97
    assert start.config.image_token_id is None  # image tokens in front by default
    assert (
        main(
            [
                "upcycle",
                str(root / "start"),
                str(root / "moe"),
                "--layers",
                "all",
                "--num-experts",
                "4",
                "--top-k",
                "2",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "import",
                "--to-hf",
                str(root / "moe"),
                str(root / "hf-out"),
                "--max-shard-size",
                "20KB",
            ]
        )
        == 0
    )
    back = transformers.AutoModelForCausalLM.from_pretrained(root / "hf-out").eval()
    assert type(back).__name__ == "MixtralForCausalLM"
    assert (root / "hf-out" / "tokenizer.json").is_file()
    ids = torch.randint(3, 97, (1, 7))
    with torch.no_grad():  # experts start as copies: the Mixtral equals the dense Llama
        assert rel_err(back(ids).logits[..., :97], hf_lm(ids).logits) < 1e-5


@pytest.fixture
def bert_dir(tmp_path):
    hf = build_hf_bert()
    hf.save_pretrained(tmp_path / "bert")
    _save_tokenizer(tmp_path / "bert", 90)
    return tmp_path / "bert", hf


def test_two_tower_contrastive_text_tower_is_the_pretrained_encoder(bert_dir):
    directory, hf = bert_dir
    base = preset_config("contrastive-debug-moe")
    model = compose_contrastive(directory, base)
    assert model.text_embed is None and model.config.max_seq_len == base.max_seq_len
    ids = torch.randint(3, 90, (3, 8))
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    with torch.no_grad():
        h = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        mean = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        want = torch.nn.functional.normalize(model.text_proj(mean), dim=-1)
        out = model(torch.randn(3, 3, 16, 16), ids, mask)
    assert rel_err(out.text_embeds, want) < 1e-5
    assert out.logits_per_image.shape == (3, 3) and out.image_moe_aux  # MoE image tower
    model.save_pretrained(directory.parent / "saved")
    again = load_model(directory.parent / "saved")
    with torch.no_grad():
        assert torch.equal(again.encode_text(ids, mask), model.encode_text(ids, mask))


def test_fusion_encoder_starts_as_the_pretrained_encoder(bert_dir):
    directory, hf = bert_dir
    model = compose_fusion(directory, preset_config("fusion-debug"))
    assert model.config.transformer.layout == "post"
    ids = torch.randint(3, 90, (2, 7))
    with torch.no_grad():
        out = model(None, ids)
        theirs = hf(input_ids=ids).last_hidden_state
    assert rel_err(out.hidden_states, theirs) < 1e-5
    assert out.vqa_logits is not None


def test_cli_import_text_encoder_with_preset(bert_dir):
    directory, _ = bert_dir
    out = directory.parent / "clip-bert"
    args = ["import", "--text", str(directory), "--preset", "contrastive-debug", str(out)]
    assert main(args) == 0
    model = load_model(out)
    assert model.config.text_tower is not None and model.tokenizer is not None


def test_cli_import_usage_errors(hf_dirs, capsys):
    root, _, _ = hf_dirs
    assert main(["import", "--vision", str(root / "vision"), str(root / "x")]) == 2
    assert "--vision needs --text" in capsys.readouterr().err
    assert main(["import", "--text", str(root / "lm"), str(root / "x")]) == 2
    assert "--text needs --vision" in capsys.readouterr().err
    assert main(["import", "--text", str(root / "lm"), "--preset", "vit-debug", "x"]) == 2
    assert "expected contrastive-* or fusion-*" in capsys.readouterr().err
    assert main(["import", str(root / "lm")]) == 2
    assert main(["import", str(root / "nope"), str(root / "y")]) == 2
    assert "not a directory" in capsys.readouterr().err


@pytest.mark.slow
def test_moe_llava_three_stages_run_on_a_composed_decoder(hf_dirs, tmp_path):
    """Stage I (projector) and II (all) on the dense composition, upcycle, stage III (MoE)."""
    root, _, _ = hf_dirs
    start, moe = root / "start", root / "moe"
    assert (
        main(["import", "--vision", str(root / "vision"), "--text", str(root / "lm"), str(start)])
        == 0
    )
    common = [
        "--task",
        "captioning",
        "--data",
        "shapes",
        "--set",
        "data.num_train=40",
        "--set",
        "data.num_eval=8",
        "--set",
        "train.batch_size=8",
    ]
    stages = "[{name: projector, steps: 3, trainable: [projector]}, {name: all, steps: 3}]"
    assert (
        main(
            [
                "train",
                "--init-from",
                str(start),
                *common,
                "--set",
                f"train.stages={stages}",
                "--out",
                str(tmp_path / "dense"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "upcycle",
                str(tmp_path / "dense"),
                str(moe),
                "--layers",
                "every-other",
                "--num-experts",
                "4",
                "--top-k",
                "2",
            ]
        )
        == 0
    )
    stage3 = "[{name: moe, steps: 3, trainable: [moe]}]"
    assert (
        main(
            [
                "train",
                "--init-from",
                str(moe),
                *common,
                "--set",
                f"train.stages={stage3}",
                "--out",
                str(tmp_path / "moe"),
            ]
        )
        == 0
    )
    tuned = load_model(tmp_path / "moe" / "model")
    assert tuned.config.text.transformer.moe_layer_ids() == [0]
