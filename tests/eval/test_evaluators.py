"""Evaluators run on tiny real models over synthetic dict batches; results go to eval.json."""

import json
import math

import pytest
import torch

from vlmoe.eval.captioning import CaptioningEvaluator
from vlmoe.eval.classification import ClassificationEvaluator, ZeroShotEvaluator
from vlmoe.eval.retrieval import RetrievalEvaluator
from vlmoe.eval.routing import RoutingEvaluator
from vlmoe.eval.runner import evaluate
from vlmoe.eval.vqa import VQAEvaluator, answers_from_logits
from vlmoe.models.registry import create_model


def fusion_batches(n_batches=2, B=3, L=5):
    g = torch.Generator().manual_seed(0)
    return [
        {
            "images": torch.rand(B, 3, 16, 16, generator=g),
            "input_ids": torch.randint(1, 64, (B, L), generator=g),
            "attention_mask": torch.tensor([[1] * L, [1] * (L - 2) + [0] * 2, [1] * L][:B]),
            "label": torch.randint(0, 10, (B,), generator=g),
            "answer": ["red", "2", "yes"][:B],
            "question_type": ["colour", "count", "exist"][:B],
        }
        for _ in range(n_batches)
    ]


@pytest.fixture(scope="module")
def fusion():
    torch.manual_seed(0)
    return create_model("fusion-debug-moe").eval()


def test_classification_and_vqa_on_fusion_model(fusion, tmp_path):
    batches = fusion_batches()
    vocab = ["red", "2", "yes"] + [f"a{i}" for i in range(29)]
    # The expected numbers, computed directly from the model's logits.
    hits, vqa_hits = 0, 0
    with torch.no_grad():
        for b in batches:
            out = fusion(b["images"], b["input_ids"], b["attention_mask"])
            hits += int((out.class_logits.argmax(-1) == b["label"]).sum())
            preds = [vocab[i] for i in out.vqa_logits.argmax(-1).tolist()]
            vqa_hits += sum(p == a for p, a in zip(preds, b["answer"]))
    fusion.train()
    results = evaluate(
        fusion,
        {
            "cls": ClassificationEvaluator(batches, topk=(1, 5)),
            "vqa": VQAEvaluator(batches, answers_from_logits(vocab)),
            "routing": RoutingEvaluator(batches),
        },
        tmp_path / "eval.json",
    )
    assert fusion.training  # mode restored
    assert results["cls/accuracy"] == pytest.approx(hits / 6)
    assert results["cls/num_examples"] == 6
    assert 0 <= results["cls/accuracy"] <= results["cls/top5"] <= 1
    assert results["vqa/accuracy"] == pytest.approx(vqa_hits / 6)
    assert set(k for k in results if k.startswith("vqa/accuracy/")) == {
        "vqa/accuracy/colour",
        "vqa/accuracy/count",
        "vqa/accuracy/exist",
    }
    # fusion-debug-moe has one MoE layer (block 1) with modality groups: image tokens reach
    # experts 0-2 and the cross-modal 6-7; text 3-5 and 6-7.
    name = "routing/transformer.blocks.1.ffn"
    image_load = results[f"{name}/image/tokens_per_expert"]
    text_load = results[f"{name}/text/tokens_per_expert"]
    assert sum(image_load) == 2 * 6 * 16  # top-2 of 16 patches, 6 images
    assert sum(text_load) == 2 * (6 * 5 - 2 * 2)  # padding left out
    assert image_load[3:6] == [0, 0, 0] and text_load[:3] == [0, 0, 0]
    assert results["routing/drop_rate"] == 0.0  # dropless
    assert 0 < results["routing/router_entropy"] < math.log(8)
    on_disk = json.loads((tmp_path / "eval.json").read_text())
    assert on_disk["cls/accuracy"] == results["cls/accuracy"]
    assert on_disk[f"{name}/image/tokens_per_expert"] == image_load


def test_retrieval_zero_shot_and_routing_on_contrastive_model():
    torch.manual_seed(0)
    model = create_model("contrastive-debug-moe").eval()
    g = torch.Generator().manual_seed(1)
    images = torch.rand(4, 3, 16, 16, generator=g)
    # two captions per image, in different batches; image_id ties them together
    batches = [
        {
            "images": images,
            "input_ids": torch.randint(1, 64, (4, 6), generator=g),
            "image_id": torch.arange(4),
            "label": torch.tensor([0, 1, 2, 0]),
        },
        {
            "images": images,
            "input_ids": torch.randint(1, 64, (4, 6), generator=g),
            "image_id": torch.arange(4),
            "label": torch.tensor([0, 1, 2, 0]),
        },
    ]
    retrieval = RetrievalEvaluator(batches)
    image_ID, text_ND, text_image_N = retrieval.embed(model)
    assert image_ID.shape[0] == 4 and text_ND.shape[0] == 8
    assert text_image_N.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]

    prompts_ids = {}

    def encode_prompts(m, prompts):
        ids = torch.tensor([[1 + (hash(p) % 60)] * 4 for p in prompts])
        prompts_ids["n"] = len(prompts)
        return m.encode_text(ids)

    zero_shot = ZeroShotEvaluator(
        batches[:1],
        ["circle", "square", "triangle"],
        encode_text=encode_prompts,
        encode_image=lambda m, b: m.encode_image(b["images"]),
    )
    results = evaluate(
        model, {"ret": retrieval, "zs": zero_shot, "routing": RoutingEvaluator(batches)}
    )
    assert prompts_ids["n"] == 3 * 3
    for k in (1, 5, 10):
        assert 0 <= results[f"ret/i2t_r@{k}"] <= 1 and 0 <= results[f"ret/t2i_r@{k}"] <= 1
    assert results["ret/i2t_r@5"] == 1.0 and results["ret/t2i_r@5"] == 1.0  # only 4 images
    assert results["ret/num_images"] == 4 and results["ret/num_texts"] == 8
    assert 0 <= results["zs/zero_shot_accuracy"] <= 1
    # the image pass and the text pass of each layer fold into one layer entry
    layer = "routing/transformer.blocks.1.ffn"
    assert sum(results[f"{layer}/image/tokens_per_expert"]) == 2 * 2 * 4 * 16
    assert sum(results[f"{layer}/text/tokens_per_expert"]) == 2 * 2 * 4 * 6
    assert results["routing/num_moe_layers"] == 1


