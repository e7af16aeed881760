"""Architecture-specific behaviour: modality routing, padding, zero-shot, freezing, plug-ins."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vlmoe
from vlmoe.models import Decoder, freeze, set_trainable, unfreeze
from vlmoe.models.registry import preset_config

from .helpers import make_inputs, vocab_size


def test_modality_grouped_fusion_never_routes_image_tokens_to_text_experts():
    torch.manual_seed(0)
    model = vlmoe.create_model("fusion-debug-moe", **{"transformer.moe_every": 1})
    moe = model.config.transformer.moe
    assert moe.expert_groups == "modality" and moe.num_shared_experts == 1
    own = (moe.num_experts - moe.num_cross_modal_experts) // 2
    image_experts, text_experts = set(range(own)), set(range(own, 2 * own))
    out = model(**make_inputs(model, batch=4))
    assert len(out.moe_aux) == 2
    for aux in out.moe_aux:
        m = aux.modality_T
        assert torch.equal(m, out.modality.reshape(-1))
        img_ids = set(aux.expert_ids_TK[m == 0].flatten().tolist())
        txt_ids = set(aux.expert_ids_TK[m == 1].flatten().tolist())
        assert img_ids and txt_ids
        assert not img_ids & text_experts
        assert not txt_ids & image_experts


def test_output_marks_image_patches_for_routing_plots():
    model = vlmoe.create_model("fusion-debug-moe")
    out = model(**make_inputs(model))
    gh, gw = out.patch_grid
    assert out.image_token_mask.sum(1).tolist() == [gh * gw] * 2
    assert out.modality[out.image_token_mask].eq(0).all()
    assert out.modality[-1, -2:].tolist() == [-1, -1]  # padding
    dec = vlmoe.create_model("decoder-debug-moe")
    o = dec(**make_inputs(dec))
    assert o.num_image_tokens == o.patch_grid[0] * o.patch_grid[1]
    assert (
        o.image_token_mask[:, : o.num_image_tokens].all()
        and not o.image_token_mask[:, o.num_image_tokens :].any()
    )
    assert o.lm_moe_aux[0].modality_T.reshape(o.modality.shape).equal(o.modality)
    vit = vlmoe.create_model("vit-debug-moe")
    v = vit(**make_inputs(vit))
    assert v.image_token_mask[:, 0].logical_not().all() and v.image_token_mask[:, 1:].all()


@pytest.mark.parametrize("name", ["fusion-debug-moe", "contrastive-debug-moe", "text-debug-moe"])
def test_padding_does_not_change_real_tokens_outputs(name):
    torch.manual_seed(0)
    model = vlmoe.create_model(name).eval()
    inputs = make_inputs(model, batch=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    padded = dict(inputs)
    padded["input_ids"] = torch.cat([inputs["input_ids"], torch.zeros(1, 3, dtype=torch.long)], 1)
    padded["attention_mask"] = torch.cat(
        [inputs["attention_mask"], torch.zeros(1, 3, dtype=torch.long)], 1
    )
    a, b = model(**inputs), model(**padded)
    key = {"fusion": "pooled", "contrastive": "text_embeds", "text": "pooled"}[model.architecture]
    assert torch.allclose(getattr(a, key), getattr(b, key), atol=1e-5)


def _toy_batch(image_size, n=16):
    """Class 0: red images, text [1, 3]; class 1: blue images, text [2, 3]."""
    labels = torch.arange(n) % 2
    images = torch.zeros(n, 3, image_size, image_size)
    images[labels == 0, 0] = 1.0
    images[labels == 1, 2] = 1.0
    images += 0.1 * torch.randn_like(images)
    texts = torch.stack([labels + 1, torch.full_like(labels, 3)], 1)
    return images, texts, labels


def test_contrastive_zero_shot_on_a_trivially_separable_toy_set():
    torch.manual_seed(0)
    model = vlmoe.create_model("contrastive-debug-moe")
    for _ in range(8):
        images, texts, labels = _toy_batch(model.config.image_size, n=8)
        out = model(images, texts)
        # Two images share each caption: a soft CLIP loss over matching labels.
        target = (labels[:, None] == labels[None]).float()
        target = target / target.sum(1, keepdim=True)
        loss = (
            F.cross_entropy(out.logits_per_image, target)
            + F.cross_entropy(out.logits_per_text, target)
        ) / 2
        model.zero_grad()
        loss.backward()
        # Sign SGD by hand: as good as AdamW here, and torch.optim's first import (it pulls in
        # torch._dynamo) would cost this test a second.
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= 1e-3 * p.grad.sign()
    model.eval()
    classifier = model.zero_shot_classifier(torch.tensor([[[1, 3]], [[2, 3]]]))  # (C, P, L)
    assert classifier.shape == (2, model.config.embed_dim)
    images, _, labels = _toy_batch(model.config.image_size, n=10)
    logits = model.zero_shot_logits(images, classifier)
    assert torch.equal(logits.argmax(-1), labels)
    # By a clear margin (an untrained model is at chance, its margins below 0.1).
    rows = torch.arange(10)
    assert (logits[rows, labels] - logits[rows, 1 - labels]).min() > 1.0


def test_freeze_components_and_stage_three():
    model = vlmoe.create_model("decoder-debug-moe")
    n_vision = sum(p.numel() for p in model.vision.parameters())
    assert freeze(model, ["vision", "projector"]) >= n_vision
    assert not any(p.requires_grad for p in model.vision.parameters())
    assert not any(p.requires_grad for p in model.projector.parameters())
    assert all(p.requires_grad for p in model.lm.parameters())
    unfreeze(model, ["projector"])
    assert all(p.requires_grad for p in model.projector.parameters())
    trainable = set_trainable(model, ["moe"])  # MoE-LLaVA stage III
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable > 0 and names and all(".ffn." in n for n in names)
    assert any("router" in n for n in names) and any("experts" in n for n in names)
    set_trainable(model, ["experts"])
    assert not any(p.requires_grad for n, p in model.named_parameters() if "router" in n)
    with pytest.raises(ValueError, match="unknown component 'visoin'"):
        freeze(model, ["visoin"])


class TinyEncoder(nn.Module):
    """A stand-in for a pretrained encoder: images -> (B, 16, 24)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 24, 4, 4)

    def forward(self, images):
        return self.conv(images).flatten(2).transpose(1, 2)


