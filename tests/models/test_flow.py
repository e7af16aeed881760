"""Rectified flow: timesteps, the path, samplers against exact solutions, guidance."""

from dataclasses import dataclass

import pytest
import torch

import vlmoe
from vlmoe.config import ConfigError
from vlmoe.models.flow import FlowConfig, flow_loss, interpolate, sample, sample_timesteps


@dataclass
class _Out:
    velocity: torch.Tensor


class GaussianOracle(torch.nn.Module):
    """The exact rectified-flow velocity for 1-D Gaussian data N(m, s^2) per element:
    v(x, t) = E[noise - x0 | x_t = x]. `labels` pick the mean; `drop` uses mean 0."""

    def __init__(self, means: torch.Tensor, s: float) -> None:
        super().__init__()
        self.means, self.s = means, s

    def forward(self, x, t, labels=None, drop=None):
        m = self.means[labels] if labels is not None else torch.zeros(x.shape[0])
        if drop is not None:
            m = torch.where(drop, torch.zeros_like(m), m)
        m = m.view(-1, *([1] * (x.dim() - 1)))
        t = t.view_as(m)
        var = (1 - t) ** 2 * self.s**2 + t**2
        centred = x - (1 - t) * m
        x0 = m + (1 - t) * self.s**2 / var * centred
        eps = t / var * centred
        return _Out(eps - x0)


def test_interpolate_endpoints_and_target():
    x0, noise = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    x_t, v = interpolate(x0, noise, torch.tensor([0.0, 1.0, 0.25]))
    assert torch.equal(x_t[0], x0[0]) and torch.equal(x_t[1], noise[1])
    torch.testing.assert_close(x_t[2], 0.75 * x0[2] + 0.25 * noise[2])
    torch.testing.assert_close(v, noise - x0)


def test_logit_normal_timesteps():
    t = sample_timesteps(20000, FlowConfig(logit_mean=0.5, logit_std=0.8), torch.Generator())
    assert t.min() > 0 and t.max() < 1
    logit = torch.logit(t.double())
    assert abs(logit.mean() - 0.5) < 0.03 and abs(logit.std() - 0.8) < 0.03
    u = sample_timesteps(20000, FlowConfig(timesteps="uniform"), torch.Generator())
    assert abs(u.mean() - 0.5) < 0.01


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_samplers_reach_the_exact_transport_map(sampler):
    # For Gaussian data the flow ODE maps noise z to m + s z exactly.
    oracle = GaussianOracle(torch.tensor([2.0, -1.0]), s=0.5)
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1])
    exact = oracle.means[labels].view(-1, 1, 1, 1) + 0.5 * z
    errors = []
    for steps in (8, 16, 32):
        x = sample(oracle, z, {"labels": labels}, steps=steps, sampler=sampler)
        errors.append((x - exact).abs().max().item())
    assert errors[-1] < (0.1 if sampler == "euler" else 5e-3)
    order = 1 if sampler == "euler" else 2
    for a, b in zip(errors, errors[1:]):  # error shrinks like steps^-order
        assert a / b > 2**order * 0.7


def test_heun_beats_euler_at_equal_steps_and_progress_is_reported():
    oracle = GaussianOracle(torch.tensor([1.5]), s=0.3)
    z = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    exact = 1.5 + 0.3 * z
    seen = []
    heun = sample(
        oracle,
        z,
        {"labels": torch.zeros(4, dtype=torch.long)},
        steps=6,
        sampler="heun",
        progress=lambda i, n: seen.append((i, n)),
    )
    euler = sample(oracle, z, {"labels": torch.zeros(4, dtype=torch.long)}, steps=6)
    assert (heun - exact).abs().max() < (euler - exact).abs().max() / 1.5
    assert seen == [(i, 6) for i in range(1, 7)]


def test_guidance_scale_mixes_conditional_and_unconditional_velocities():
    oracle = GaussianOracle(torch.tensor([2.0]), s=1.0)
    z = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(2))
    cond = {"labels": torch.zeros(3, dtype=torch.long)}
    cond_only = sample(oracle, z, cond, steps=1)  # one Euler step: x = z - v(z, 1)
    uncond = sample(oracle, z, cond, steps=1, cfg_scale=0.0)
    guided = sample(oracle, z, cond, steps=1, cfg_scale=3.0)
    torch.testing.assert_close(cond_only, z - oracle(z, torch.ones(3), **cond).velocity)
    torch.testing.assert_close(uncond, z - oracle(z, torch.ones(3)).velocity)
    torch.testing.assert_close(guided, uncond + 3.0 * (cond_only - uncond))


def test_sampler_argument_errors():
    oracle = GaussianOracle(torch.tensor([0.0]), s=1.0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        sample(oracle, torch.zeros(1, 1, 2, 2), {}, steps=0)
    with pytest.raises(ValueError, match="sampler"):
        sample(oracle, torch.zeros(1, 1, 2, 2), {}, sampler="ddim")
    with pytest.raises(ConfigError, match="cond_dropout"):
        FlowConfig(cond_dropout=1.0)


def test_flow_loss_trains_a_debug_dit_and_drops_conditions():
    torch.manual_seed(0)
    model = vlmoe.create_model("dit-debug-moe")
    images = torch.rand(8, 1, 8, 8) * 2 - 1
    labels = torch.arange(8) % 10
    cfg = FlowConfig(cond_dropout=0.5)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        out = flow_loss(
            model, images, cfg, labels=labels, generator=torch.Generator().manual_seed(0)
        )
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert len(out.moe_aux) == 2 and out.t.shape == (8,)
    assert losses[-1] < 0.7 * losses[0]
