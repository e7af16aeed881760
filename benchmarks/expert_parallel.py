"""Expert parallelism on 2 gloo processes: the all-to-all dispatcher against the local one, the
time split (dispatch, experts, combine, communication), the bytes moved against a paper model,
and whole-model training throughput for 1 vs 2 processes at the same global batch.

    python benchmarks/expert_parallel.py [--quick] [--tokens 512 2048] [--steps 10]

What to expect on a 2-core CPU: about 1x, no speed-up. Both processes share the same two cores
and the same memory bus, "communication" is a memcpy through loopback TCP (gloo), and the
all-to-all adds a host sync per layer; what EP buys on one machine is experts' memory split
over ranks, not time. On GPUs over NVLink/InfiniBand the same code path spreads E experts'
FLOPs and weights over P devices, and the paper model below says what it then costs.

Paper model of the communication, per MoE layer and rank, for T local tokens, K experts per
token, D model dim, b bytes per element, P ranks in the EP group, E experts, dropless and
routing balanced (a pair lands on each rank with probability 1/P):

    forward  = 2 * T*K*D*b * (P-1)/P      (dispatch all-to-all + combine all-to-all)
             + E*8 * (P-1)/P              (per-expert counts, int64)
    backward = 2 * T*K*D*b * (P-1)/P      (the same two all-to-alls, reversed)
    router losses (`gather_aux`, world W): all-gather of logits and probs, 2*T*E*4 * (W-1)
             received, and an all-reduce of the same size in backward; O(T*E), against the
             all-to-all's O(T*K*D), so < 1% at D >= 256.

So bytes grow linearly with tokens, k and D, are independent of E (but for the counts), and
approach 4*T*K*D*b per layer per step as P grows; with capacity factor c they are bounded by
c*T*K*D*b per all-to-all. The script counts the bytes each all-to-all actually sends to other
ranks (rows for the rank itself stay in memory) and prints them beside the model.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vlmoe.config import MoEConfig
from vlmoe.distributed import ParallelConfig
from vlmoe.distributed import comm as comm_mod
from vlmoe.distributed import dispatch as dispatch_mod
from vlmoe.distributed.mesh import init_mesh
from vlmoe.distributed.parallelize import parallelize
from vlmoe.distributed.runtime import Runtime
from vlmoe.moe.layer import MoELayer

DIM, HIDDEN, E, K = 512, 1024, 8, 2


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def matmul_gflops(dtype: torch.dtype, n: int = 1024) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(3):
        a @ b
    return 3 * 2 * n**3 / (time.perf_counter() - t) / 1e9


class Clock:
    """Accumulates wall time and bytes per phase (communication wrappers add to it)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.bytes_off_rank = 0
        self.bytes_total = 0

    def add(self, phase: str, dt: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + dt


CLOCK = Clock()


def _timed_all_to_all(x, out_splits, in_splits, group):
    rank = dist.get_rank(group)
    row = x[0].numel() * x.element_size() if x.shape[0] else 0
    off = sum(n for r, n in enumerate(in_splits) if r != rank)
    CLOCK.bytes_off_rank += off * (row if x.ndim > 1 else x.element_size())
    CLOCK.bytes_total += x.numel() * x.element_size()
    t = time.perf_counter()
    out = _raw_all_to_all(x, out_splits, in_splits, group)
    CLOCK.add("communication", time.perf_counter() - t)
    return out


_raw_all_to_all = comm_mod._all_to_all


def _instrument(layer: MoELayer) -> None:
    """Time each phase of the layer's forward; communication is timed inside."""
    comm_mod._all_to_all = _timed_all_to_all
    dispatch_mod._all_to_all = _timed_all_to_all
    for name in ("dispatch", "combine"):
        fn = getattr(layer.dispatcher, name)

        def timed(*args, _fn=fn, _name=name):
            c0, t = CLOCK.seconds.get("communication", 0.0), time.perf_counter()
            out = _fn(*args)
            comm = CLOCK.seconds.get("communication", 0.0) - c0
            CLOCK.add(_name, time.perf_counter() - t - comm)
            return out

        setattr(layer.dispatcher, name, timed)
    experts_forward = layer.experts.forward

    def experts_timed(x, counts):
        t = time.perf_counter()
        out = experts_forward(x, counts)
        CLOCK.add("experts", time.perf_counter() - t)
        return out

    layer.experts.forward = experts_timed


def layer_worker(rank: int, world: int, port: int, out: str, tokens: list[int], runs: int):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    mesh = init_mesh(ParallelConfig(ep=world), [E])
    lines = []
    for T in tokens:
        for kind in ("local", "all-to-all"):
            torch.manual_seed(0)
            layer = MoELayer(MoEConfig(dim=DIM, hidden_dim=HIDDEN, num_experts=E, top_k=K))
            if kind == "all-to-all":
                parallelize(layer, mesh)
            _instrument(layer)
            x = torch.randn(T, DIM, generator=torch.Generator().manual_seed(rank))
            fwd, step = [], []
            for i in range(runs + 2):
                global CLOCK
                CLOCK = Clock()
                dist.barrier()
                t = time.perf_counter()
                with torch.no_grad():
                    layer(x)
                t_fwd = time.perf_counter() - t
                phases, fwd_bytes = dict(CLOCK.seconds), CLOCK.bytes_off_rank
                xg = x.clone().requires_grad_()
                dist.barrier()
                t = time.perf_counter()
                y, _ = layer(xg)
                y.sum().backward()
                t_step = time.perf_counter() - t
                if i >= 2:
                    fwd.append((t_fwd, phases, fwd_bytes))
                    step.append((t_step, CLOCK.bytes_off_rank - fwd_bytes))
            med = statistics.median(f[0] for f in fwd)
            phase_ms = {
                p: 1e3 * statistics.median(f[1].get(p, 0.0) for f in fwd)
                for p in ("dispatch", "experts", "combine", "communication")
            }
            lines.append(
                dict(
                    T=T,
                    kind=kind,
                    fwd_ms=1e3 * med,
                    step_ms=1e3 * statistics.median(s[0] for s in step),
                    fwd_bytes=fwd[0][2],
                    step_bytes=step[0][1],
                    **phase_ms,
                )
            )
    torch.save(lines, f"{out}/layer{rank}.pt")
    dist.destroy_process_group()


def model_worker(rank, world, port, out, batch, steps, threads):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(threads)
    from vlmoe.models import create_model
    from vlmoe.train.config import MoELossConfig
    from vlmoe.train.moe_losses import moe_aux_losses

    torch.manual_seed(0)
    model = create_model("vit-small-moe")
    rt = Runtime.start(ParallelConfig(ep=None if world > 1 else 1), model)
    wrapped = rt.wrap(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    size = model.config.image_size
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g)
    labels = torch.randint(0, 10, (batch,), generator=g)
    idx = rt.local_indices(list(range(batch)))
    times = []
    for i in range(steps + 2):
        rt.barrier()
        t = time.perf_counter()
        out_ = wrapped(images[idx])
        loss = torch.nn.functional.cross_entropy(out_.logits, labels[idx])
        aux, _ = moe_aux_losses(rt.global_aux(out_.moe_aux), MoELossConfig(), False)
        (loss + aux).backward()
        rt.finish_backward()
        opt.step()
        opt.zero_grad()
        rt.barrier()
        if i >= 2:
            times.append(time.perf_counter() - t)
    if rank == 0:
        Path(f"{out}/model_{world}.txt").write_text(str(statistics.median(times)))
    if dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, world: int, *args) -> None:
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=fn, args=(r, world, port, *args)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        sys.exit(f"a worker failed: exit codes {[p.exitcode for p in procs]}")