def test_decoder_takes_an_external_vision_encoder(tmp_path):
    cfg = preset_config("decoder-debug-moe").replace(vision=None, vision_dim=24)
    model = Decoder(cfg, vision_encoder=TinyEncoder())
    images = torch.randn(2, 3, 16, 16)
    out = model(images, torch.randint(0, cfg.text.vocab_size, (2, 5)))
    assert out.num_image_tokens == 16 and out.patch_grid == (4, 4)
    out.logits.sum().backward()
    assert model.vision.conv.weight.grad is not None
    model.save_pretrained(tmp_path)
    loaded = Decoder.from_pretrained(tmp_path, vision_encoder=TinyEncoder())
    assert isinstance(loaded.vision, TinyEncoder)
    with pytest.raises(ValueError, match="pass the external vision_encoder"):
        Decoder(cfg)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    a = vlmoe.create_model("vit-debug-moe")
    b = vlmoe.create_model("vit-debug-moe", checkpointing="block")
    b.load_state_dict(a.state_dict())
    inputs = make_inputs(a)
    for m in (a, b):
        m(**inputs).logits.sum().backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), n


def test_bf16_autocast_forward():
    model = vlmoe.create_model("fusion-debug-moe")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**make_inputs(model))
    assert torch.isfinite(out.pooled.float()).all()


def test_bf16_weights_forward_and_rope_precision():
    torch.manual_seed(0)
    model = vlmoe.create_model("decoder-debug-moe").eval()
    inputs = make_inputs(model)
    ref = model(**inputs).logits
    low = model.to(torch.bfloat16)(**inputs).logits.float()
    assert torch.allclose(ref, low, atol=0.1)


def test_fusion_cls_pooling_reads_a_learned_token_after_patches_and_text(tmp_path):
    torch.manual_seed(0)
    model = vlmoe.create_model("fusion-debug-moe", pool="cls", num_answers=5).eval()
    inputs = make_inputs(model, batch=3)
    out = model(**inputs)
    n_img = model.image_embed.num_patches
    L = inputs["input_ids"].shape[1]
    assert out.hidden_states.shape[1] == n_img + L + 1
    assert torch.equal(out.pooled, out.hidden_states[:, -1])
    assert out.image_token_mask[:, :n_img].all() and not out.image_token_mask[:, n_img:].any()
    assert (out.modality[:, -1] == 1).all()  # the [CLS] token routes as text
    # Padding stays invisible: changing a padded token's id changes nothing.
    inputs["attention_mask"][0, -1] = 0
    before = model(**inputs).vqa_logits
    inputs["input_ids"][0, -1] = (inputs["input_ids"][0, -1] + 1) % vocab_size(model)
    torch.testing.assert_close(model(**inputs).vqa_logits, before)
    # Mean pooling differs, and the [CLS] token learns.
    mean_model = vlmoe.create_model("fusion-debug-moe", pool="mean", num_answers=5)
    assert not hasattr(mean_model, "cls_token") or mean_model.cls_token is None
    model.train()
    model(**inputs).vqa_logits.sum().backward()
    assert model.cls_token.grad is not None and model.cls_token.grad.abs().sum() > 0
    model.save_pretrained(tmp_path / "m")
    again = vlmoe.load_model(tmp_path / "m").eval()
    model.eval()
    torch.testing.assert_close(again(**inputs).vqa_logits, model(**inputs).vqa_logits)
