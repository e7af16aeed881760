"""Judge-based generation metrics: Fréchet distance against scipy, the evaluator end to end."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from vlmoe.eval.image_generation import (
    ClassConditionalEvaluator,
    frechet_distance,
    frechet_distance_reference,
    judge_outputs,
    load_judge,
    reference_distances,
    save_judge,
    train_judge,
)


def _features(n, d, seed, rank=None, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(rank or d, d, generator=g)
    return torch.randn(n, rank or d, generator=g) @ mix + shift


@pytest.mark.parametrize("rank", [None, 3])  # full-rank and singular covariances
def test_frechet_distance_matches_the_scipy_reference(rank):
    a, b = _features(200, 8, 0, rank), _features(150, 8, 1, rank, shift=0.5)
    fast, slow = frechet_distance(a, b), frechet_distance_reference(a, b)
    assert fast == pytest.approx(slow, rel=1e-4, abs=1e-6)


def test_frechet_distance_of_identical_and_shifted_sets():
    a = _features(300, 6, 2)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = torch.tensor([1.0, 2.0, 0.0, 0.0, 0.0, 0.0])
    assert frechet_distance(a, a + shift) == pytest.approx(5.0, rel=1e-6)


TEMPLATES = torch.full((2, 1, 8, 8), -1.0)
TEMPLATES[0, :, :, :4] = 1.0  # class 0: left half bright
TEMPLATES[1, :, :, 4:] = 1.0  # class 1: right half bright


def _real(n, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    return (TEMPLATES[labels] + 0.2 * torch.randn(n, 1, 8, 8, generator=g)).clamp(-1, 1), labels


@dataclass
class _Out:
    velocity: torch.Tensor


@dataclass
class _Cfg:
    in_channels: int = 1
    image_size: int = 8


class TemplateFlow(torch.nn.Module):
    """Velocity of the straight path to a class template (of `1 - label` when `swap`)."""

    def __init__(self, swap: bool = False) -> None:
        super().__init__()
        self.config, self.swap = _Cfg(), swap

    def forward(self, x, t, labels=None, drop=None):
        target = TEMPLATES[(1 - labels) if self.swap else labels]
        t = t.view(-1, 1, 1, 1).clamp_min(1e-3)
        return _Out((x - target) / t)


@pytest.fixture(scope="module")
def judge():
    torch.manual_seed(0)
    return train_judge(*_real(200, 0), num_classes=2, epochs=3, batch_size=32)


def test_judge_learns_and_round_trips(judge, tmp_path):
    test_images, test_labels = _real(100, 1)
    _, preds = judge_outputs(judge, test_images)
    assert (preds == test_labels).float().mean() == 1.0
    save_judge(judge, tmp_path / "judge.safetensors")
    loaded = load_judge(tmp_path / "judge.safetensors")
    assert torch.equal(judge_outputs(loaded, test_images)[0], judge_outputs(judge, test_images)[0])
    assert [p.name for p in tmp_path.iterdir()] == ["judge.safetensors"]


def test_evaluator_scores_right_and_wrong_generators(judge):
    real_images, _ = _real(100, 2)
    evaluator = ClassConditionalEvaluator(
        judge, real_images, num_per_class=10, steps=4, cfg_scale=1.0
    )
    right = dict(evaluator.run(TemplateFlow()))
    wrong = dict(evaluator.run(TemplateFlow(swap=True)))
    assert right["gen_accuracy"] == 1.0 and wrong["gen_accuracy"] == 0.0
    assert evaluator.last_images.shape == (20, 1, 8, 8)
    refs = reference_distances(judge, *(_real(100, 3)[0], real_images), num=20)
    assert refs["fd_floor"] < refs["fd_ceiling"]
    assert right["gen_fd"] < refs["fd_ceiling"]


def test_normalized_mutual_information_extremes():
    from vlmoe.eval.image_generation import normalized_mutual_information

    assert normalized_mutual_information(np.eye(4) * 10) == pytest.approx(1.0)
    assert normalized_mutual_information(np.ones((3, 4))) == pytest.approx(0.0, abs=1e-12)
    half = np.array([[10, 0], [5, 5]])
    assert 0 < normalized_mutual_information(half) < 1
