"""Grouped experts against a dense bf16 GEMM of equal FLOPs, on one CUDA device.

    python benchmarks/gpu/moe_layer_gpu.py [--tokens 4096 16384 65536] [--configs M L]

For each config and token count T, with E=8 experts and top-2 routing from a vlmoe router on
random tokens (so the per-expert counts are uneven, as in training):

- `dense`: the dense SwiGLU FFN with hidden K*H in bf16 (two GEMMs forward, four backward):
  the same active FLOPs as the experts, at the shapes cuBLAS runs best.
- `experts`: `vlmoe.moe.experts.experts_grouped_mm` on the dispatched buffer (torch._grouped_mm
  on Hopper and newer: one grouped GEMM per projection, offsets read on the device).
- `layer`: the whole MoE layer (router, dispatch, experts, combine), `backend="auto"`.

Times are CUDA-event medians of `--runs` runs after warm-up; `rate_vs_dense` is the dense
time over the impl's time, i.e. the fraction of the dense GEMM rate the impl reaches at equal
FLOPs (target: experts >= 0.70 at T >= 4096). Prints one table, and JSON with `--json PATH`.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from vlmoe.config import MoEConfig
from vlmoe.moe import MoELayer
from vlmoe.moe.experts import experts_grouped_mm, grouped_mm_applies
from vlmoe.nn.mlp import MLP

CONFIGS = {"S": (1024, 2816), "M": (2048, 5632), "L": (4096, 14336)}
E, K = 8, 2


def cuda_time_ms(fn, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def bench(config: str, T: int, mode: str, runs: int, warmup: int) -> list[dict]:
    D, H = CONFIGS[config]
    dev, dt = torch.device("cuda"), torch.bfloat16
    torch.manual_seed(0)
    layer = MoELayer(MoEConfig(dim=D, hidden_dim=H, num_experts=E, top_k=K)).to(dev, dt)
    dense = MLP(D, K * H).to(dev, dt)
    x = torch.randn(T, D, device=dev, dtype=dt)
    with torch.no_grad():
        r = layer.router(x)
        x_ND, plan = layer.dispatcher.dispatch(x, r.expert_ids_TK, r.weights_TK)
    counts = plan.counts_E
    w_in, w_out = layer.experts.w_in, layer.experts.w_out
    g_TD = torch.randn(T, D, device=dev, dtype=dt)
    g_ND = torch.randn_like(x_ND)
    xg, xg_ND = x.clone().requires_grad_(), x_ND.clone().requires_grad_()
    params = [*layer.parameters(), *dense.parameters(), xg, xg_ND]

    def zero():
        for p in params:
            p.grad = None

    def run(kind: str):
        if mode == "fwd":
            with torch.no_grad():
                if kind == "dense":
                    dense(x)
                elif kind == "experts":
                    experts_grouped_mm(x_ND, counts, w_in, w_out, "swiglu")
                else:
                    layer(x)
            return
        zero()
        if kind == "dense":
            dense(xg).backward(g_TD)
        elif kind == "experts":
            experts_grouped_mm(xg_ND, counts, w_in, w_out, "swiglu").backward(g_ND)
        else:
            layer(xg)[0].backward(g_TD)

    flops = 2 * T * K * (D * 2 * H + H * D) * (3 if mode == "fwd_bwd" else 1)
    ms = {
        kind: cuda_time_ms(lambda k=kind: run(k), runs, warmup)
        for kind in ("dense", "experts", "layer")
    }
    rows = []
    for kind, t in ms.items():
        rows.append(
            {
                "config": config,
                "dim": D,
                "hidden_dim": H,
                "mode": mode,
                "tokens": T,
                "impl": kind,
                "median_ms": round(t, 4),
                "tflops": round(flops / t / 1e9, 1),
                "rate_vs_dense": round(ms["dense"] / t, 3),
                "grouped_mm": grouped_mm_applies(x_ND, w_in, w_out),
                "max_over_mean_rows": round(float(counts.max()) / (T * K / E), 3),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=["S", "M", "L"], choices=sorted(CONFIGS))
    p.add_argument("--tokens", nargs="+", type=int, default=[4096, 16384, 65536])
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd_bwd"], choices=["fwd", "fwd_bwd"])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA device")
    name = torch.cuda.get_device_name()
    cap = torch.cuda.get_device_capability()
    print(f"[moe_layer_gpu] {name} (sm{cap[0]}{cap[1]}), torch {torch.__version__}, bf16")
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    peak_ms = cuda_time_ms(lambda: a @ a, 10, 3)
    print(f"[moe_layer_gpu] bf16 square GEMM n={n}: {2 * n**3 / peak_ms / 1e9:.0f} TFLOP/s")
    cols = ("config", "mode", "tokens", "impl", "median_ms", "tflops", "rate_vs_dense")
    print("  ".join(f"{c:>14}" for c in cols))
    rows = []
    for config in args.configs:
        for T in args.tokens:
            for mode in args.modes:
                cell = bench(config, T, mode, args.runs, args.warmup)
                for r in cell:
                    print("  ".join(f"{r[c]!s:>14}" for c in cols), flush=True)
                rows += cell
                torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    experts = [r for r in rows if r["impl"] == "experts" and r["tokens"] >= 4096]
    worst = min(experts, key=lambda r: r["rate_vs_dense"]) if experts else None
    if worst:
        verdict = "meets" if worst["rate_vs_dense"] >= 0.7 else "MISSES"
        print(
            f"[moe_layer_gpu] worst experts rate vs dense at T>=4096: {worst['rate_vs_dense']:.2f}"
            f" ({worst['config']} {worst['mode']} T={worst['tokens']}); {verdict} the 0.70 target"
        )
    return rows


if __name__ == "__main__":
    main()
