"""A tiny MoE classifier and dataset for trainer tests that need no model presets."""

from __future__ import annotations

import torch
from torch import nn

from vlmoe.config import MoEConfig
from vlmoe.moe.layer import MoELayer
from vlmoe.tasks.data import Cycle
from vlmoe.train.trainer import StepOutput


class ToyMoE(nn.Module):
    def __init__(self, moe: MoEConfig | None = None, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.moe = MoELayer(moe or MoEConfig(dim=16, hidden_dim=32, num_experts=4, top_k=2))
        self.drop = nn.Dropout(dropout)  # draws from the torch RNG: resume must restore it
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.embed(x)
        y, aux = self.moe(h)
        return self.head(self.drop(h + y)), [aux]


def objective(model, batch) -> StepOutput:
    logits, aux = model(batch["x"])
    return StepOutput(nn.functional.cross_entropy(logits, batch["y"]), moe_aux=aux)


def dataset(n: int = 96) -> Cycle:
    """(x, y) pairs, indexed by stream position as the trainer reads them."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return Cycle([(x[i], y[i]) for i in range(n)])


def collate(items):
    return {"x": torch.stack([a for a, _ in items]), "y": torch.stack([b for _, b in items])}
