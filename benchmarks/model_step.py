"""Training-step throughput (samples/s) of each architecture's `small` preset: the MoE twin
(E=8, top-2, experts sized for equal active parameters) against the dense model, in fp32 and
under bf16 autocast. Target: MoE >= 0.9x the dense twin's throughput.

A step is forward, a stand-in task loss (+ 0.01 x load-balance loss for MoE), backward and the
trainer's AdamW step (`vlmoe.train.optim.build_optimizer`), on random inputs of the preset's
shapes. Dense and MoE steps are interleaved and both the median and the best step time are
reported, so that a shared machine's load affects the two alike (the "best" ratio is the least
noisy one on a busy CPU; `--clock cpu --threads 1` leaves the load out altogether).

    python benchmarks/model_step.py                      # table
    python benchmarks/model_step.py --json               # JSON on stdout
    python benchmarks/model_step.py --arch fusion decoder --batch-size 32 --device cuda
    python benchmarks/model_step.py --profile vit-small-moe --dtype fp32 --threads 1
    python benchmarks/model_step.py --decode 32 --dtype fp32 --threads 1 --clock cpu

`--decode N` times generation instead: `decoder-SIZE` and its MoE twin each write N tokens
(greedy, KV cache, no early stop) for `--batch-size` prompts of 4 tokens and an image; runs
interleaved, median over `--steps`, tokens/s and the MoE/dense ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import vlmoe
from vlmoe.models import count_parameters
from vlmoe.moe.losses import load_balance_loss
from vlmoe.train.config import OptimizerConfig
from vlmoe.train.optim import build_optimizer

ARCHS = ("vit", "text", "fusion", "contrastive", "decoder")


def make_batch(model, batch: int, text_len: int, device: torch.device) -> tuple[dict, torch.Tensor]:
    """Random inputs for `model` and integer targets for its stand-in loss."""
    arch, c = model.architecture, model.config
    if arch == "decoder":
        size, vocab = c.vision.image_size, c.text.vocab_size
    elif arch == "vit":
        size, vocab = c.image_size, 0
    else:
        size, vocab = getattr(c, "image_size", 0), c.vocab_size
    max_len = c.text.max_seq_len if arch == "decoder" else getattr(c, "max_seq_len", text_len)
    text_len = min(text_len, max_len)
    inputs: dict = {}
    if arch != "text":
        inputs["images"] = torch.randn(batch, 3, size, size, device=device)
    if arch != "vit":
        inputs["input_ids"] = torch.randint(0, vocab, (batch, text_len), device=device)
        inputs["attention_mask"] = torch.ones(batch, text_len, dtype=torch.long, device=device)
    num_targets = {
        "vit": c.num_classes if arch == "vit" else 0,
        "fusion": getattr(c, "num_answers", 0),
    }.get(arch, vocab)
    targets = torch.randint(0, max(num_targets, 1), (batch, text_len), device=device)
    return inputs, targets


def task_loss(model, out, targets: torch.Tensor) -> torch.Tensor:
    arch = model.architecture
    if arch == "vit":
        return F.cross_entropy(out.logits, targets[:, 0])
    if arch == "fusion":
        return F.cross_entropy(out.vqa_logits, targets[:, 0]) + F.cross_entropy(
            out.itm_logits, targets[:, 0] % 2
        )
    if arch == "contrastive":
        labels = torch.arange(out.logits_per_image.shape[0], device=targets.device)
        return (
            F.cross_entropy(out.logits_per_image, labels)
            + F.cross_entropy(out.logits_per_text, labels)
        ) / 2
    logits = out.logits  # text / decoder: next-token prediction
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), targets[:, 1:].flatten())


class Runner:
    """One preset's model, optimizer and fixed batch; `step()` times one training step."""

    def __init__(
        self,
        name: str,
        batch: int,
        text_len: int,
        dtype: str,
        device: torch.device,
        clock=time.perf_counter,
    ):
        torch.manual_seed(0)
        self.clock = clock
        self.name, self.dtype, self.batch, self.device = name, dtype, batch, device
        self.model = vlmoe.create_model(name).to(device).train()
        self.opt = build_optimizer(self.model, OptimizerConfig(lr=1e-4))  # the trainer's AdamW
        self.inputs, self.targets = make_batch(self.model, batch, text_len, device)
        self.times: list[float] = []

    def step(self) -> float:
        start = self.clock()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == "bf16"):
            out = self.model(**self.inputs)
            loss = task_loss(self.model, out, self.targets)
            if out.moe_aux:
                loss = loss + 0.01 * sum(load_balance_loss(a) for a in out.moe_aux)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return self.clock() - start

    def result(self) -> dict:
        total, active = count_parameters(self.model)
        median, best = statistics.median(self.times), min(self.times)
        return {
            "preset": self.name,
            "dtype": self.dtype,
            "batch_size": self.batch,
            "params_total": total,
            "params_active": active,
            "step_ms_median": 1000 * median,
            "step_ms_best": 1000 * best,
            "samples_per_s": self.batch / median,
            "samples_per_s_best": self.batch / best,
        }


