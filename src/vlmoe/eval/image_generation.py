"""Image generation quality without downloaded weights: conditional accuracy and Fréchet
distance in the feature space of an independently trained classifier (the "judge").

FID (Heusel et al. 2017) measures the Fréchet distance between Gaussians fitted to Inception
features of real and generated images. No Inception weights can be fetched here, so the judge is
a small CNN trained on the real training images only; its penultimate layer is the feature
space. A distance is only meaningful next to its scale, so every report carries:

- the floor: real training images vs real held-out images (same count as the generated set),
  i.e. what a perfect generator would score, finite-sample noise included;
- the ceiling: Gaussian noise images vs real held-out images.

Conditional accuracy is the fraction of generated images the judge labels as the class they
were generated for (the "classification accuracy score" idea of Ravuri & Vinyals 2019, turned
around). `frechet_distance` uses a symmetric eigendecomposition; `frechet_distance_reference`
is its slow twin through `scipy.linalg.sqrtm`, held to it by the tests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from vlmoe.models.flow import Sampler, interpolate, sample

log = logging.getLogger(__name__)


class JudgeCNN(nn.Module):
    """Two conv stages (32, 64 channels, 2x2 pooling) and a 128-wide feature layer."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> None:
        super().__init__()
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.fc = nn.Linear(64 * side * side, 128)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(128, num_classes)

    def features(self, images_BCHW: Tensor) -> Tensor:
        """Images in [-1, 1] (B, C, H, W) -> features (B, 128)."""
        return F.relu(self.fc(self.convs(images_BCHW).flatten(1)))

    def forward(self, images_BCHW: Tensor) -> Tensor:
        return self.head(self.drop(self.features(images_BCHW)))  # (B, num_classes)


