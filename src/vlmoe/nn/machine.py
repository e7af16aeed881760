"""What this machine computes fast: the CPU's model and ISA, measured fp32 and bf16 matmul rates,
and the training precision that `auto` resolves to.

CPUs differ by an order of magnitude in bf16: AMX (Sapphire Rapids and later) and AVX-512 BF16
run bf16 matmuls several times faster than fp32, while AVX2-only CPUs emulate bf16 and run it
far slower. Flags alone do not settle it (oneDNN may be capped with `ONEDNN_MAX_CPU_ISA`, a
library may not use the unit), so the choice is made from rates measured once per CPU model,
torch version, oneDNN ISA cap and thread count, and cached in the user's cache directory
(`$VLMOE_CACHE_DIR`, else `$XDG_CACHE_HOME/vlmoe`, else `~/.cache/vlmoe`; delete
`matmul_rates.json` there to measure again, e.g. after a probe on a busy machine).

`resolve_precision` is the one place that turns a requested precision into the one used:
`auto` is bf16 on CUDA devices with bf16 support, and on CPUs whose measured bf16 rate beats
fp32 by `BF16_MIN_SPEEDUP` (autocast adds casts around every matmul, so bf16 must win clearly);
fp32 otherwise. The probe sees matmuls only: on the AMX Xeon a bf16-autocast FFN step is 2.7x
faster than fp32 already at dim 128, but the `*-small` presets' whole steps were not (vit-small
147 vs 96 ms of CPU time), the rest of the step (attention, norms, casts) costing more in bf16.
It logs its choice once, and warns once when bf16 is forced on a CPU that has no bf16 units or
runs bf16 slower than fp32.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from vlmoe.io import write_json_atomic

log = logging.getLogger(__name__)

# bf16 autocast pays a cast before and after every matmul and keeps fp32 master weights, so
# bf16 must be clearly faster at the matmul itself to make a training step faster.
BF16_MIN_SPEEDUP = 1.5
# ISA features worth naming, in the order printed (names as in /proc/cpuinfo).
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
# oneDNN ISA caps under which bf16 has no hardware support (`ONEDNN_MAX_CPU_ISA`).
_NO_BF16_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI")
_CACHE_VERSION = 1
_said: set[str] = set()  # messages already logged by `_say_once`


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's model name, its ISA flags of interest, and torch's own dispatch level."""

    model: str
    flags: frozenset[str]
    torch_capability: str  # torch.backends.cpu.get_cpu_capability(): DEFAULT, AVX2, AVX512
    onednn_max_isa: str | None  # ONEDNN_MAX_CPU_ISA, if set

    @property
    def isa(self) -> list[str]:
        return [f for f in ISA_FLAGS if f in self.flags]

    @property
    def has_bf16_units(self) -> bool:
        """Whether bf16 matmuls can run on hardware bf16 units (AVX-512 BF16 or AMX) here."""
        if self.onednn_max_isa and self.onednn_max_isa.upper() in _NO_BF16_ISAS:
            return False
        return bool(self.flags & {"avx512_bf16", "amx_bf16"})

    def describe(self) -> str:
        cap = f", oneDNN capped at {self.onednn_max_isa}" if self.onednn_max_isa else ""
        isa = " ".join(self.isa) or "none of " + " ".join(ISA_FLAGS)
        return f"{self.model} [{isa}; torch {self.torch_capability}{cap}]"


def cpu_info(cpuinfo_path: str = "/proc/cpuinfo") -> CpuInfo:
    """This machine's CPU (Linux /proc/cpuinfo; elsewhere the platform's processor name)."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())  # the first processor's
    except OSError:
        pass
    model = fields.get("model name") or platform.processor() or platform.machine()
    flags = frozenset((fields.get("flags") or fields.get("Features") or "").split())
    return CpuInfo(
        model=model or "unknown CPU",
        flags=flags,
        torch_capability=torch.backends.cpu.get_cpu_capability(),
        onednn_max_isa=os.environ.get("ONEDNN_MAX_CPU_ISA") or None,
    )


@dataclass(frozen=True)
class MatmulRates:
    """Measured GFLOP/s of one square matmul per dtype, at `threads` torch threads."""

    fp32: float
    bf16: float
    threads: int
    size: int  # the matmul's n (the bf16 probe shrinks it where bf16 is emulated)

    @property
    def bf16_speedup(self) -> float:
        return self.bf16 / self.fp32 if self.fp32 > 0 else 0.0

    @property
    def bf16_emulated(self) -> bool:
        """bf16 runs in software: at under half the fp32 rate. Emulation is 10-300x slower than
        fp32, bf16 units 1.5-10x faster, so the factor 2 keeps a probe disturbed by other
        processes from landing on the wrong side."""
        return self.bf16 < 0.5 * self.fp32


def _matmul_gflops(dtype: torch.dtype, n: int, budget_s: float = 0.3) -> tuple[float, float]:
    """(GFLOP/s, seconds of one call) of an (n, n) @ (n, n) matmul: median of a few calls."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    t0 = time.perf_counter()
    a @ b  # warm-up (oneDNN builds its kernel on the first call)
    first = time.perf_counter() - t0
    runs = max(3, min(20, int(budget_s / max(first, 1e-6))))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return 2 * n**3 / sec / 1e9, sec


