"""Rectified flow (Liu et al. 2023; Esser et al. 2024, "SD3") for `vlmoe.models.dit.DiT`:
the training loss, and Euler and Heun samplers with classifier-free guidance. The EMA weights
that sampling uses are kept by the trainer (`vlmoe.train.ema`).

Conventions: data x0 at t = 0, Gaussian noise at t = 1, x_t = (1 - t) x0 + t noise, and the
model predicts the constant velocity v = noise - x0 of that straight path. Training draws t
from a logit-normal distribution (SD3: sigmoid of N(mean, std), which weights the middle of
the path where the velocity is hardest to predict). Sampling integrates dx/dt = v from t = 1
to t = 0 in `steps` uniform steps; Heun adds a corrector per step (two model calls, second
order). Classifier-free guidance (Ho & Salimans 2022): v = v_uncond + scale (v_cond - v_uncond),
from two separate forwards, so that batch-wide routing (expert choice) never mixes the
conditional and unconditional halves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlmoe.config import Config, check

Sampler = Literal["euler", "heun"]


@dataclass
class FlowConfig(Config):
    """Rectified-flow training and sampling settings."""

    timesteps: Literal["logit_normal", "uniform"] = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    cond_dropout: float = 0.1  # fraction of training samples with the null condition (CFG)
    ema_decay: float = 0.999  # EMA weights kept in training and sampled from; 0 = none
    sampler: Sampler = "euler"
    steps: int = 30
    cfg_scale: float = 1.0  # 1 = conditional only, no guidance

    def __post_init__(self) -> None:
        check(self.logit_std > 0, f"flow.logit_std must be > 0, got {self.logit_std}")
        check(
            0.0 <= self.cond_dropout < 1.0,
            f"flow.cond_dropout must be in [0, 1), got {self.cond_dropout}",
        )
        check(
            0.0 <= self.ema_decay < 1.0, f"flow.ema_decay must be in [0, 1), got {self.ema_decay}"
        )
        check(self.steps >= 1, f"flow.steps must be >= 1, got {self.steps}")
        check(self.cfg_scale >= 0, f"flow.cfg_scale must be >= 0, got {self.cfg_scale}")


def sample_timesteps(
    batch: int, cfg: FlowConfig, generator: torch.Generator | None = None, device: Any = None
) -> Tensor:
    """(B,) training times in (0, 1): logit-normal or uniform."""
    if cfg.timesteps == "uniform":
        return torch.rand(batch, generator=generator, device=device)
    z = torch.randn(batch, generator=generator, device=device)
    return torch.sigmoid(cfg.logit_mean + cfg.logit_std * z)


def interpolate(x0: Tensor, noise: Tensor, t_B: Tensor) -> tuple[Tensor, Tensor]:
    """(x_t, velocity target) on the straight path from data x0 (t=0) to noise (t=1)."""
    t = t_B.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - t) * x0 + t * noise, noise - x0


@dataclass
class FlowLoss:
    loss: Tensor  # scalar: mean squared velocity error
    moe_aux: list  # the model's MoEAux list (for balance losses and stats)
    t: Tensor  # (B,) the sampled times


def flow_loss(
    model: nn.Module,
    images: Tensor,
    cfg: FlowConfig,
    *,
    labels: Tensor | None = None,
    input_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> FlowLoss:
    """Rectified-flow loss on clean images (B, C, H, W) in [-1, 1]; drops the condition of a
    `cond_dropout` fraction of the batch so the same model learns the unconditional velocity."""
    B = images.shape[0]
    device = images.device
    t_B = sample_timesteps(B, cfg, generator, device)
    noise = torch.randn(images.shape, generator=generator, device=device)
    x_t, target = interpolate(images, noise, t_B)
    drop_B = torch.rand(B, generator=generator, device=device) < cfg.cond_dropout
    out = model(x_t, t_B, labels, input_ids, attention_mask, drop=drop_B)
    return FlowLoss(F.mse_loss(out.velocity.float(), target.float()), out.moe_aux, t_B)


def guided_velocity(
    model: nn.Module, x: Tensor, t_B: Tensor, cond: dict[str, Any], cfg_scale: float
) -> Tensor:
    """Velocity at (x, t) under `cond` (model keyword arguments), with guidance `cfg_scale`."""
    v_cond = model(x, t_B, **cond).velocity
    if cfg_scale == 1.0:
        return v_cond
    drop = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    v_uncond = model(x, t_B, **cond, drop=drop).velocity
    return v_uncond + cfg_scale * (v_cond - v_uncond)


@torch.no_grad()
def sample(
    model: nn.Module,
    noise: Tensor,
    cond: dict[str, Any],
    *,
    steps: int = 30,
    sampler: Sampler = "euler",
    cfg_scale: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Integrate from noise (B, C, H, W) at t = 1 to images at t = 0.

    `cond`: keyword arguments of the model (`labels`, `input_ids`, `attention_mask`).
    `progress(step, steps)` is called after each step. Returns float images (unclipped).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if sampler not in ("euler", "heun"):
        raise ValueError(f"sampler must be 'euler' or 'heun', got {sampler!r}")
    x = noise.float()
    B = x.shape[0]
    times = torch.linspace(1.0, 0.0, steps + 1, device=x.device)
    for i in range(steps):
        t, t_next = times[i], times[i + 1]
        dt = t_next - t  # negative
        v = guided_velocity(model, x, t.expand(B), cond, cfg_scale)
        x_next = x + dt * v
        if sampler == "heun" and i < steps - 1:  # no corrector at t = 0 (as in EDM)
            v_next = guided_velocity(model, x_next, t_next.expand(B), cond, cfg_scale)
            x_next = x + dt * 0.5 * (v + v_next)
        x = x_next
        if progress is not None:
            progress(i + 1, steps)
    return x


def generation_conditions(
    model: nn.Module,
    num: int,
    *,
    label: int | None = None,
    prompt: str | None = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """The model keyword arguments that ask a DiT for `num` images of class `label` and/or
    caption `prompt` (tokenized with `tokenizer`, vlmoe's, cut at the text encoder's length)."""
    cfg = model.config
    cond: dict[str, Any] = {}
    if cfg.num_classes:
        if label is None:
            raise ValueError(
                f"this model is class-conditioned: give a label in [0, {cfg.num_classes})"
            )
        if not 0 <= label < cfg.num_classes:
            raise ValueError(f"label {label} is out of range [0, {cfg.num_classes})")
        cond["labels"] = torch.full((num,), label, dtype=torch.long)
    elif label is not None:
        raise ValueError("this model takes no class label (num_classes=0); give a prompt")
    if cfg.text is not None:
        if prompt is None:
            raise ValueError("this model is caption-conditioned: give a prompt")
        if tokenizer is None:
            raise ValueError("a caption-conditioned model needs its tokenizer (tokenizer.json)")
        enc = tokenizer.encode_batch([prompt] * num, max_len=cfg.text.max_seq_len)
        cond["input_ids"], cond["attention_mask"] = enc["input_ids"], enc["attention_mask"].long()
    elif prompt is not None:
        raise ValueError("this model takes no caption (it is class-conditioned); give a label")
    return cond


@torch.no_grad()
def generate_images(
    model: nn.Module,
    num: int,
    *,
    label: int | None = None,
    prompt: str | None = None,
    tokenizer: Any = None,
    steps: int = 30,
    sampler: Sampler = "euler",
    cfg_scale: float = 1.0,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """`num` images (num, C, H, W) in [-1, 1] from a DiT for a class and/or a caption."""
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    cfg = model.config
    cond = generation_conditions(model, num, label=label, prompt=prompt, tokenizer=tokenizer)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((num, cfg.in_channels, cfg.image_size, cfg.image_size), generator=g)
    x = sample(
        model.eval(),
        noise,
        cond,
        steps=steps,
        sampler=sampler,
        cfg_scale=cfg_scale,
        progress=progress,
    )
    return x.clamp(-1, 1)