def random_shift(images_BCHW: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by up to `max_shift` pixels (zero-padded with -1, the background)."""
    B, _, H, W = images_BCHW.shape
    padded = F.pad(images_BCHW, [max_shift] * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, B), generator=generator).tolist()
    return torch.stack([padded[i, :, y : y + H, x : x + W] for i, (y, x) in enumerate(zip(dy, dx))])


def train_judge(
    images: Tensor,
    labels: Tensor,
    *,
    num_classes: int = 10,
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    max_shift: int = 2,
) -> JudgeCNN:
    """Train a `JudgeCNN` on real images (N, C, H, W) in [-1, 1] with random shifts of up to
    `max_shift` pixels (0 for labels a shift can change, such as where an object is)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    judge = JudgeCNN(images.shape[1], images.shape[-1], num_classes)
    steps = epochs * ((len(images) + batch_size - 1) // batch_size)
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    judge.train()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=g)
        for i in range(0, len(images), batch_size):
            idx = order[i : i + batch_size]
            x = random_shift(images[idx], max_shift, g) if max_shift else images[idx]
            loss = F.cross_entropy(judge(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log.info("judge epoch %d/%d: loss %.4f", epoch + 1, epochs, loss.item())
    return judge.eval()


def save_judge(judge: JudgeCNN, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    meta = {
        "in_channels": str(judge.in_channels),
        "image_size": str(judge.image_size),
        "num_classes": str(judge.num_classes),
    }
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(tmp), metadata=meta)
    tmp.replace(path)


def load_judge(path: str | Path) -> JudgeCNN:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    judge = JudgeCNN(int(meta["in_channels"]), int(meta["image_size"]), int(meta["num_classes"]))
    judge.load_state_dict(load_file(str(path)))
    return judge.eval()


@torch.no_grad()
def judge_outputs(judge: JudgeCNN, images: Tensor, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """(features (N, 128) float64, predicted class (N,)) of images (N, C, H, W) in [-1, 1]."""
    feats, preds = [], []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].float().clamp(-1, 1)
        f = judge.features(x)
        feats.append(f.double())
        preds.append(judge.head(f).argmax(-1))
    return torch.cat(feats), torch.cat(preds)


def gaussian_stats(features_ND: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (D,) and unbiased covariance (D, D) in float64."""
    x = features_ND.double()
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / max(1, len(x) - 1)


def frechet_distance(feats_a: Tensor, feats_b: Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of Gaussians fitted to features.

    tr((S_a S_b)^(1/2)) is the sum of square roots of the eigenvalues of the symmetric matrix
    S_a^(1/2) S_b S_a^(1/2), which has the same spectrum.
    """
    mu_a, s_a = gaussian_stats(feats_a)
    mu_b, s_b = gaussian_stats(feats_b)
    w, v = torch.linalg.eigh(s_a)
    sqrt_a = (v * w.clamp_min(0).sqrt()) @ v.T
    m = sqrt_a @ s_b @ sqrt_a
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    fd = (mu_a - mu_b).square().sum() + s_a.trace() + s_b.trace() - 2 * tr_sqrt
    return float(fd.clamp_min(0))


def frechet_distance_reference(feats_a: Tensor, feats_b: Tensor) -> float:
    """The textbook formula with `scipy.linalg.sqrtm` (as pytorch-fid computes it)."""
    from scipy import linalg

    mu_a, s_a = (t.numpy() for t in gaussian_stats(feats_a))
    mu_b, s_b = (t.numpy() for t in gaussian_stats(feats_b))
    covmean = linalg.sqrtm(s_a @ s_b)
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))


def reference_distances(
    judge: JudgeCNN, train_images: Tensor, test_images: Tensor, num: int, seed: int = 0
) -> dict[str, float]:
    """The floor (`num` real training images vs the held-out ones) and the ceiling (`num`
    Gaussian-noise images vs the held-out ones) of the Fréchet distance."""
    g = torch.Generator().manual_seed(seed)
    test_feats, _ = judge_outputs(judge, test_images)
    pick = torch.randperm(len(train_images), generator=g)[:num]
    floor_feats, _ = judge_outputs(judge, train_images[pick])
    noise = torch.randn((num, *test_images.shape[1:]), generator=g).clamp(-1, 1)
    noise_feats, _ = judge_outputs(judge, noise)
    return {
        "fd_floor": frechet_distance(floor_feats, test_feats),
        "fd_ceiling": frechet_distance(noise_feats, test_feats),
    }


def generate_per_class(
    model: nn.Module,
    num_per_class: int,
    num_classes: int,
    *,
    steps: int,
    cfg_scale: float,
    sampler: Sampler = "euler",
    seed: int = 0,
    batch_size: int = 250,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """(images (N, C, H, W) clipped to [-1, 1], requested labels (N,)), N = classes x num."""
    cfg = model.config
    labels = torch.arange(num_classes).repeat_interleave(num_per_class)
    g = torch.Generator().manual_seed(seed)
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    out = []
    for i in range(0, len(labels), batch_size):
        lab = labels[i : i + batch_size]
        noise = torch.randn((len(lab), *shape), generator=g)
        x = sample(model, noise, {"labels": lab}, steps=steps, sampler=sampler, cfg_scale=cfg_scale)
        out.append(x.clamp(-1, 1))
        if progress is not None:
            progress(min(i + batch_size, len(labels)), len(labels))
    return torch.cat(out), labels


@torch.no_grad()
def generate_for_captions(
    model: nn.Module,
    tokenizer: Any,
    captions: list[str],
    *,
    steps: int,
    cfg_scale: float,
    sampler: Sampler = "euler",
    seed: int = 0,
    batch_size: int = 100,
) -> Tensor:
    """One image (N, C, H, W) clipped to [-1, 1] per caption from a caption-conditioned DiT;
    the noise of image i depends on `seed` and i only, not on the batch size."""
    cfg = model.config
    if cfg.text is None:
        raise ValueError("generate_for_captions needs a caption-conditioned DiT (config.text)")
    model.eval()
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(
        (len(captions), cfg.in_channels, cfg.image_size, cfg.image_size), generator=g
    )
    out = []
    for i in range(0, len(captions), batch_size):
        enc = tokenizer.encode_batch(captions[i : i + batch_size], max_len=cfg.text.max_seq_len)
        cond = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"].long()}
        x = sample(
            model,
            noise[i : i + batch_size],
            cond,
            steps=steps,
            sampler=sampler,
            cfg_scale=cfg_scale,
        )
        out.append(x.clamp(-1, 1))
    return torch.cat(out)


class ClassConditionalEvaluator:
    """Generates `num_per_class` images per class and scores them with the judge: yields
    `gen_accuracy` (judge label == requested class) and `gen_fd` (vs the held-out images)."""

    def __init__(
        self,
        judge: JudgeCNN,
        test_images: Tensor,
        *,
        num_per_class: int = 100,
        steps: int = 25,
        cfg_scale: float = 2.0,
        sampler: Sampler = "euler",
        seed: int = 0,
    ) -> None:
        self.judge = judge
        self.test_feats, _ = judge_outputs(judge, test_images)
        self.num_per_class, self.steps, self.cfg_scale = num_per_class, steps, cfg_scale
        self.sampler, self.seed = sampler, seed
        self.last_images: Tensor | None = None

    def run(self, model: nn.Module) -> Iterator[tuple[str, float]]:
        was_training = model.training
        model.eval()
        images, labels = generate_per_class(
            model,
            self.num_per_class,
            self.judge.num_classes,
            steps=self.steps,
            cfg_scale=self.cfg_scale,
            sampler=self.sampler,
            seed=self.seed,
        )
        model.train(was_training)
        self.last_images = images
        feats, preds = judge_outputs(self.judge, images)
        yield "gen_accuracy", float((preds == labels).float().mean())
        yield "gen_fd", frechet_distance(feats, self.test_feats)


@torch.no_grad()
def routing_counts(
    model: nn.Module, labels: Tensor, *, steps: int = 20, seed: int = 0
) -> dict[str, np.ndarray]:
    """Where a class-conditional DiT's MoE layers send image patches while it samples images
    of `labels` (Euler, no guidance): routed (patch, expert) pairs per MoE block by sampling
    step (`time_LTE`), by patch position (`position_LNE`) and by class (`class_LCE`), and the
    times of the steps (`times_T`)."""
    cfg = model.config
    model.eval()
    B = len(labels)
    N = cfg.grid_size[0] * cfg.grid_size[1]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((B, cfg.in_channels, cfg.image_size, cfg.image_size), generator=g)
    times = torch.linspace(1.0, 0.0, steps + 1)
    pos_T = torch.arange(B * N) % N
    cls_T = labels.repeat_interleave(N)
    counts: dict[str, list] = {"time": [], "position": [], "class": []}
    for i in range(steps):
        out = model(x, times[i].expand(B), labels=labels)
        x = x + (times[i + 1] - times[i]) * out.velocity
        for layer, aux in enumerate(out.block_aux):
            E = aux.num_experts
            ids_TK = aux.expert_ids_TK.masked_fill(~aux.kept_TK, -1)
            valid = ids_TK >= 0
            e = ids_TK[valid]
            pos = pos_T[:, None].expand_as(ids_TK)[valid]
            cls = cls_T[:, None].expand_as(ids_TK)[valid]
            if i == 0:
                counts["time"].append(np.zeros((steps, E), dtype=np.int64))
                counts["position"].append(np.zeros((N, E), dtype=np.int64))
                counts["class"].append(np.zeros((cfg.num_classes, E), dtype=np.int64))
            counts["time"][layer][i] += torch.bincount(e, minlength=E).numpy()
            counts["position"][layer] += (
                torch.bincount(pos * E + e, minlength=N * E).view(N, E).numpy()
            )
            counts["class"][layer] += (
                torch.bincount(cls * E + e, minlength=cfg.num_classes * E)
                .view(cfg.num_classes, E)
                .numpy()
            )
    return {
        "time_LTE": np.stack(counts["time"]),
        "position_LNE": np.stack(counts["position"]),
        "class_LCE": np.stack(counts["class"]),
        "times_T": times[:-1].numpy(),
    }


def normalized_mutual_information(counts_FE: np.ndarray) -> float:
    """I(expert; factor) / H(expert) from a (factor value, expert) table of counts: the
    fraction of the uncertainty about a patch's expert that the factor explains (0 = routing
    ignores the factor, 1 = the factor decides the expert)."""
    p = counts_FE.astype(np.float64) / max(1, counts_FE.sum())
    p_f, p_e = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / (p_f @ p_e)[nz])).sum())
    h_e = float(-(p_e[p_e > 0] * np.log(p_e[p_e > 0])).sum())
    return min(1.0, max(0.0, mi / h_e)) if h_e > 0 else 0.0  # clip float rounding