def measure_matmul_rates(n: int = 1024) -> MatmulRates:
    """Time fp32 and bf16 square matmuls now (about a second where bf16 is fast).

    Where bf16 is emulated an n=1024 matmul can take seconds, so bf16 is first timed at n/4 and
    only grown to n when that call was quick; fp32 is timed at the same size for a fair ratio.
    """
    small = max(64, n // 4)
    bf16, sec = _matmul_gflops(torch.bfloat16, small, budget_s=0.1)
    size = n if sec < 0.01 else small
    if size == n:
        bf16, _ = _matmul_gflops(torch.bfloat16, n)
    fp32, _ = _matmul_gflops(torch.float32, size)
    return MatmulRates(fp32=fp32, bf16=bf16, threads=torch.get_num_threads(), size=size)


def cache_dir() -> Path:
    """Where vlmoe keeps what it measured about this machine."""
    if os.environ.get("VLMOE_CACHE_DIR"):
        return Path(os.environ["VLMOE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vlmoe"


def _cache_key(cpu: CpuInfo, threads: int) -> str:
    return (
        f"v{_CACHE_VERSION}|{cpu.model}|torch {torch.__version__}|"
        f"onednn {cpu.onednn_max_isa or 'default'}|threads {threads}"
    )


_rates_memo: dict[str, MatmulRates] = {}


def matmul_rates(cpu: CpuInfo | None = None, path: Path | None = None) -> MatmulRates:
    """This machine's fp32 and bf16 matmul rates at the current thread count: from the cache
    file when it has them for this CPU, torch version, oneDNN cap and thread count, else
    measured now and added to it (a corrupt or unwritable cache only costs a re-measurement)."""
    cpu = cpu or this_cpu()
    path = path or cache_dir() / "matmul_rates.json"
    key = _cache_key(cpu, torch.get_num_threads())
    memo_key = f"{path}|{key}"
    if memo_key in _rates_memo:
        return _rates_memo[memo_key]
    entries: dict = {}
    try:
        entries = json.loads(path.read_text())
        if not isinstance(entries, dict):
            entries = {}
        rates = MatmulRates(**entries[key])
    except (OSError, ValueError, KeyError, TypeError):
        rates = measure_matmul_rates()
        log.info(
            "measured matmul rates on %s: fp32 %.0f GFLOP/s, bf16 %.0f GFLOP/s (%d threads)",
            cpu.model,
            rates.fp32,
            rates.bf16,
            rates.threads,
        )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, {**entries, key: asdict(rates)}, indent=1)
        except OSError as err:
            log.warning("could not cache matmul rates in %s: %s", path, err)
    _rates_memo[memo_key] = rates
    return rates


@functools.cache
def this_cpu() -> CpuInfo:
    """`cpu_info()` of this machine, read once per process."""
    return cpu_info()


_bf16_fast_memo: dict[int, bool] = {}


def bf16_is_fast(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 matmuls run in hardware on `device`: on CPU, not `bf16_emulated` by the
    measured rates; on CUDA, bf16 support.

    Cheap after the first call per thread count (a dict lookup): model code may ask per forward.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    threads = torch.get_num_threads()
    if threads not in _bf16_fast_memo:
        _bf16_fast_memo[threads] = not matmul_rates(this_cpu()).bf16_emulated
    return _bf16_fast_memo[threads]


def _say_once(level: int, message: str) -> None:
    if message not in _said:
        _said.add(message)
        log.log(level, message)


Precision = Literal["auto", "fp32", "bf16"]


def resolve_precision(
    requested: Precision,
    device: torch.device | str = "cpu",
    rates: MatmulRates | None = None,
    cpu: CpuInfo | None = None,
) -> Literal["fp32", "bf16"]:
    """The training precision to use for `requested` on `device` (see the module docstring).

    `rates` and `cpu` default to this machine's; tests pass their own.
    """
    if requested not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be one of auto, fp32, bf16; got {requested!r}")
    device = torch.device(device)
    if requested == "fp32":
        return "fp32"
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        if requested == "auto":
            choice = "bf16" if ok else "fp32"
            _say_once(logging.INFO, f"precision auto: {choice} on {device} (bf16 supported: {ok})")
            return choice
        return "bf16"
    if device.type != "cpu":
        return "fp32" if requested == "auto" else "bf16"
    cpu = cpu or this_cpu()
    rates = rates or matmul_rates(cpu)
    rate_text = (
        f"bf16 matmul {rates.bf16:.0f} GFLOP/s vs fp32 {rates.fp32:.0f} GFLOP/s "
        f"({rates.bf16_speedup:.2f}x) on {cpu.model}"
    )
    if requested == "bf16":
        if not cpu.has_bf16_units or rates.bf16_speedup < 1.0:
            why = "has no bf16 units" if not cpu.has_bf16_units else "runs bf16 slower than fp32"
            _say_once(
                logging.WARNING,
                f"precision bf16 was asked for, but this CPU {why} ({rate_text}); training will "
                "be slower than in fp32 (precision fp32 or auto avoids this)",
            )
        return "bf16"
    choice = "bf16" if rates.bf16_speedup >= BF16_MIN_SPEEDUP else "fp32"
    _say_once(
        logging.INFO,
        f"precision auto: {choice} ({rate_text}; bf16 needs >= {BF16_MIN_SPEEDUP}x)",
    )
    return choice
