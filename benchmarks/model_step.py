"""Training-step throughput (samples/s) of each architecture's `small` preset: the MoE twin
(E=8, top-2, experts sized for equal active parameters) against the dense model, in fp32 and
under bf16 autocast. Target: MoE >= 0.9x the dense twin's throughput.

A step is forward, a stand-in task loss (+ 0.01 x load-balance loss for MoE), backward and an
AdamW step, on random inputs of the preset's shapes.

    python benchmarks/model_step.py                      # table
    python benchmarks/model_step.py --json               # JSON on stdout
    python benchmarks/model_step.py --arch fusion decoder --batch-size 32 --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

import vlmoe
from vlmoe.models import count_parameters
from vlmoe.moe.losses import load_balance_loss

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


def bench(
    name: str, batch: int, text_len: int, dtype: str, steps: int, warmup: int, device: torch.device
) -> dict:
    torch.manual_seed(0)
    model = vlmoe.create_model(name).to(device).train()
    total, active = count_parameters(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs, targets = make_batch(model, batch, text_len, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def step() -> None:
        with autocast:
            out = model(**inputs)
            loss = task_loss(model, out, targets)
            if out.moe_aux:
                loss = loss + 0.01 * sum(load_balance_loss(a) for a in out.moe_aux)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {
        "preset": name,
        "dtype": dtype,
        "batch_size": batch,
        "params_total": total,
        "params_active": active,
        "step_ms": 1000 * elapsed / steps,
        "samples_per_s": batch * steps / elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--size", default="small", choices=["debug", "small"])
    p.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--text-len", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for arch in args.arch:
        for dtype in args.dtype:
            dense = bench(
                f"{arch}-{args.size}",
                args.batch_size,
                args.text_len,
                dtype,
                args.steps,
                args.warmup,
                device,
            )
            moe = bench(
                f"{arch}-{args.size}-moe",
                args.batch_size,
                args.text_len,
                dtype,
                args.steps,
                args.warmup,
                device,
            )
            moe["moe_over_dense"] = moe["samples_per_s"] / dense["samples_per_s"]
            rows += [dense, moe]
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
        f"text_len={args.text_len} steps={args.steps}"
    )
    head = f"{'preset':<22}{'dtype':<6}{'total':>10}{'active':>10}{'ms/step':>10}{'samples/s':>11}{'moe/dense':>11}"
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = f"{r['moe_over_dense']:.2f}x" if "moe_over_dense" in r else ""
        print(
            f"{r['preset']:<22}{r['dtype']:<6}{r['params_total']:>10,}{r['params_active']:>10,}"
            f"{r['step_ms']:>10.1f}{r['samples_per_s']:>11.1f}{ratio:>11}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
