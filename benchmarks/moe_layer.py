"""Time a sparse MoE layer against the dense FFN of equal active FLOPs, and against the usual ways
of writing one: naive all-experts, a per-expert index_select/index_add loop, the transformers
Mixtral block, and every vlmoe backend (`loop`, `grouped_mm`, `bmm`, `auto`).

    python benchmarks/moe_layer.py [--quick] [--json PATH]

It first prints the CPU (model, ISA flags, torch's dispatch level, any oneDNN ISA cap) and the
measured fp32 and bf16 matmul rates; cells in a dtype this CPU emulates (bf16 slower than fp32:
no bf16 units, or `ONEDNN_MAX_CPU_ISA=AVX2`) are marked, and cells expected to outlast
`--cell-budget` (20 s with `--quick`) are skipped with the reason, so `--quick` stays within
3 minutes on an idle 2-core CPU whatever its bf16 rate.

Configs: A (dim 512, hidden 1024) and B (dim 1024, hidden 2816), E=8 experts, top-2, SwiGLU;
fp32 and bf16; T in {1, 16, 512, 4096, 16384} tokens; `fwd` (under no_grad) and `fwd_bwd`
(forward, then backward of a fixed random output gradient, input and every weight requiring
grad, gradients reset to None before each run as `zero_grad()` does).

How it measures (printed again at the top of every run):

- Threads: `torch.set_num_threads(2)` (the size of the machine this was written on). Two-thread
  timings are only meaningful on an otherwise idle machine: under contention OpenMP barriers
  stall for milliseconds per op. `--wait-idle S` waits (up to S seconds) for an idle CPU
  before each cell; every cell prints the load average it started at.
- Timing: per cell, every impl is built once and warmed up, then the impls are timed round-robin
  (run 1 of every impl, run 2 of every impl, ...) so that a burst of load from another process
  hits all of them alike; `median_ms` is the median of `--runs` (>= 10) runs.
- Allocator: with glibc's defaults every freed large tensor is handed back to the kernel
  (mmap/munmap) and the next one is page-faulted anew, which slows the dense reference most and
  makes MoE paths look faster than the floor. The script re-executes itself once with
  MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2**40 (freed memory stays in the heap and is reused)
  unless those are already set or `--no-reexec` is given, and says so.
- ratio_to_dense: median time over that of the dense SwiGLU FFN with hidden K*H (the same
  active FLOPs) in the same cell. ratio_to_touched (T <= 16): over a dense SwiGLU with hidden
  (distinct experts the batch touched) * H, since decode reads the weights of every touched
  expert; the count comes from the vlmoe router on the same input.
- gflops: useful expert FLOPs per second, 2*T*K*(D*I + H*D) forward and three times that for
  forward+backward, whatever the impl actually computes. fraction_of_peak: gflops over the rate
  of one square matmul of the same dtype (`vlmoe.nn.machine.measure_matmul_rates`: n=1024, or
  n=256 for an emulated dtype) timed at the start of the run.
- peak_mb: peak bytes held by CPU tensors during one extra run, above what was held before it,
  counted from the torch profiler's memory events (every CPU tensor allocation and free, in
  order; independent of the C allocator and of page granularity). For fwd_bwd the gradient
  buffers already exist (as after `zero_grad(set_to_none=False)`), so the peak counts
  activations and temporaries, not the gradient storage that an MoE holds E/K times as much of
  as its dense equivalent by design (the temporaries do include each weight's fresh gradient
  before it is added to `.grad`, E/K times the dense one's for the same reason).
- act_mb (fwd_bwd): activation memory, the bytes a forward leaves held for its backward (output
  included), counted the same way at the end of a separate forward run.

Impls skipped (and said so) where they cannot run or would take most of the run's time: naive
all-experts beyond T=4096 (it builds E x T x I buffers, several GB), transformers' batched_mm
beyond T=16 (it gathers a copy of the weights per token), and the slow references (vlmoe loop,
index loop, transformers eager) beyond T=4096 unless `--all-cells` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)}


def _reexec_with_allocator_env() -> None:
    if all(os.environ.get(k) == v for k, v in ALLOCATOR_ENV.items()):
        return
    print(
        f"[moe_layer] re-executing with {' '.join(f'{k}={v}' for k, v in ALLOCATOR_ENV.items())}"
        " so that freed memory is reused instead of page-faulted anew",
        flush=True,
    )
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **ALLOCATOR_ENV})


# torch and vlmoe are imported after the re-exec decision (in main) so that the allocator
# settings are in place before any large allocation.
torch = None  # type: ignore[assignment]

CONFIGS = {"A": (512, 1024), "B": (1024, 2816)}
NUM_EXPERTS, TOP_K = 8, 2
TOKENS = (1, 16, 512, 4096, 16384)
ALL_IMPLS = (
    "dense",
    "dense_touched",
    "naive",
    "index_loop",
    "hf_eager",
    "hf_grouped_mm",
    "hf_batched_mm",
    "vlmoe_loop",
    "vlmoe_grouped_mm",
    "vlmoe_bmm",
    "vlmoe_auto",
)
SLOW_REFERENCES = ("vlmoe_loop", "index_loop", "hf_eager")
QUICK = dict(
    configs=("A",),
    dtypes=("fp32", "bf16"),
    tokens=(1, 16, 1024),
    impls=(
        "dense",
        "dense_touched",
        "index_loop",
        "hf_grouped_mm",
        "vlmoe_grouped_mm",
        "vlmoe_bmm",
        "vlmoe_auto",
    ),
)


@dataclass
class Cell:
    config: str
    dtype: str
    mode: str
    tokens: int


# ---------------------------------------------------------------------------------------------
# impls: each builder returns a zero-argument step function (forward, or forward + backward)


class Impls:
    """Every implementation of one (config, dtype, T), sharing one set of expert weights."""

    def __init__(self, dim: int, hidden: int, dtype, tokens: int, seed: int = 0) -> None:
        from vlmoe.config import MoEConfig
        from vlmoe.moe import MoELayer
        from vlmoe.nn.mlp import MLP

        torch.manual_seed(seed)
        self.dim, self.hidden, self.dtype, self.tokens = dim, hidden, dtype, tokens
        cfg = MoEConfig(
            dim=dim, hidden_dim=hidden, num_experts=NUM_EXPERTS, top_k=TOP_K, activation="swiglu"
        )
        self.layer = MoELayer(cfg).to(dtype)
        self.x = torch.randn(tokens, dim, dtype=dtype)
        self.grad = torch.randn(tokens, dim, dtype=dtype)
        with torch.no_grad():
            ids = self.layer.router(self.x).expert_ids_TK
        self.touched = int(torch.unique(ids).numel())
        self.dense = MLP(dim, TOP_K * hidden).to(dtype)
        self.dense_touched = MLP(dim, self.touched * hidden).to(dtype) if tokens <= 16 else None
        self._hf = {}

    def module(self, impl: str, all_cells: bool = False):
        """(module, forward function of x) for an impl, or None where it is skipped."""
        if not all_cells and self.tokens > 4096 and impl in SLOW_REFERENCES:
            return None
        if impl == "dense":
            return self.dense, self.dense
        if impl == "dense_touched":
            m = self.dense_touched
            return None if m is None else (m, m)
        if impl == "naive":
            return None if self.tokens > 4096 else (self.layer, self._naive)
        if impl == "index_loop":
            return self.layer, self._index_loop
        if impl.startswith("hf_"):
            if impl == "hf_batched_mm" and self.tokens > 16:
                return None
            block = self._hf_block(impl[3:])
            return block, lambda x: block(x[None])[0]
        if impl.startswith("vlmoe_"):
            backend = impl[len("vlmoe_") :]

            def run(x):
                self.layer.experts.backend = backend
                return self.layer(x)[0]

            return self.layer, run
        raise ValueError(f"unknown impl {impl!r}")

    def _hf_block(self, implementation: str):
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

        from vlmoe.moe.hf import mixtral_state_dict

        if implementation not in self._hf:
            hf_cfg = MixtralConfig(
                hidden_size=self.dim,
                intermediate_size=self.hidden,
                num_local_experts=NUM_EXPERTS,
                num_experts_per_tok=TOP_K,
            )
            hf_cfg._experts_implementation = implementation
            block = MixtralSparseMoeBlock(hf_cfg).to(self.dtype)
            block.load_state_dict(mixtral_state_dict(self.layer))
            self._hf[implementation] = block
        return self._hf[implementation]

    def _naive(self, x_TD):
        """Every expert on every token, then the router-weighted sum (E/K times the FLOPs)."""
        from vlmoe.nn.mlp import activate

        r = self.layer.router(x_TD)
        gates_TE = torch.zeros_like(r.probs_TE).scatter(1, r.expert_ids_TK, r.weights_TK)
        w_in, w_out = self.layer.experts.w_in, self.layer.experts.w_out
        h_ETH = activate(torch.matmul(x_TD[None], w_in), "swiglu")  # (E, T, H)
        y_ETD = torch.bmm(h_ETH, w_out)  # (E, T, D)
        return (y_ETD * gates_TE.t().to(x_TD.dtype)[:, :, None]).sum(0)

    def _index_loop(self, x_TD):
        """The common pattern: per expert, index_select its tokens, run it, index_add back."""
        from vlmoe.nn.mlp import activate

        r = self.layer.router(x_TD)
        w_in, w_out = self.layer.experts.w_in, self.layer.experts.w_out
        weights_TK = r.weights_TK.to(x_TD.dtype)
        y_TD = torch.zeros_like(x_TD)
        for e in range(NUM_EXPERTS):
            tok, slot = torch.where(r.expert_ids_TK == e)
            if tok.numel() == 0:
                continue
            h = activate(x_TD.index_select(0, tok) @ w_in[e], "swiglu")
            y_TD = y_TD.index_add(0, tok, (h @ w_out[e]) * weights_TK[tok, slot, None])
        return y_TD

    def step(self, impl: str, mode: str, all_cells: bool = False):
        """(zero-argument run function, module) for one impl and mode, or None if skipped."""
        built = self.module(impl, all_cells)
        if built is None:
            return None
        module, fwd = built
        if mode == "fwd":
            module.eval()

            def run_fwd(keep_grads: bool = False) -> None:
                with torch.no_grad():
                    fwd(self.x)

            return run_fwd, module
        module.train()
        x = self.x.detach().requires_grad_()

        def run_fwd_bwd(keep_grads: bool = False, forward_only: bool = False):
            if not keep_grads:  # zero_grad(set_to_none=True), as training loops do
                for p in module.parameters():
                    p.grad = None
                x.grad = None
            if forward_only:  # the output, holding what the backward will need
                return fwd(x)
            fwd(x).backward(self.grad)

        return run_fwd_bwd, module


# ---------------------------------------------------------------------------------------------
# measurement


def _memory_events(call: Callable[[], object]) -> tuple[float, float, object]:
    """(peak, held at the end) bytes of CPU tensors over `call()`, above what was held before,
    from the profiler's memory events (every allocation and free, in order), so independent of
    the C allocator; and what `call` returned (kept alive, so its bytes count as held)."""
    from torch.profiler import ProfilerActivity, profile

    stderr = os.dup(2)  # the profiler's C++ side logs its start and stop on stderr
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            result = call()
    finally:
        os.dup2(stderr, 2)
        os.close(stderr)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    held = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        held += e.nbytes()
        peak = max(peak, held)
    return peak, held, result


def memory_mb(run: Callable[..., object], module, mode: str) -> tuple[float, float | None]:
    """(peak_mb, act_mb) of one run, above what was held before it.

    peak_mb: the most held at any moment. For fwd_bwd the gradients of the parameters and of
    the input are allocated beforehand (as `zero_grad(set_to_none=False)` leaves them), so the
    peak counts activations and temporaries, not gradient storage; the temporaries include
    each weight's fresh gradient before it is added to `.grad`, E/K times larger for an MoE
    than for its dense equivalent by design, as its weights are.
    act_mb (fwd_bwd only): activation memory, what the forward leaves held for the backward
    (its output included), measured at the end of a forward run alone.
    """
    tensors = list(module.parameters())
    act = None
    if mode == "fwd_bwd":
        for p in tensors:
            p.grad = torch.zeros_like(p)
        _, held, out = _memory_events(lambda: run(keep_grads=True, forward_only=True))
        del out
        act = held / 2**20
    peak, _, _ = _memory_events(lambda: run(keep_grads=True))
    for p in tensors:
        p.grad = None
    return peak / 2**20, act


def _cpu_busy(interval: float = 1.0) -> float | None:
    """Fraction of the machine's CPU time spent busy over `interval` seconds (Linux)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:8]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, sum(fields)

    try:
        busy0, total0 = sample()
        time.sleep(interval)
        busy1, total1 = sample()
    except OSError:
        return None
    return (busy1 - busy0) / max(1, total1 - total0)


