"""Label smoothing of the classification and VQA answer losses (`losses.label_smoothing`)."""

import pytest
import torch

import vlmoe
from vlmoe.config import ConfigError
from vlmoe.tasks import TaskInfo, build_task
from vlmoe.train.config import RunConfig


def _smoothed(logits, target, eps):
    logp = logits.float().log_softmax(-1)
    nll = -logp.gather(1, target[:, None])[:, 0]
    return ((1 - eps) * nll - eps * logp.mean(-1)).mean()


def test_smoothed_loss_mixes_in_the_uniform_distribution():
    torch.manual_seed(0)
    model = vlmoe.create_model("vit-debug")
    batch = {"images": torch.randn(4, 3, 16, 16), "label": torch.tensor([0, 3, 9, 1])}
    logits = model(images=batch["images"]).logits
    task = build_task(TaskInfo("classification", "vit", 16, 0, [str(i) for i in range(10)]))
    plain = task.loss(model, batch).loss
    task.label_smoothing = 0.2
    smooth = task.loss(model, batch).loss
    torch.testing.assert_close(plain, _smoothed(logits, batch["label"], 0.0))
    torch.testing.assert_close(smooth, _smoothed(logits, batch["label"], 0.2))
    assert not torch.allclose(plain, smooth)


def test_label_smoothing_is_checked():
    with pytest.raises(ConfigError, match="losses.label_smoothing must lie in"):
        RunConfig().with_overrides({"losses.label_smoothing": 1.0})
