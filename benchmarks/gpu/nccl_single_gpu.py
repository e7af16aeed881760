"""The nccl path of `vlmoe.distributed` on one GPU (world size 1), under torchrun.

Checks, then times, on CUDA:
1. the all-to-all dispatcher over nccl (EP group of 1: every row goes to itself) against the
   local dispatcher: outputs and input gradients of one MoE layer (fp32, bf16);
2. `Runtime` with DDP and with FSDP2 over nccl (under torchrun a world of one still wraps,
   gathers and reduces): 3 AdamW steps of vit-small-moe equal the same steps without any
   process group (fp32, to 1e-5);
3. layer forward+backward time, all-to-all vs local, at T = 4096 and 16384 tokens (bf16).

Prints PASS/FAIL lines and a table; exits 1 on any FAIL.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch
import torch.distributed as dist

from vlmoe.config import MoEConfig
from vlmoe.distributed import AllToAllDispatcher, ParallelConfig
from vlmoe.distributed.runtime import Runtime
from vlmoe.models import create_model
from vlmoe.moe.layer import MoELayer
from vlmoe.train.config import MoELossConfig
from vlmoe.train.moe_losses import moe_aux_losses

FAILED = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'PASS' if ok else 'FAIL'} {name} {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def layer_pair(dtype, D=1024, H=2816):
    torch.manual_seed(0)
    local = MoELayer(MoEConfig(dim=D, hidden_dim=H, num_experts=8, top_k=2)).cuda().to(dtype)
    torch.manual_seed(0)
    ep = MoELayer(MoEConfig(dim=D, hidden_dim=H, num_experts=8, top_k=2)).cuda().to(dtype)
    ep.dispatcher = AllToAllDispatcher(8, None, "score", None, 1, dist.group.WORLD)
    return local, ep


def fwd_bwd(layer, x):
    x = x.clone().requires_grad_()
    y, _ = layer(x)
    y.float().square().mean().backward()
    return y.detach(), x.grad


def check_dispatcher() -> None:
    for dtype in (torch.float32, torch.bfloat16):
        local, ep = layer_pair(dtype)
        x = torch.randn(2048, 1024, device="cuda", dtype=dtype)
        y1, g1 = fwd_bwd(local, x)
        y2, g2 = fwd_bwd(ep, x)
        err = max((y1 - y2).abs().max().item(), (g1 - g2).abs().max().item())
        try:  # fp32 to 1e-6 / 1e-5; bf16 to torch's default bf16 tolerance
            tol = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else {}
            torch.testing.assert_close(y2, y1, **tol)
            torch.testing.assert_close(g2, g1, **tol)
            ok = True
        except AssertionError:
            ok = False
        check(f"all-to-all dispatcher == local ({dtype})", ok, f"max abs diff {err:.2e}")


def train(dp: str | None, steps: int = 3) -> list[float]:
    torch.manual_seed(0)
    model = create_model("vit-small-moe").cuda()
    if dp is not None:
        rt = Runtime.start(ParallelConfig(dp=dp, backend="nccl"), model)
        fwd = rt.wrap(model)
    else:
        rt, fwd = None, model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator(device="cuda").manual_seed(0)
    losses = []
    for _ in range(steps):
        images = torch.randn(16, 3, 64, 64, device="cuda", generator=g)
        labels = torch.randint(0, 10, (16,), device="cuda", generator=g)
        out = fwd(images)
        auxes = out.moe_aux if rt is None else rt.global_aux(out.moe_aux)
        aux, _ = moe_aux_losses(auxes, MoELossConfig(), False)
        loss = torch.nn.functional.cross_entropy(out.logits, labels) + aux
        loss.backward()
        if rt is not None:
            rt.finish_backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def time_layers() -> None:
    print("\n  T      local_ms  all_to_all_ms  ratio   (bf16 fwd+bwd, D=1024 H=2816 E=8 k=2)")
    for T in (4096, 16384):
        local, ep = layer_pair(torch.bfloat16)
        x = torch.randn(T, 1024, device="cuda", dtype=torch.bfloat16)
        times = {}
        for name, layer in (("local", local), ("ep", ep)):
            for _ in range(3):
                fwd_bwd(layer, x)
            runs = []
            for _ in range(20):
                torch.cuda.synchronize()
                t = time.perf_counter()
                fwd_bwd(layer, x)
                torch.cuda.synchronize()
                runs.append(time.perf_counter() - t)
            times[name] = 1e3 * statistics.median(runs)
        ratio = times["ep"] / times["local"]
        print(f"  {T:5d}  {times['local']:8.3f}  {times['ep']:13.3f}  {ratio:5.2f}x")


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    print(
        f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
        f"world size {os.environ.get('WORLD_SIZE')}",
        flush=True,
    )
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    want = train(None)
    for dp in ("ddp", "fsdp"):
        got = train(dp)
        err = max(abs(a - b) for a, b in zip(got, want))
        check(f"Runtime dp={dp} over nccl == no process group", err <= 1e-5, f"losses {got}")
    check_dispatcher()
    time_layers()
    dist.destroy_process_group()
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