def wait_idle(max_wait: float, threshold: float = 0.15, streak: int = 3) -> None:
    """Block until the CPU has been idle (< threshold busy) for `streak` seconds, or max_wait."""
    if max_wait <= 0:
        return
    start, quiet = time.perf_counter(), 0
    while time.perf_counter() - start < max_wait:
        busy = _cpu_busy()
        if busy is None:
            return
        quiet = quiet + 1 if busy < threshold else 0
        if quiet >= streak:
            return
    print(f"  (machine still busy after waiting {max_wait:.0f} s; timing anyway)")


def cell_seconds(cell: Cell, rate_gflops: float, runs: int, warmup: int, impls: int) -> float:
    """A cell's expected duration: every impl's runs at the dense FFN's FLOPs and this dtype's
    measured matmul rate (the slow references take longer; this is a floor)."""
    dim, hidden = CONFIGS[cell.config]
    flops = 2 * cell.tokens * TOP_K * (dim * 2 * hidden + hidden * dim)
    flops *= 3 if cell.mode == "fwd_bwd" else 1
    return flops / (rate_gflops * 1e9) * (runs + warmup + 1) * impls


def time_cell(
    cell: Cell,
    impls: list[str],
    runs: int,
    warmup: int,
    memory: bool,
    peak: dict[str, float],
    all_cells: bool = False,
) -> list[dict]:
    dim, hidden = CONFIGS[cell.config]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[cell.dtype]
    bench = Impls(dim, hidden, dtype, cell.tokens)
    steps, skipped = {}, []
    for impl in impls:
        built = bench.step(impl, cell.mode, all_cells)
        if built is None:
            skipped.append(impl)
        else:
            steps[impl] = built
    for run, _ in steps.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {impl: [] for impl in steps}
    for _ in range(runs):
        for impl, (run, _) in steps.items():
            t0 = time.perf_counter()
            run()
            times[impl].append(time.perf_counter() - t0)
    medians = {impl: statistics.median(ts) * 1e3 for impl, ts in times.items()}
    I = 2 * hidden
    flops = 2 * cell.tokens * TOP_K * (dim * I + hidden * dim)
    flops *= 3 if cell.mode == "fwd_bwd" else 1
    rows = []
    for impl, (run, module) in steps.items():
        ms = medians[impl]
        gflops = flops / (ms / 1e3) / 1e9
        touched = medians.get("dense_touched") if cell.tokens <= 16 else None
        mem, act = memory_mb(run, module, cell.mode) if memory else (None, None)
        rows.append(
            {
                "config": cell.config,
                "dtype": cell.dtype,
                "mode": cell.mode,
                "tokens": cell.tokens,
                "impl": impl,
                "median_ms": round(ms, 4),
                "ratio_to_dense": round(ms / medians["dense"], 3) if "dense" in medians else None,
                "ratio_to_touched": round(ms / touched, 3) if touched else None,
                "peak_mb": None if mem is None else round(mem, 1),
                "act_mb": None if act is None else round(act, 1),
                "gflops": round(gflops, 1),
                "fraction_of_peak": round(gflops / peak[cell.dtype], 3),
                "emulated": cell.dtype == "bf16" and peak["bf16"] < 0.5 * peak["fp32"],
            }
        )
    for impl in skipped:
        print(f"  (skipped {impl} at T={cell.tokens}: see the module docstring)")
    return rows