def paper_bytes(T: int, P: int, b: int = 4) -> tuple[float, float]:
    """(forward, forward+backward) bytes per layer and rank sent to other ranks."""
    fwd = 2 * T * K * DIM * b * (P - 1) / P + E * 8 * (P - 1) / P
    return fwd, fwd + 2 * T * K * DIM * b * (P - 1) / P


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32, help="global batch for the model part")
    ap.add_argument("--quick", action="store_true", help="T=256 only, 3 runs, 3 steps")
    args = ap.parse_args(argv)
    if args.quick:
        args.tokens, args.runs, args.steps, args.batch = [256], 3, 3, 8
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}")
    print(
        f"matmul fp32 {matmul_gflops(torch.float32):.0f} GF/s, "
        f"bf16 {matmul_gflops(torch.bfloat16):.0f} GF/s (1 process, all threads)"
    )
    print(f"MoE layer: D={DIM} H={HIDDEN} E={E} top-{K} SwiGLU fp32, 2 gloo processes x 1 thread")
    with tempfile.TemporaryDirectory() as d:
        spawn(layer_worker, 2, d, args.tokens, args.runs)
        ranks = [torch.load(f"{d}/layer{r}.pt") for r in range(2)]
        print(
            "\n  T/rank  dispatcher   fwd_ms  step_ms  dispatch  experts  combine  comm"
            "   ratio_fwd  ratio_step"
        )
        rows = {}
        for i, _ in enumerate(ranks[0]):
            # The slower rank sets the pace of a collective step.
            row = max((r[i] for r in ranks), key=lambda x: x["fwd_ms"])
            rows[(row["T"], row["kind"])] = row
        for (T, kind), row in rows.items():
            base = rows[(T, "local")]
            print(
                f"  {T:6d}  {kind:10s} {row['fwd_ms']:8.2f} {row['step_ms']:8.2f} "
                f"{row['dispatch']:8.2f} {row['experts']:8.2f} {row['combine']:8.2f} "
                f"{row['communication']:6.2f}   {row['fwd_ms'] / base['fwd_ms']:8.2f}x"
                f"  {row['step_ms'] / base['step_ms']:8.2f}x"
            )
        print("\n  bytes per layer and rank sent to the other rank (fp32):")
        print("  T/rank   measured_fwd   model_fwd   measured_step  model_step  ratio_step")
        for (T, kind), _ in rows.items():
            if kind != "all-to-all":
                continue
            got = [r[i] for r in ranks for i, x in enumerate(r) if (x["T"], x["kind"]) == (T, kind)]
            fwd = statistics.mean(g["fwd_bytes"] for g in got)
            step = statistics.mean(g["step_bytes"] for g in got)
            m_fwd, m_step = paper_bytes(T, 2)
            print(
                f"  {T:6d}  {fwd / 1e6:10.3f} MB  {m_fwd / 1e6:8.3f} MB  {step / 1e6:10.3f} MB"
                f"  {m_step / 1e6:8.3f} MB  {step / m_step:8.3f}"
            )
        print(f"\nWhole model (vit-small-moe, global batch {args.batch}, AdamW step):")
        # Two threads in one process stall on OpenMP barriers when the machine is busy, so the
        # one-thread single process is printed too: the fair baseline on a shared machine.
        times = {}
        for world, threads in ((1, 2), (1, 1), (2, 1)):
            spawn(model_worker, world, d, args.batch, args.steps, threads)
            times[(world, threads)] = float(Path(f"{d}/model_{world}.txt").read_text())
        t2 = times[(2, 1)]
        for (world, threads), t in times.items():
            what = f"{world} process{'es' if world > 1 else ''} x {threads} thread"
            what += f"{'s' if threads > 1 else ''}{' (EP=2, dp=ddp)' if world > 1 else ''}"
            print(f"  {what:32s} {args.batch / t:8.1f} examples/s   2-process ratio {t / t2:5.2f}x")
        print("  (expected ~1x against 1 process x 2 threads on an idle 2-core machine)")


if __name__ == "__main__":
    main()
