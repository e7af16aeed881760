"""Each metric on a hand-worked example."""

import math

import pytest
import torch

from vlmoe.eval.captioning import bleu4, reference_streams
from vlmoe.eval.classification import (
    accuracy,
    class_prompts,
    topk_correct,
    zero_shot_logits,
    zero_shot_weights,
)
from vlmoe.eval.retrieval import (
    image_to_text_ranks,
    recall_at_k,
    retrieval_metrics,
    text_to_image_ranks,
)
from vlmoe.eval.vqa import answer_correct, normalize_answer, vqa_accuracy


def test_accuracy_top1_top2_ignores_negative_labels():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05], [0.3, 0.2, 0.5], [0.2, 0.5, 0.3]])
    labels = torch.tensor([1, 1, 2, -1])
    # row 0 hit, row 1 miss (0 wins), row 2 hit, row 3 ignored
    assert accuracy(logits, labels) == pytest.approx(2 / 3)
    # top-2 of row 1 is {0, 1}: a hit
    assert accuracy(logits, labels, k=2) == pytest.approx(1.0)
    assert int(topk_correct(logits, labels, k=5)) == 3  # k clipped to C
    assert accuracy(logits[:0], labels[:0]) == 0.0


def test_zero_shot_weights_and_logits():
    prompts = torch.tensor([[[1.0, 0.0], [2.0, 0.0]], [[0.0, 3.0], [0.0, 1.0]]])  # (C=2, P=2, D=2)
    w = zero_shot_weights(prompts)
    torch.testing.assert_close(w, torch.eye(2))
    images = torch.tensor([[3.0, 4.0], [0.0, -1.0]])
    torch.testing.assert_close(zero_shot_logits(images, w), torch.tensor([[0.6, 0.8], [0.0, -1.0]]))
    # Averaging happens after per-prompt normalization: a long prompt vector does not dominate.
    w2 = zero_shot_weights(torch.tensor([[[10.0, 0.0], [0.0, 1.0]]]))
    torch.testing.assert_close(w2, torch.tensor([[1.0, 1.0]]) / math.sqrt(2))
    assert class_prompts(["cat", "dog"], ["a {}", "the {}!"]) == [
        "a cat",
        "the cat!",
        "a dog",
        "the dog!",
    ]


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("The Two red Cubes!", "2 red cubes"),
        ("an apple.", "apple"),
        ("  Yes ", "yes"),
        ("3.5", "3.5"),
        ("1,000", "1000"),
        ("left-of", "left of"),
        ("none", "0"),
        ("twelve", "12"),
    ],
)
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_vqa_accuracy():
    preds = ["Two", "a blue circle", "no", "red"]
    refs = ["2", ["blue circle", "circle"], "yes", ["green", "Red."]]
    assert [answer_correct(p, r) for p, r in zip(preds, refs)] == [True, True, False, True]
    assert vqa_accuracy(preds, refs) == pytest.approx(0.75)
    assert vqa_accuracy([], []) == 0.0
    with pytest.raises(ValueError, match="2 predictions but 1"):
        vqa_accuracy(["a", "b"], ["a"])


def test_retrieval_ranks_with_several_captions_per_image():
    # texts 0 and 1 describe image 0, text 2 describes image 1
    sim = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
    text_image = torch.tensor([0, 0, 1])
    # image 0: best caption 0.9 beats text 2 (0.5) -> rank 0; image 1: 0.1 below 0.2, 0.3 -> rank 2
    assert image_to_text_ranks(sim, text_image).tolist() == [0, 2]
    # text 0: image 0 first; text 1: 0.1 < 0.3 -> rank 1; text 2: 0.1 < 0.5 -> rank 1
    assert text_to_image_ranks(sim, text_image).tolist() == [0, 1, 1]
    assert recall_at_k(torch.tensor([0, 2]), (1, 2, 3)) == {1: 0.5, 2: 0.5, 3: 1.0}
    assert recall_at_k(torch.tensor([0, 1, 1]), (1, 2)) == {1: pytest.approx(1 / 3), 2: 1.0}


def test_retrieval_ties_count_against_the_query_and_captionless_images_miss():
    sim = torch.zeros(2, 3)
    text_image = torch.tensor([0, 0, 0])  # image 1 has no caption
    assert image_to_text_ranks(sim, text_image).tolist() == [0, 3]
    assert text_to_image_ranks(sim, text_image).tolist() == [1, 1, 1]


def test_retrieval_metrics_from_embeddings():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[2.0, 0.1], [1.0, -0.1], [0.1, 3.0]])
    m = retrieval_metrics(images, texts, torch.tensor([0, 0, 1]), ks=(1, 5))
    assert m == {"i2t_r@1": 1.0, "i2t_r@5": 1.0, "t2i_r@1": 1.0, "t2i_r@5": 1.0, "mean_recall": 1.0}


def test_bleu4_hand_worked():
    # p1..p4 = 4/5, 3/4, 2/3, 1/2; equal lengths so BP = 1
    expected = 100 * (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert bleu4(["a b c d e"], ["a b c d f"]) == pytest.approx(expected, abs=1e-6)
    assert bleu4(
        ["the cat sat on the mat"], [["a dog", "the cat sat on the mat"]]
    ) == pytest.approx(100.0)


def test_bleu4_variable_number_of_references():
    hyps = ["a b c d e", "x y z w"]
    refs = [["a b c d f"], ["q", "x y z w"]]
    assert reference_streams(refs) == [["a b c d f", "q"], [None, "x y z w"]]
    # corpus counts: p1 = 8/9, p2 = 6/7, p3 = 4/5, p4 = 2/3; closest ref lengths 5 + 4 = 9 -> BP = 1
    expected = 100 * (8 / 9 * 6 / 7 * 4 / 5 * 2 / 3) ** 0.25
    assert bleu4(hyps, refs) == pytest.approx(expected, abs=1e-6)


def test_bleu4_brevity_penalty_and_errors():
    # hyp length 4, ref length 8: BP = exp(1 - 8/4) = e^-1, all n-gram precisions 1
    assert bleu4(["a b c d"], ["a b c d e f g h"]) == pytest.approx(100 * math.exp(-1), abs=1e-6)
    assert bleu4([], []) == 0.0
    with pytest.raises(ValueError, match="no reference"):
        bleu4(["a"], [[]])