def print_rows(rows: list[dict]) -> None:
    cols = (
        "impl",
        "median_ms",
        "ratio_to_dense",
        "ratio_to_touched",
        "peak_mb",
        "act_mb",
        "gflops",
        "fraction_of_peak",
    )
    c0 = rows[0]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    emulated = "  [bf16 EMULATED on this CPU: < 0.5x fp32]" if c0["emulated"] else ""
    print(
        f"\n{c0['config']} {c0['dtype']} {c0['mode']} T={c0['tokens']}  (load average {load:.1f})"
        + emulated
    )
    print("  " + "  ".join(f"{c:>16}" for c in cols))
    for r in rows:
        print("  " + "  ".join(f"{'-' if r[c] is None else r[c]!s:>16}" for c in cols), flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a subset that runs in under 3 minutes on an idle 2-core CPU: {QUICK}",
    )
    p.add_argument(
        "--cell-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="skip cells expected to take longer (from the measured matmul rate; emulated bf16 "
        "is ~100x slower than fp32); default 20 with --quick, else no limit",
    )
    p.add_argument("--json", metavar="PATH", help="also write the rows to PATH as a JSON list")
    p.add_argument("--configs", nargs="+", choices=sorted(CONFIGS))
    p.add_argument("--dtypes", nargs="+", choices=("fp32", "bf16"))
    p.add_argument("--tokens", nargs="+", type=int)
    p.add_argument("--modes", nargs="+", choices=("fwd", "fwd_bwd"), default=["fwd", "fwd_bwd"])
    p.add_argument("--impls", nargs="+", choices=ALL_IMPLS)
    p.add_argument("--runs", type=int, default=10, help="timed runs per impl (median; >= 10)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-memory", action="store_true", help="skip the peak memory run")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="on a shared machine, wait up to SECONDS before each cell for the CPU to be idle",
    )
    p.add_argument(
        "--all-cells", action="store_true", help="also time the slow references beyond T=4096"
    )
    p.add_argument(
        "--no-reexec",
        action="store_true",
        help="keep the current allocator settings (do not re-execute)",
    )
    args = p.parse_args(argv)
    preset = (
        QUICK
        if args.quick
        else dict(configs=tuple(CONFIGS), dtypes=("fp32", "bf16"), tokens=TOKENS, impls=ALL_IMPLS)
    )
    for key in ("configs", "dtypes", "tokens", "impls"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    if args.cell_budget is None:
        args.cell_budget = 20.0 if args.quick else float("inf")
    if args.runs < 10:
        p.error(f"--runs {args.runs}: the median needs at least 10 runs")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if not args.no_reexec:
        _reexec_with_allocator_env()
    global torch
    import torch as _torch

    torch = _torch
    torch.set_num_threads(args.threads)
    env = " ".join(f"{k}={os.environ.get(k, '<unset>')}" for k in ALLOCATOR_ENV)
    print(
        f"[moe_layer] torch {torch.__version__}, {torch.get_num_threads()} threads, {env}; "
        f"median of {args.runs} runs after {args.warmup} warm-up, impls timed round-robin"
    )
    impls = list(args.impls)
    if "dense" not in impls:
        impls.insert(0, "dense")
    from vlmoe.nn.machine import cpu_info, measure_matmul_rates

    wait_idle(args.wait_idle)
    cpu, rates = cpu_info(), measure_matmul_rates()
    peak = {"fp32": rates.fp32, "bf16": rates.bf16}
    print(f"[moe_layer] CPU: {cpu.describe()}")
    print(
        f"[moe_layer] square matmul (n={rates.size}, {rates.threads} threads): "
        f"fp32 {rates.fp32:.0f} GFLOP/s, bf16 {rates.bf16:.0f} GFLOP/s "
        f"(bf16/fp32 {rates.bf16_speedup:.2f}"
        + (", bf16 EMULATED: no bf16 units in use)" if rates.bf16_emulated else ")")
    )
    rows: list[dict] = []
    t_start = time.perf_counter()
    for config in args.configs:
        for dtype in args.dtypes:
            for tokens in args.tokens:
                for mode in args.modes:
                    cell_impls = [i for i in impls if i != "dense_touched" or tokens <= 16]
                    cell = Cell(config, dtype, mode, tokens)
                    expected = cell_seconds(
                        cell, peak[dtype], args.runs, args.warmup, len(cell_impls)
                    )
                    if expected > args.cell_budget:
                        print(
                            f"\n{config} {dtype} {mode} T={tokens}: skipped, expected "
                            f">= {expected:.0f} s at {peak[dtype]:.1f} GFLOP/s "
                            f"(--cell-budget {args.cell_budget:.0f})"
                        )
                        continue
                    wait_idle(args.wait_idle)
                    cell_rows = time_cell(
                        cell,
                        cell_impls,
                        args.runs,
                        args.warmup,
                        not args.no_memory,
                        peak,
                        args.all_cells,
                    )
                    print_rows(cell_rows)
                    rows.extend(cell_rows)
                    if args.json:  # written as it goes, so a long run leaves partial results
                        with open(args.json, "w") as f:
                            json.dump(rows, f, indent=1)
    print(f"\n[moe_layer] done in {time.perf_counter() - t_start:.0f} s")
    if hasattr(os, "getloadavg") and os.getloadavg()[1] > 1.5 * args.threads:
        print(
            "[moe_layer] WARNING: the machine was busy during this run (5-min load average "
            f"{os.getloadavg()[1]:.1f}); 2-thread timings under contention are unreliable"
        )
    return rows


if __name__ == "__main__":
    main()
