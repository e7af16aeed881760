"""Collators: shapes, dtypes and contents of the batch each architecture consumes."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vlmoe.data import (
    IGNORE_INDEX,
    MODALITY_IMAGE,
    MODALITY_TEXT,
    ClassificationCollate,
    ContrastiveCollate,
    DetectionCollate,
    GenerationCollate,
    GroundingCollate,
    ImageTransform,
    MnistDataset,
    ShapesConfig,
    ShapesDataset,
    VQACollate,
    stack_images,
)

B = 4


@pytest.fixture(scope="module")
def ds():
    return ShapesDataset(ShapesConfig(), "train", 16, transform=ImageTransform(image_size=32))


def batch_of(ds, collate, n=B):
    return next(iter(DataLoader(ds, batch_size=n, collate_fn=collate)))


def test_classification(ds):
    b = batch_of(ds, ClassificationCollate())
    assert b["images"].shape == (B, 3, 32, 32) and b["images"].dtype == torch.float32
    assert b["labels"].tolist() == [ds[i].label for i in range(B)]
    mnist = batch_of(
        MnistDataset("test"), ClassificationCollate()
    )  # raw uint8: default normalization
    assert mnist["images"].shape == (B, 3, 28, 28) and mnist["images"].min() >= -1


def test_contrastive(ds, shapes_tokenizer):
    b = batch_of(ds, ContrastiveCollate(shapes_tokenizer, pick="first"))
    assert b["texts"] == [ds[i].captions[0] for i in range(B)]
    assert b["input_ids"].shape == b["attention_mask"].shape == b["modality_ids"].shape
    assert (b["modality_ids"] == MODALITY_TEXT).all()
    decoded = shapes_tokenizer.decode_batch(b["input_ids"])
    assert decoded == b["texts"]


def test_vqa(ds, shapes_tokenizer):
    collate = VQACollate(shapes_tokenizer, ds.answer_vocab, pick="random")
    torch.manual_seed(0)
    b = batch_of(ds, collate)
    assert b["answer_labels"].shape == (B,)
    assert [ds.answer_vocab[i] for i in b["answer_labels"]] == b["answers"]
    for i in range(B):
        assert b["questions"][i] in [q.question for q in ds[i].qa]
    unknown = VQACollate(shapes_tokenizer, ["yes"], pick="first")([ds[i] for i in range(B)])
    assert set(unknown["answer_labels"].tolist()) <= {0, IGNORE_INDEX}


@pytest.mark.parametrize("task", ["caption", "vqa"])
def test_generation(ds, shapes_tokenizer, task):
    tok = shapes_tokenizer
    collate = GenerationCollate(tok, task=task, pick="first", max_len=64)
    b = batch_of(ds, collate)
    ids, mask, labels = b["input_ids"], b["attention_mask"], b["labels"]
    assert ids.shape == mask.shape == labels.shape == b["modality_ids"].shape
    assert (ids[:, 0] == tok.bos_id).all() and (ids[:, 1] == tok.image_id).all()
    assert (b["modality_ids"][:, 1] == MODALITY_IMAGE).all() and (
        b["modality_ids"][:, 2] == MODALITY_TEXT
    ).all()
    for i in range(B):
        target = labels[i][labels[i] != IGNORE_INDEX].tolist()
        assert target[-1] == tok.eos_id
        assert tok.decode(target) == b["targets"][i]
        n = int(mask[i].sum())
        assert (labels[i, n:] == IGNORE_INDEX).all() and (ids[i, n:] == tok.pad_id).all()
        assert ids[i, :n].tolist()[-len(target) :] == target  # labels aligned with input_ids
        prompt = b["prompt_ids"][i][b["prompt_mask"][i]].tolist()
        assert ids[i, : len(prompt)].tolist() == prompt
    assert b["prompt_mask"][:, -1].all()  # left-padded for generation
    expected = [ds[i].captions[0] if task == "caption" else ds[i].qa[0].answer for i in range(B)]
    assert b["targets"] == expected
    short = GenerationCollate(tok, task=task, pick="first", max_len=8)([ds[0]])
    assert short["input_ids"].shape[1] <= 8 and short["input_ids"][0, -1] == tok.eos_id


def test_detection_and_grounding(ds, shapes_tokenizer):
    b = batch_of(ds, DetectionCollate(ds.box_label_names))
    N = max(len(ds[i].boxes) for i in range(B))
    assert b["boxes"].shape == (B, N, 4) and b["box_labels"].shape == b["box_mask"].shape == (B, N)
    for i in range(B):
        s = ds[i]
        n = len(s.boxes)
        assert b["box_mask"][i].sum() == n and (b["box_labels"][i, n:] == IGNORE_INDEX).all()
        assert [ds.box_label_names[k] for k in b["box_labels"][i, :n]] == [x.label for x in s.boxes]
        want = torch.tensor([[x.x0 / 32, x.y0 / 32, x.x1 / 32, x.y1 / 32] for x in s.boxes])
        assert torch.allclose(b["boxes"][i, :n], want)
    assert ((b["boxes"] >= 0) & (b["boxes"] <= 1)).all()
    g = batch_of(ds, GroundingCollate(shapes_tokenizer, pick="first"))
    assert g["target_boxes"].shape == (B, 4)
    s0 = ds[0]
    box = s0.boxes[s0.refs[0].box]
    assert g["texts"][0] == s0.refs[0].text
    assert torch.allclose(g["target_boxes"][0], torch.tensor([box.x0, box.y0, box.x1, box.y1]) / 32)


def test_missing_fields_and_mixed_sizes(shapes_tokenizer):
    mnist = MnistDataset("test")
    with pytest.raises(ValueError, match="no referring expressions"):
        GroundingCollate(shapes_tokenizer)([mnist[0]])
    raw = ShapesDataset(ShapesConfig(), "train", 2)[0]
    with pytest.raises(ValueError, match="differ in shape"):
        stack_images([raw, mnist[0]])
    assert stack_images([raw]).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="pick"):
        ContrastiveCollate(shapes_tokenizer, pick="last")([raw])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="task"):
        GenerationCollate(shapes_tokenizer, task="detect")  # type: ignore[arg-type]


def test_workers_and_collate_together(ds, shapes_tokenizer):
    loader = DataLoader(ds, batch_size=8, num_workers=2, collate_fn=ClassificationCollate())
    labels = torch.cat([b["labels"] for b in loader])
    assert labels.tolist() == [ds[i].label for i in range(len(ds))]
    assert np.isfinite(torch.cat([b["images"] for b in loader]).numpy()).all()
