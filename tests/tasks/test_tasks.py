"""The task protocol: each built-in task's examples, batch schema, loss and predict; the data
path (per-item decoding, DataLoader workers, stream positions)."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vlmoe.data import ImageTransform, MnistDataset, ShapesConfig, ShapesDataset, stack_images
from vlmoe.data.order import DataOrder
from vlmoe.data.tokenizer import Tokenizer
from vlmoe.data.transforms import preprocess_image
from vlmoe.models.registry import create_model
from vlmoe.tasks import (
    IGNORE_INDEX,
    Example,
    TaskDataset,
    TaskInfo,
    build_task,
    default_task,
    eval_loader,
    get_task,
    resolve_task,
    task_names,
)
from vlmoe.tasks.data import OrderSampler

B = 4


@pytest.fixture(scope="module")
def world():
    return ShapesDataset(ShapesConfig(image_size=32), "train", 12)


@pytest.fixture(scope="module")
def tok(world):
    return Tokenizer.train(list(world.texts()), vocab_size=200)


def make(name, world, tok, arch):
    info = TaskInfo(name, arch, 16, 24, list(world.label_names), list(world.answer_vocab))
    return build_task(info, tok if get_task(name).needs_text else None)


def batch(task, world, split="train", n=B):
    data = TaskDataset(world, task.examples(world, split), 16)
    return task.collate([data[i] for i in range(n)])


def test_registry_defaults_and_errors():
    assert {"classification", "vqa", "vqa+classification", "captioning", "contrastive"} <= set(
        task_names()
    )
    assert default_task("fusion").name == "vqa+classification"
    assert default_task("vit").name == "classification"
    with pytest.raises(ValueError, match="did you mean 'captioning'"):
        get_task("captionig")
    with pytest.raises(ValueError, match="does not fit a vit model"):
        resolve_task("captioning", "vit")


def test_examples_count_questions_and_captions(world, tok):
    vqa = make("vqa", world, tok, "fusion")
    assert len(vqa.examples(world, "train")) == sum(len(world.describe(i).qa) for i in range(12))
    cap = make("captioning", world, tok, "decoder")
    n_caps = sum(len(world.describe(i).captions) for i in range(12))
    assert len(cap.examples(world, "train")) == n_caps
    assert cap.examples(world, "eval") == [Example(i, -1) for i in range(12)]
    cls = make("classification", world, None, "vit")
    assert cls.examples(world, "train") == [Example(i) for i in range(12)]


def test_describe_does_not_draw(world):
    assert world.describe(3).image.size == 0
    assert world.describe(3).qa == world[3].qa


def test_batch_schema(world, tok):
    b = batch(make("vqa+classification", world, tok, "fusion"), world)
    assert b["images"].shape == (B, 3, 16, 16) and b["images"].dtype == torch.float32
    assert b["input_ids"].dtype == torch.long and b["attention_mask"].dtype == torch.bool
    assert b["input_ids"][:, 0].eq(tok.bos_id).all()
    qa = world[0].qa
    assert b["answer"][: len(qa[:B])] == [q.answer for q in qa[:B]]
    assert b["answer_id"].tolist()[0] == world.answer_vocab.index(qa[0].answer)
    assert b["label"].tolist() == [world[0].label] * B
    cap = batch(make("captioning", world, tok, "decoder"), world, "eval")
    assert cap["captions"] == [world[i].captions for i in range(B)]
    assert tok.decode(cap["input_ids"][0]) == world[0].captions[0]


def test_unknown_answer_is_ignored(world, tok):
    info = TaskInfo("vqa", "fusion", 16, 24, [], ["yes"])
    b = batch(build_task(info, tok), world)
    assert (b["answer_id"] == IGNORE_INDEX).sum() >= 1


@pytest.mark.parametrize(
    "name,preset",
    [
        ("classification", "vit-debug-moe"),
        ("vqa+classification", "fusion-debug-moe"),
        ("captioning", "decoder-debug-moe"),
        ("contrastive", "contrastive-debug-moe"),
    ],
)
def test_loss_and_predict(world, tok, name, preset):
    torch.manual_seed(0)
    task = make(name, world, tok, preset.split("-")[0])
    sizes = {"image_size": 16, **task.model_sizes()}
    if task.needs_text:
        sizes.update(vocab_size=tok.vocab_size, max_seq_len=24)
    model = create_model(preset, **sizes)
    step = task.loss(model, batch(task, world))
    assert step.loss.ndim == 0 and torch.isfinite(step.loss) and len(step.moe_aux) >= 1
    step.loss.backward()
    model.eval()
    text = world[0].qa[0].question if name.startswith("vqa") else None
    p = task.predict(model, world[0].image, text)
    assert p.output is not None and p.text
    if name == "captioning":
        assert p.tokens[0] == "<bos>" and len(p.tokens) <= 24
    if name.startswith("vqa"):
        assert p.kind == "answer" and "label" in p.extra and p.tokens[0] == "<bos>"


def test_vqa_only_predicts_no_label(world, tok):
    task = make("vqa", world, tok, "fusion")
    model = create_model(
        "fusion-debug-moe", image_size=16, vocab_size=tok.vocab_size, **task.model_sizes()
    )
    p = task.predict(model.eval(), world[0].image, "what colour is the circle?")
    assert p.kind == "answer" and "label" not in p.extra
    with pytest.raises(ValueError, match="ask a question"):
        task.predict(model, world[0].image, None)


def test_preprocess_is_the_transform_without_augmentation(world):
    sample = world[5]
    a = preprocess_image(sample.image, 16)
    b = ImageTransform(image_size=16)(sample).image
    assert torch.equal(a, b)


def test_mixed_sizes_are_refused():
    raw = ShapesDataset(ShapesConfig(), "train", 2)[0]
    with pytest.raises(ValueError, match="differ in shape"):
        stack_images([raw, MnistDataset("test")[0]])


def test_workers_give_the_same_batches(world):
    task = make("classification", world, None, "vit")
    data = TaskDataset(world, task.examples(world, "eval"), 16)
    one = list(eval_loader(data, task.collate, 5))
    two = list(eval_loader(data, task.collate, 5, num_workers=2))
    assert len(one) == len(two) == 3
    for x, y in zip(one, two):
        assert torch.equal(x["images"], y["images"]) and torch.equal(x["label"], y["label"])


def test_order_sampler_positions_follow_the_data_order():
    order = DataOrder(size=5, seed=3)
    sampler = iter(OrderSampler(order, 4))
    mirror = DataOrder(size=5, seed=3)
    for _ in range(4):  # crosses epoch boundaries
        positions = next(sampler)
        assert [p % 5 for p in positions] == mirror.next(4)
    # positions grow across epochs, so per-position augmentation never repeats an epoch's draw
    assert max(positions) >= 10


def test_augmentation_is_a_function_of_the_position(world):
    seen = []

    def augment(sample, g):
        seen.append(int(torch.randint(1 << 30, (), generator=g)))
        return sample

    data = TaskDataset(world, [Example(0)], 16, augment=augment, seed=1)
    data[0], data[1], data[0]
    assert seen[0] == seen[2] != seen[1]
    assert np.isfinite(data[7][0].image.numpy()).all()