def routing_dependence(counts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per MoE block, the normalized mutual information between expert and time, position and
    class (DiT-MoE: routing follows position and noise level more than class)."""
    return {
        factor: np.array([normalized_mutual_information(c) for c in counts[key]])
        for factor, key in (
            ("time", "time_LTE"),
            ("position", "position_LNE"),
            ("class", "class_LCE"),
        )
    }


class FlowLossEvaluator:
    """Held-out rectified-flow loss at fixed times (0.25, 0.5, 0.75) with fixed noise, so that
    runs and checkpoints compare without sampling: yields `flow_loss` (the mean) and
    `flow_loss_t<t>` per time. `conditions(batch)` gives the model's condition arguments."""

    def __init__(
        self,
        loader: Any,
        conditions: Callable[[dict], dict[str, Tensor]],
        times: tuple[float, ...] = (0.25, 0.5, 0.75),
        seed: int = 0,
    ) -> None:
        self.loader, self.conditions, self.times, self.seed = loader, conditions, times, seed

    @torch.no_grad()
    def run(self, model: nn.Module) -> Iterator[tuple[str, float]]:
        g = torch.Generator().manual_seed(self.seed)
        device = next(model.parameters()).device
        sums = torch.zeros(len(self.times), dtype=torch.float64)
        count = 0
        for batch in self.loader:
            images = to_model_channels(batch["images"], model.config.in_channels).to(device)
            cond = {k: v.to(device) for k, v in self.conditions(batch).items()}
            B = images.shape[0]
            for i, t in enumerate(self.times):
                noise = torch.randn(images.shape, generator=g).to(device)
                t_B = torch.full((B,), t, device=device)
                x_t, target = interpolate(images, noise, t_B)
                v = model(x_t, t_B, **cond).velocity
                sums[i] += (v.float() - target).square().mean((1, 2, 3)).sum().double().cpu()
            count += B
        per_t = sums / max(1, count)
        yield "flow_loss", float(per_t.mean())
        for t, value in zip(self.times, per_t.tolist()):
            yield f"flow_loss_t{t:g}", value


def to_model_channels(images_BCHW: Tensor, channels: int) -> Tensor:
    """RGB batches (as the data path gives them) -> the model's channels (grey = channel mean)."""
    if images_BCHW.shape[1] == channels:
        return images_BCHW
    if channels == 1:
        return images_BCHW.mean(1, keepdim=True)
    raise ValueError(f"cannot turn {images_BCHW.shape[1]}-channel images into {channels}")