def profile_table(preset: str, dtype: str, args, device: torch.device) -> str:
    """Top ops of `args.steps` training steps of `preset`, by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    runner = Runner(preset, args.batch_size, args.text_len, dtype, device)
    for _ in range(args.warmup):
        runner.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            runner.step()
    events = prof.key_averages()
    ops = sum(e.count for e in events if e.key.startswith("aten::"))
    head = (
        f"{preset} {dtype}: {args.steps} steps, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads; {ops / args.steps:.0f} aten ops per step"
    )
    table = events.table(
        sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=48
    )
    return head + "\n" + table


def bench_decode(size: str, dtype: str, args, device: torch.device) -> list[dict]:
    """Generation throughput of `decoder-SIZE` and its MoE twin, runs interleaved."""
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    models = {n: vlmoe.create_model(n).to(device).eval() for n in (f"decoder-{size}",)}
    models[f"decoder-{size}-moe"] = vlmoe.create_model(f"decoder-{size}-moe").to(device).eval()
    torch.manual_seed(0)
    image_size = models[f"decoder-{size}"].config.vision.image_size
    images = torch.randn(args.batch_size, 3, image_size, image_size, device=device)
    ids = torch.randint(4, 100, (args.batch_size, 4), device=device)
    mask = torch.ones_like(ids, dtype=torch.bool)
    times: dict[str, list[float]] = {n: [] for n in models}
    for i in range(args.warmup + args.steps):
        for name, model in models.items():
            start = clock()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
                model.generate(ids, mask, images=images, max_new_tokens=args.decode, stop_tokens=[])
            if i >= args.warmup:
                times[name].append(clock() - start)
    rows = []
    for name, ts in times.items():
        tokens_per_s = args.decode * args.batch_size / statistics.median(ts)
        rows.append({"preset": name, "dtype": dtype, "tokens_per_s": tokens_per_s})
    rows[1]["moe_over_dense"] = rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"]
    return rows


def bench_pair(arch: str, size: str, dtype: str, args, device: torch.device) -> list[dict]:
    """Dense and MoE steps interleaved, so that load from other processes hits both alike."""
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    dense = Runner(f"{arch}-{size}", args.batch_size, args.text_len, dtype, device, clock)
    moe = Runner(f"{arch}-{size}-moe", args.batch_size, args.text_len, dtype, device, clock)
    for _ in range(args.warmup):
        dense.step(), moe.step()
    for _ in range(args.steps):
        dense.times.append(dense.step())
        moe.times.append(moe.step())
    d, m = dense.result(), moe.result()
    m["moe_over_dense"] = m["samples_per_s"] / d["samples_per_s"]
    m["moe_over_dense_best"] = m["samples_per_s_best"] / d["samples_per_s_best"]
    return [d, m]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--size", default="small", choices=["debug", "small"])
    p.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--text-len", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: time steps by this thread's CPU time (needs --threads 1 on CPU); on a shared "
        "machine it leaves out the time other processes hold the core",
    )
    p.add_argument(
        "--profile",
        metavar="PRESET",
        help="instead of the table: the torch profiler's top ops over --steps steps of PRESET "
        "(e.g. vit-small-moe), by self CPU time, and the step's op count",
    )
    p.add_argument("--top", type=int, default=25, help="rows of the --profile table")
    p.add_argument(
        "--decode",
        type=int,
        metavar="N",
        help="instead of training steps: tokens/s of generating N tokens, decoder dense vs MoE",
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.clock == "cpu" and (device.type != "cpu" or torch.get_num_threads() != 1):
        p.error("--clock cpu needs --device cpu and --threads 1 (all work on this thread)")
    if args.profile:
        dtype = args.dtype[0]
        print(profile_table(args.profile, dtype, args, device))
        return 0
    if args.decode:
        for dtype in args.dtype:
            for r in bench_decode(args.size, dtype, args, device):
                ratio = f"  moe/dense {r['moe_over_dense']:.2f}x" if "moe_over_dense" in r else ""
                print(f"{r['preset']:<22}{dtype:<6}{r['tokens_per_s']:>9.1f} tokens/s{ratio}")
        return 0
    rows = []
    for arch in args.arch:
        for dtype in args.dtype:
            rows += bench_pair(arch, args.size, dtype, args, device)
            print(f"done {arch} {dtype}", file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {"device": str(device), "threads": torch.get_num_threads(), "results": rows},
                indent=2,
            )
        )
        return 0
    print(
        f"device={device} threads={torch.get_num_threads()} batch={args.batch_size} "
        f"text_len={args.text_len} steps={args.steps} clock={args.clock}"
    )
    head = (
        f"{'preset':<22}{'dtype':<6}{'total':>11}{'active':>11}{'ms (med)':>10}{'ms (best)':>10}"
        f"{'samples/s':>11}{'moe/dense':>11}{'(best)':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = f"{r['moe_over_dense']:.2f}x" if "moe_over_dense" in r else ""
        best = f"{r['moe_over_dense_best']:.2f}x" if "moe_over_dense_best" in r else ""
        print(
            f"{r['preset']:<22}{r['dtype']:<6}{r['params_total']:>11,}{r['params_active']:>11,}"
            f"{r['step_ms_median']:>10.1f}{r['step_ms_best']:>10.1f}{r['samples_per_s']:>11.1f}"
            f"{ratio:>11}{best:>8}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