def test_captioning_on_decoder_model():
    torch.manual_seed(0)
    model = create_model("decoder-debug-moe").eval()
    g = torch.Generator().manual_seed(2)
    batches = [
        {"images": torch.rand(2, 3, 16, 16, generator=g), "captions": [["t1 t2 t3", "t4"], "t5 t6"]}
    ]

    def caption_fn(m, batch):
        bos = torch.ones(batch["images"].shape[0], 1, dtype=torch.long)
        new = m.generate(bos, images=batch["images"], max_new_tokens=4)
        return [" ".join(f"t{i}" for i in row) for row in new.tolist()]

    evaluator = CaptioningEvaluator(batches, caption_fn)
    results = dict(evaluator.run(model))
    assert 0 <= results["bleu4"] <= 100 and results["num_examples"] == 2
    assert len(evaluator.samples) == 2 and evaluator.samples[0][1] == ["t1 t2 t3", "t4"]


def test_retrieval_and_zero_shot_with_vlmoe_tokenizer():
    from vlmoe.data.tokenizer import Tokenizer

    words = "a red blue green circle square triangle photo picture image of the big small"
    tok = Tokenizer.train([words] * 3, vocab_size=100, kind="wordpiece")
    torch.manual_seed(0)
    model = create_model("contrastive-debug-moe", vocab_size=tok.vocab_size).eval()
    g = torch.Generator().manual_seed(3)
    batches = [
        {
            "images": torch.rand(3, 3, 16, 16, generator=g),
            "label": torch.tensor([0, 1, 2]),
            "captions": [
                ["a red circle", "a big red circle"],
                ["a blue square"],
                ["a green triangle", "a small triangle", "the green triangle"],
            ],
        },
        {
            "images": torch.rand(1, 3, 16, 16, generator=g),
            "label": torch.tensor([1]),
            "captions": [["a small blue square"]],
        },
    ]
    retrieval = RetrievalEvaluator(batches, tokenizer=tok)
    image_ID, text_ND, text_image_N = retrieval.embed(model)
    assert image_ID.shape[0] == 4 and text_ND.shape[0] == 7
    assert text_image_N.tolist() == [0, 0, 1, 2, 2, 2, 3]
    # each caption embedded alone equals its embedding here (tokenized with <bos>/<eos>)
    ids = torch.tensor([tok.encode("a blue square")])
    torch.testing.assert_close(text_ND[2], model.encode_text(ids)[0], atol=1e-5, rtol=1e-5)
    zero_shot = ZeroShotEvaluator(batches, ["circle", "square", "triangle"], tokenizer=tok)
    results = evaluate(model, {"ret": retrieval, "zs": zero_shot})
    assert results["ret/num_texts"] == 7 and results["zs/num_examples"] == 4
    assert results["ret/t2i_r@5"] == 1.0  # only 4 images to rank


def test_write_eval_json_plain_values(tmp_path):
    import numpy as np

    from vlmoe.eval.runner import write_eval_json

    path = write_eval_json(
        {
            "a": torch.tensor(0.5),
            "b": torch.tensor([1, 2]),
            "c": np.float32(2.5),
            "d": float("nan"),
            "e": [torch.tensor(1)],
        },
        tmp_path / "sub" / "eval.json",
    )
    assert json.loads(path.read_text()) == {"a": 0.5, "b": [1, 2], "c": 2.5, "d": None, "e": [1]}
    assert [p.name for p in path.parent.iterdir()] == ["eval.json"]  # no temporary left behind


def test_missing_batch_key_names_evaluator_and_keys(fusion):
    batches = [{k: v for k, v in b.items() if k != "label"} for b in fusion_batches(1)]
    with pytest.raises(
        KeyError, match=r"ClassificationEvaluator: the batch has no 'label'.*'answer'"
    ):
        list(ClassificationEvaluator(batches).run(fusion))
    with pytest.raises(KeyError, match="VQAEvaluator: the batch has no 'answers'"):
        list(
            VQAEvaluator(batches, answers_from_logits(["red"] * 32), answer_key="answers").run(
                fusion
            )
        )
