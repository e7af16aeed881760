"""The grounding task's location options: the soft (Gaussian) location target against a
hand-worked case and its per-position twin, the number of bins saved with the tokenizer, and
the sine-cosine start of the location embeddings."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlmoe.config import ConfigError
from vlmoe.data.locations import location_bins
from vlmoe.data.shapes import ShapesConfig
from vlmoe.data.shapes_data import ShapesDataset
from vlmoe.data.tokenizer import Tokenizer
from vlmoe.eval.runner import run_evaluators
from vlmoe.models.registry import create_model
from vlmoe.tasks import TaskDataset, TaskInfo, eval_loader
from vlmoe.tasks.base import IGNORE_INDEX
from vlmoe.tasks.grounding import (
    Grounding,
    GroundingConfig,
    grounding_lm_loss,
    grounding_lm_loss_reference,
    init_location_embeddings,
    insert_placeholders,
    location_soft_targets,
)

SCENES = ShapesConfig(image_size=32, max_objects=4, occlusion=0.3, large_objects="any")


@pytest.fixture(scope="module")
def texts():
    return list(ShapesDataset(SCENES, "train", 30).texts())


def test_soft_targets_hand_worked():
    # sigma 1 around bin 1 of 4: weights e^-0.5, 1, e^-0.5, e^-2, normalized.
    w = [math.exp(-0.5), 1.0, math.exp(-0.5), math.exp(-2.0)]
    want = torch.tensor([x / sum(w) for x in w])
    got = location_soft_targets(torch.tensor([1]), 4, 1.0)[0]
    assert torch.allclose(got, want, atol=1e-6)
    # At the edge the Gaussian is cut to the image and renormalized.
    edge = location_soft_targets(torch.tensor([0]), 3, 1.0)[0]
    w = [1.0, math.exp(-0.5), math.exp(-2.0)]
    assert torch.allclose(edge, torch.tensor([x / sum(w) for x in w]), atol=1e-6)
    assert torch.equal(location_soft_targets(torch.tensor([2]), 4, 0.0)[0], torch.eye(4)[2])


def test_loss_hand_worked():
    # Vocabulary of 4: token 0 is text, 1..3 are bins 0..2. Uniform logits: -log p = log 4 for
    # every token, whatever the target distribution.
    logits = torch.zeros(2, 4)
    labels = torch.tensor([0, 2])
    loss = grounding_lm_loss(logits, labels, torch.tensor([1, 2, 3]), 1.0)
    assert loss.item() == pytest.approx(math.log(4))
    # Logits (0, 0, 1, 0) at a location position, target bin 1 (token 2), sigma 1: target
    # weights (e^-0.5, 1, e^-0.5) / s over tokens 1..3; -log p = log(3 + e) - logit.
    logits = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    s = 1 + 2 * math.exp(-0.5)
    z = math.log(3 + math.e)
    want = (math.exp(-0.5) * z + (z - 1) + math.exp(-0.5) * z) / s
    got = grounding_lm_loss(logits, torch.tensor([2]), torch.tensor([1, 2, 3]), 1.0)
    assert got.item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("sigma", [0.0, 0.7, 2.5])
def test_loss_matches_reference_and_cross_entropy(sigma):
    g = torch.Generator().manual_seed(0)
    V, N = 20, 30
    loc = torch.arange(8, 20)  # bins 0..11
    logits = torch.randn(N, V, generator=g)
    labels = torch.randint(0, V, (N,), generator=g)
    labels[::7] = IGNORE_INDEX
    fast = grounding_lm_loss(logits, labels, loc, sigma)
    slow = grounding_lm_loss_reference(logits, labels, loc, sigma)
    assert torch.allclose(fast, slow, atol=1e-5)
    if sigma == 0:
        ce = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
        assert torch.allclose(fast, ce, atol=1e-6)
    # Gradients too.
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    grounding_lm_loss(a, labels, loc, sigma).backward()
    grounding_lm_loss_reference(b, labels, loc, sigma).backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_bins_option_saved_with_tokenizer(texts, tmp_path):
    tok = Tokenizer.train(texts, vocab_size=200)
    info = TaskInfo("grounding", "decoder", 32, 40)
    task = Grounding(info, tok, GroundingConfig(num_bins=16))
    assert task.num_bins == 16 and location_bins(tok) == 16
    tok.save(tmp_path)
    loaded = Tokenizer.load(tmp_path)
    again = Grounding(info, loaded)  # no option: the tokenizer's bins, not one per pixel
    assert again.num_bins == 16 and again.loc_ids == task.loc_ids
    with pytest.raises(ValueError, match="already has 16 location bins"):
        Grounding(info, loaded, GroundingConfig(num_bins=32))
    with pytest.raises(ConfigError, match="num_bins must be >= 2"):
        GroundingConfig(num_bins=1)
    with pytest.raises(ConfigError, match="loc_sigma must be >= 0"):
        GroundingConfig(loc_sigma=-1)


def test_soft_target_trains_and_embeddings_start_smooth(texts):
    tok = Tokenizer.train(texts, vocab_size=200)
    ds = ShapesDataset(SCENES, "test", 2)
    task = Grounding(
        TaskInfo("grounding", "decoder", 16, 40), tok, GroundingConfig(num_bins=8, loc_sigma=1.0)
    )
    model = create_model("decoder-debug", vocab_size=tok.vocab_size, max_seq_len=40)
    init_location_embeddings(model, task.loc_ids)
    emb = model.lm.embed.weight[task.loc_ids]  # (8, D)
    sim = F.cosine_similarity(emb[:-1], emb[1:], dim=-1)  # neighbours
    far = F.cosine_similarity(emb[:1], emb[-1:], dim=-1)
    assert sim.min() > far.item()
    data = TaskDataset(ds, task.examples(ds, "train"), 16)
    batch = task.collate([data[i] for i in range(3)])
    out = task.loss(model, batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert model.lm.embed.weight.grad[task.loc_ids].abs().sum() > 0


def test_insert_placeholders_hand_worked():
    rows = torch.tensor([[1, 2, 3], [4, 5, 6]])
    got = insert_placeholders(rows, torch.tensor([1, 3]), 2, 9)
    assert got.tolist() == [[1, 9, 9, 2, 3], [4, 5, 6, 9, 9]]


def test_prompt_before_image_layout(texts):
    """A decoder with `image_token_id` reads [prompt ; image ; answer]: training, evaluation
    and predict put the placeholders there, and the image tokens see the prompt."""
    tok = Tokenizer.train(texts, vocab_size=200)
    ds = ShapesDataset(SCENES, "test", 2)
    task = Grounding(TaskInfo("grounding", "decoder", 16, 40), tok, GroundingConfig(num_bins=8))
    model = create_model(
        "decoder-debug", vocab_size=tok.vocab_size, max_seq_len=40, image_token_id=tok.image_id
    )
    data = TaskDataset(ds, task.examples(ds, "train"), 16)
    batch = task.collate([data[i] for i in range(3)])
    out = task.loss(model, batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    evald = TaskDataset(ds, task.examples(ds, "eval"), 16)
    results = run_evaluators(model, task.evaluators(eval_loader(evald, task.collate, 4)))
    assert 0 <= results["grounding/acc@0.5"] <= 1
    pred = task.predict(model, np.asarray(ds[0].image), "the red circle")
    n = model.num_image_tokens
    assert pred.kind == "boxes" and pred.output.image_token_mask.sum() == n
    # The image tokens come after the prompt: <bos> + "locate the red circle" first.
    first_image = int(pred.output.image_token_mask[0].float().argmax())
    assert first_image == len(pred.tokens)
