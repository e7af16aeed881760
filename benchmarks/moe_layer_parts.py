"""Where a small MoE layer's training step goes, against the dense FFN of equal active FLOPs:
the whole layer, the experts alone, the router alone, and the rest (dispatch, combine, loss).

    python benchmarks/moe_layer_parts.py [--sizes 64:256 128:384] [--tokens 1040 4160]

Sizes are `dim:dense_hidden` as in the presets (`*-small`: 128:384) and the scaling study
(64:256); the MoE twin has E=8 experts of width hidden/2, top-2 (equal active parameters).
A step is forward, a stand-in loss (+ 0.01 x load balance for MoE) and backward, fp32.
Timed by this thread's CPU time with one torch thread, minimum over `--runs` runs taken
round-robin, so that other processes on a shared machine do not count.
"""

from __future__ import annotations

import argparse
import time

import torch

from vlmoe.config import MoEConfig
from vlmoe.moe import MoELayer
from vlmoe.moe.experts import experts_grouped_mm
from vlmoe.moe.losses import load_balance_loss
from vlmoe.nn.mlp import MLP


def cell(dim: int, hidden: int, tokens: int, runs: int) -> dict[str, float]:
    torch.manual_seed(0)
    moe = MoELayer(MoEConfig(dim=dim, hidden_dim=hidden // 2, num_experts=8, top_k=2))
    dense = MLP(dim, hidden)
    x = torch.randn(tokens, dim, requires_grad=True)
    g = torch.randn(tokens, dim)
    with torch.no_grad():
        r = moe.router(x)
        x_ND, plan = moe.dispatcher.dispatch(x, r.expert_ids_TK, r.weights_TK)
    x_ND.requires_grad_()
    g_ND = torch.randn_like(x_ND)
    params = [*moe.parameters(), *dense.parameters(), x, x_ND]

    def zero():
        for p in params:
            p.grad = None

    def layer():
        zero()
        y, aux = moe(x)
        ((y * g).sum() + 0.01 * load_balance_loss(aux)).backward()

    def ffn():
        zero()
        (dense(x) * g).sum().backward()

    def experts():
        zero()
        e = moe.experts
        experts_grouped_mm(x_ND, plan.counts_E, e.w_in, e.w_out, e.activation).backward(g_ND)

    def router():
        zero()
        out = moe.router(x)
        (out.weights_TK.sum() + out.probs_TE.sum()).backward()

    fns = {"dense": ffn, "moe": layer, "experts": experts, "router": router}
    for fn in fns.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            t0 = time.thread_time()
            fn()
            times[k].append(time.thread_time() - t0)
    ms = {k: 1e3 * min(v) for k, v in times.items()}
    ms["rest"] = ms["moe"] - ms["experts"] - ms["router"]
    return ms


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["64:256", "128:384"])
    p.add_argument("--tokens", nargs="+", type=int, default=[1040, 4160])
    p.add_argument("--runs", type=int, default=30)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cols = ("dense", "moe", "experts", "router", "rest")
    print(
        f"{'dim:hidden':>10} {'T':>6} " + " ".join(f"{c + ' ms':>11}" for c in cols) + "  moe/dense"
    )
    for size in args.sizes:
        dim, hidden = (int(v) for v in size.split(":"))
        for tokens in args.tokens:
            ms = cell(dim, hidden, tokens, args.runs)
            row = " ".join(f"{ms[c]:>11.3f}" for c in cols)
            print(f"{size:>10} {tokens:>6} {row}  {ms['moe'] / ms['dense']:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
