"""Stacked expert weights and the backends that run every expert on its own slice of tokens.

Legend: N rows in the dispatched buffer (sorted by expert), D model dim, H expert hidden dim,
I = 2H for SwiGLU (gate and up packed, gate first) or H for GELU, E experts, C padded rows per
expert (bmm backend).

`Experts(x_ND, counts_E) -> y_ND`: rows [off_e, off_e + counts_E[e]) belong to expert e, where
off_e is the running sum of counts. Rows past sum(counts_E) (pairs dropped by capacity) may hold
anything, NaN included; they are never read, and come back as zeros with zero gradient.

Backends (all held to `experts_loop` by the tests, in outputs and in gradients):

- `loop`: the obviously correct reference, a Python loop over experts.
- `grouped_mm`: grouped GEMMs (MegaBlocks, Gale et al. 2022) inside one autograd function for
  the whole expert MLP, through `torch._grouped_mm` where it applies (fp32/bf16/fp16 on CPU,
  bf16 on Hopper+; int32 cumulative offsets read on the device; 16-byte aligned data and row
  strides). The backward is written by hand: dgrad and wgrad are grouped GEMMs too (2d x 3d and
  2d x 2d), the incoming gradient is made contiguous. It keeps what the dense FFN it replaces
  keeps: x, h, silu(gate) and act(h) (D + 2I values per row). Recomputing silu(gate) and
  act(h) in the backward instead saved I values per row but cost 11-13% of the experts'
  forward + backward at the presets' sizes (dim 64-128, 1 thread): two more elementwise
  passes. Where `torch._grouped_mm` does not apply (fp64, sizes not a multiple of 16 bytes,
  old torch) the same function runs one `mm` per expert into slices of one output: same
  results, same memory.
  On CPU `torch._grouped_mm` is itself a loop of `mm` over the groups (it reads the offsets on
  the host and leaves rows past the last offset uninitialised, which is why dropped rows are
  zeroed explicitly here, in forward and in dgrad).
- `bmm`: pads every expert to C = max(counts_E) rows (a view, no copy, when the counts are all
  equal, as after expert-choice or soft routing) and runs each of the six GEMMs of forward and
  backward as one `bmm`, in the same hand-written autograd function shape.
- `auto`: on a CPU that emulates bf16 (measured: `bf16_emulated`), runs bf16 inputs as
  `grouped_mm` in fp32 with fp32 copies of the weights; otherwise picks `grouped_mm` or `bmm`
  per call by `choose_backend`: `bmm` for bf16/fp16 on CPU
  when every expert has rows and N <= 16 E, or N <= 128 E with E * max(counts) <= 1.25 N;
  `grouped_mm` otherwise (always for fp32, and on accelerators, where deciding would need a
  host sync).

Why that rule (2-core Xeon with AMX, torch 2.13 + oneDNN 3.12 + MKL, 2 threads; config d=512,
H=1024, E=8, k=2). Idle-machine measurements, experts alone:

- fp32 goes through MKL, whose per-expert GEMMs (M = T*k/E rows) run about as fast as the
  dense FFN's (0.37 TF/s at M=1024 vs 0.29-0.37 at M=4096): fwd+bwd at T=4096, 263 ms vs
  265 ms for the dense equivalent; at T=16 grouped 1.13 ms vs bmm 1.57 ms (bmm computes the
  padding). So fp32 never pads.
- bf16 goes through oneDNN's AMX brgemm, which repacks the weight on every call (AMX wants VNNI
  tiles): a 1-row (1, 512) @ (512, 2048) product takes 85 us in bf16 against 42 us in fp32 for
  twice the bytes, and the per-call cost dominates decode. One `bmm` per GEMM beats E `mm`
  calls once every expert is touched (T=16, N=32: bmm 1.1 ms vs grouped 1.38 ms), while at T=1
  reading only the 2 touched experts wins (grouped 0.35 ms vs bmm 1.06 ms, which reads all 8).
  Converting small-T work to fp32 does not pay: the conversion reads and writes more than the
  repacking (0.19-0.25 ms vs 0.085 ms). What would: weights stored (out, in) like nn.Linear,
  which turns the 1-row product into a weight-streaming W @ x^T (30 us); that needs an
  (E, I, D) layout.
- bf16 at T=4096 (M=1024 per expert): four of the six per-expert GEMMs run at 1.0-1.4 TF/s
  (N=512 or K>=1024 at M<=1024, shapes oneDNN leaves to one thread: the 1-thread rate is
  1.3 TF/s) against 2.2-2.5 TF/s for the dense FFN's shapes; per-GEMM at T=4096: x@w_in 7.9 ms,
  a@w_out 7.0, dgrad 3.9 + 16.7, wgrad 6.2 + 13.8 (sum 55 ms; 41 ms for the dense FFN's six).
  A padded `bmm` hands the experts to the threads as a batch, but pays the padding copies; on
  the (busy) machine where this rule was settled, `bmm` won for bf16 up to T=512 (whole layer,
  fwd+bwd, ratio to dense 2.15 vs 2.39 for grouped; T=16: 3.1 vs 4.1) and lost at T=4096
  (fwd 1.69 vs 1.46), hence the 128 E bound.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlmoe.nn.machine import bf16_is_fast
from vlmoe.nn.mlp import Activation, activate, in_features_factor

Backend = Literal["auto", "loop", "grouped_mm", "bmm"]

_GMM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def expert_mlp(x_MD: Tensor, w_in_DI: Tensor, w_out_HD: Tensor, activation: Activation) -> Tensor:
    """One expert on its rows: act(x @ w_in) @ w_out, (M, D) -> (M, D)."""
    return activate(x_MD @ w_in_DI, activation) @ w_out_HD


def experts_loop(
    x_ND: Tensor, counts_E: Tensor, w_in_EDI: Tensor, w_out_EHD: Tensor, activation: Activation
) -> Tensor:
    """Reference: a Python loop over experts, each on its contiguous slice."""
    y_ND = x_ND.new_zeros(x_ND.shape[0], w_out_EHD.shape[-1])
    start = 0
    for e, n in enumerate(counts_E.tolist()):
        if n:
            y_ND[start : start + n] = expert_mlp(
                x_ND[start : start + n], w_in_EDI[e], w_out_EHD[e], activation
            )
        start += n
    return y_ND


# ---------------------------------------------------------------------------------------------
# grouped_mm


def _aligned(t: Tensor) -> bool:
    """torch._grouped_mm wants 16-byte aligned data and row strides (one of the two unit)."""
    if t.data_ptr() % 16:
        return False
    step = 16 // t.element_size()
    s0, s1 = t.stride(-2), t.stride(-1)
    return (s1 == 1 and s0 % step == 0) or (s0 == 1 and s1 % step == 0)


def grouped_mm_applies(x_ND: Tensor, w_in_EDI: Tensor, w_out_EHD: Tensor) -> bool:
    """Whether `torch._grouped_mm` can run these operands (else the per-expert mm fallback)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if not (x_ND.dtype == w_in_EDI.dtype == w_out_EHD.dtype) or x_ND.dtype not in _GMM_DTYPES:
        return False
    if x_ND.device.type == "cuda":
        # CUTLASS kernels: bf16 only, Hopper or newer.
        if x_ND.dtype != torch.bfloat16 or torch.cuda.get_device_capability(x_ND.device) < (9, 0):
            return False
    elif x_ND.device.type != "cpu":
        return False
    step = 16 // x_ND.element_size()
    D, I, H = w_in_EDI.shape[1], w_in_EDI.shape[2], w_out_EHD.shape[1]
    if D % step or I % step or H % step:
        return False
    return all(_aligned(t) for t in (x_ND, w_in_EDI, w_out_EHD))


def _gmm(a: Tensor, b: Tensor, offs: Tensor, ends: list[int] | None) -> Tensor:
    """Grouped matmul with `torch._grouped_mm`'s semantics for the two MoE cases.

    a (M, K) @ b (G, K, N) -> (M, N): rows [ends[g-1], ends[g]) use b[g].
    a (K, M) @ b (M, N) -> (G, K, N): group g contracts over columns/rows [ends[g-1], ends[g]).
    Rows past ends[-1] of a 2d x 3d output are left uninitialised, as torch._grouped_mm does.
    `ends` is None when torch._grouped_mm applies (it reads `offs`, int32, on the device).
    """
    if ends is None:
        return torch._grouped_mm(a, b, offs=offs)
    start = 0
    if b.dim() == 3:
        out = a.new_empty(a.shape[0], b.shape[-1])
        for g, end in enumerate(ends):
            if end > start:
                torch.mm(a[start:end], b[g], out=out[start:end])
            start = end
        return out
    out = a.new_empty(len(ends), a.shape[0], b.shape[-1])
    for g, end in enumerate(ends):
        torch.mm(a[:, start:end], b[start:end], out=out[g])  # K=0 writes zeros
        start = end
    return out


def _zero_tail(t_ND: Tensor, total: int | None, offs_E: Tensor) -> Tensor:
    """Zero the rows past the last expert's slice (uninitialised in grouped_mm's output)."""
    if total is None:  # on an accelerator: mask without a host sync
        keep_N = torch.arange(t_ND.shape[0], device=t_ND.device) < offs_E[-1]
        return t_ND.masked_fill_(~keep_N[:, None], 0.0)
    return t_ND[total:].zero_()


def _act_forward(h_MI: Tensor, activation: Activation, out_MH: Tensor) -> Tensor | None:
    """out = act(h), the same function as `vlmoe.nn.mlp.activate`, written into `out`; returns
    silu(gate) for SwiGLU (the backward needs it), None for GELU."""
    if activation == "swiglu":
        gate, up = h_MI.chunk(2, dim=-1)
        silu_gate = F.silu(gate)
        torch.mul(silu_gate, up, out=out_MH)
        return silu_gate
    torch.ops.aten.gelu.out(h_MI, approximate="tanh", out=out_MH)
    return None


def _act_backward(
    h_MI: Tensor, silu_gate: Tensor | None, grad_a_MH: Tensor, activation: Activation
) -> Tensor:
    """d loss / d h from the saved pre-activation h (and silu(gate) for SwiGLU) and
    d loss / d act(h), for the rows of `grad_a` (the rest of the result is left uninitialised,
    never read). `grad_a` is overwritten."""
    grad_h = torch.empty_like(h_MI)
    rows = grad_a_MH.shape[:-1]
    h, out = h_MI[..., : rows[-1], :], grad_h[..., : rows[-1], :]
    if activation == "swiglu":
        gate, up = h.chunk(2, dim=-1)
        d_gate, d_up = out.chunk(2, dim=-1)
        torch.mul(grad_a_MH, silu_gate, out=d_up)
        torch.ops.aten.silu_backward.grad_input(grad_a_MH.mul_(up), gate, grad_input=d_gate)
        return grad_h
    torch.ops.aten.gelu_backward.grad_input(grad_a_MH, h, approximate="tanh", grad_input=out)
    return grad_h


def _keep_intermediates(ctx, *tensors: Tensor | None) -> None:
    """Keep tensors made inside a forward on `ctx` rather than in `save_for_backward` (which
    holds them until the backward returns), so that the backward can drop each one as soon as
    it has used it: at most one of the large activation-sized buffers and its gradient live at
    once, which lowers the backward's peak (`benchmarks/moe_layer.py`, peak_mb). Only tensors
    created in the forward may be kept this way, never its inputs or outputs."""
    ctx.intermediates = list(tensors)


def _take_intermediates(ctx) -> list[Tensor | None]:
    """The tensors of `_keep_intermediates`, handed over to the backward (ctx keeps none)."""
    if ctx.intermediates is None:
        raise RuntimeError(
            "backward through the MoE experts ran twice for one forward; retain_graph=True is "
            "not supported by the grouped_mm and bmm experts (use the loop backend)"
        )
    tensors, ctx.intermediates = ctx.intermediates, None
    return tensors


class _GroupedExpertMLP(torch.autograd.Function):
    """y = act(x @ w_in[e]) @ w_out[e] per expert slice, with a hand-written backward.

    Keeps x, the pre-activation h, silu(gate) (SwiGLU) and the activation act(h); the backward
    frees each as soon as it has used it.
    Rows past the last slice are never read and come out zero.
    `total` is that row count when known on the host (CPU), else None (masked on the device).
    """

    @staticmethod
    def forward(
        ctx,
        x_ND: Tensor,
        w_in_EDI: Tensor,
        w_out_EHD: Tensor,
        offs_E: Tensor,
        ends: list[int] | None,
        total: int | None,
        activation: Activation,
    ) -> Tensor:
        N, H = x_ND.shape[0], w_out_EHD.shape[1]
        rows = N if total is None else total
        h_NI = _gmm(x_ND, w_in_EDI, offs_E, ends)  # (N, I), rows >= total uninitialised
        a_NH = x_ND.new_empty(N, H)
        silu_gate = _act_forward(h_NI[:rows], activation, a_NH[:rows])
        y_ND = _gmm(a_NH, w_out_EHD, offs_E, ends)  # (N, D)
        _zero_tail(y_ND, total, offs_E)
        ctx.save_for_backward(x_ND, w_in_EDI, w_out_EHD, offs_E)
        _keep_intermediates(ctx, h_NI, silu_gate, a_NH)
        ctx.ends, ctx.total, ctx.activation = ends, total, activation
        return y_ND

    @staticmethod
    def backward(ctx, grad_ND: Tensor):
        x_ND, w_in_EDI, w_out_EHD, offs_E = ctx.saved_tensors
        h_NI, silu_gate, a_NH = _take_intermediates(ctx)
        ends, total = ctx.ends, ctx.total
        rows = h_NI.shape[0] if total is None else total
        need_x, need_w_in, need_w_out = ctx.needs_input_grad[:3]
        grad_ND = grad_ND.contiguous()
        grad_w_out = None
        if need_w_out:  # (E, H, D) from the first `rows` rows
            grad_w_out = _gmm(a_NH[:rows].t(), grad_ND[:rows], offs_E, ends)
        del a_NH
        grad_a = _gmm(grad_ND, w_out_EHD.transpose(1, 2), offs_E, ends)[:rows]  # (rows, H)
        del grad_ND
        grad_h_NI = _act_backward(h_NI, silu_gate, grad_a, ctx.activation)
        del h_NI, silu_gate, grad_a
        grad_x = grad_w_in = None
        if need_w_in:
            grad_w_in = _gmm(x_ND.t(), grad_h_NI, offs_E, ends)  # (E, D, I)
        if need_x:
            grad_x = _gmm(grad_h_NI, w_in_EDI.transpose(1, 2), offs_E, ends)  # (N, D)
            _zero_tail(grad_x, total, offs_E)
        return grad_x, grad_w_in, grad_w_out, None, None, None, None


def experts_grouped_mm(
    x_ND: Tensor, counts_E: Tensor, w_in_EDI: Tensor, w_out_EHD: Tensor, activation: Activation
) -> Tensor:
    """Grouped-GEMM experts (see the module docstring). Same contract as `experts_loop`."""
    x_ND = x_ND.contiguous()
    offs_E = torch.cumsum(counts_E, 0, dtype=torch.int32)
    use_gmm = grouped_mm_applies(x_ND, w_in_EDI, w_out_EHD)
    total = None  # on an accelerator grouped_mm reads the offsets there: no host sync
    ends = None
    if x_ND.device.type == "cpu" or not use_gmm:
        ends = offs_E.tolist()  # free on CPU; elsewhere the fallback needs it anyway
        total = ends[-1] if ends else 0
    return _GroupedExpertMLP.apply(
        x_ND, w_in_EDI, w_out_EHD, offs_E, None if use_gmm else ends, total, activation
    )


# ---------------------------------------------------------------------------------------------
# bmm


def _pad(t_ND: Tensor, counts: list[int], C: int) -> Tensor:
    """(N, X) rows sorted by expert -> (E, C, X), expert e's rows first, then zeros."""
    if all(n == C for n in counts) and t_ND.shape[0] == C * len(counts):
        return t_ND.reshape(len(counts), C, -1)  # already padded (expert choice, soft MoE)
    out = t_ND.new_empty(len(counts), C, t_ND.shape[1])
    start = 0
    for e, n in enumerate(counts):
        out[e, :n] = t_ND[start : start + n]
        out[e, n:] = 0
        start += n
    return out


def _unpad(t_ECX: Tensor, counts: list[int], N: int) -> Tensor:
    """(E, C, X) -> (N, X): the inverse of `_pad`, rows past sum(counts) zero."""
    E, C, X = t_ECX.shape
    if all(n == C for n in counts) and N == E * C:
        return t_ECX.reshape(N, X)
    out = t_ECX.new_empty(N, X)
    start = 0
    for e, n in enumerate(counts):
        out[start : start + n] = t_ECX[e, :n]
        start += n
    out[start:] = 0
    return out


class _PaddedExpertMLP(torch.autograd.Function):
    """The expert MLP on a padded (E, C, .) layout: every GEMM, forward and backward, is one
    `bmm`. Padding rows are zero, so their activations, outputs and gradients are zero too
    (act(0) = 0 for SwiGLU and GELU) and they add nothing to the weight gradients."""

    @staticmethod
    def forward(
        ctx,
        x_ND: Tensor,
        w_in_EDI: Tensor,
        w_out_EHD: Tensor,
        counts: list[int],
        activation: Activation,
    ) -> Tensor:
        C = max(counts)
        x_ECD = _pad(x_ND, counts, C)
        h_ECI = torch.bmm(x_ECD, w_in_EDI)
        a_ECH = x_ND.new_empty(h_ECI.shape[:2] + (w_out_EHD.shape[1],))
        silu_gate = _act_forward(h_ECI, activation, a_ECH)
        y_ND = _unpad(torch.bmm(a_ECH, w_out_EHD), counts, x_ND.shape[0])
        ctx.save_for_backward(w_in_EDI, w_out_EHD)
        _keep_intermediates(ctx, x_ECD, h_ECI, silu_gate, a_ECH)
        ctx.counts, ctx.activation, ctx.N = counts, activation, x_ND.shape[0]
        return y_ND

    @staticmethod
    def backward(ctx, grad_ND: Tensor):
        w_in_EDI, w_out_EHD = ctx.saved_tensors
        x_ECD, h_ECI, silu_gate, a_ECH = _take_intermediates(ctx)
        need_x, need_w_in, need_w_out = ctx.needs_input_grad[:3]
        grad_ECD = _pad(grad_ND.contiguous(), ctx.counts, x_ECD.shape[1])
        grad_w_out = torch.bmm(a_ECH.transpose(1, 2), grad_ECD) if need_w_out else None
        del a_ECH
        grad_a = torch.bmm(grad_ECD, w_out_EHD.transpose(1, 2))  # (E, C, H)
        del grad_ECD
        grad_h = _act_backward(h_ECI, silu_gate, grad_a, ctx.activation)
        del h_ECI, silu_gate, grad_a
        grad_x = grad_w_in = None
        if need_w_in:
            grad_w_in = torch.bmm(x_ECD.transpose(1, 2), grad_h)  # (E, D, I)
        if need_x:
            grad_x = _unpad(torch.bmm(grad_h, w_in_EDI.transpose(1, 2)), ctx.counts, ctx.N)
        return grad_x, grad_w_in, grad_w_out, None, None


def experts_bmm(
    x_ND: Tensor, counts_E: Tensor, w_in_EDI: Tensor, w_out_EHD: Tensor, activation: Activation
) -> Tensor:
    """Padded batched matmul: every expert gets C = max(counts_E) rows; each GEMM is one `bmm`.

    Padding costs (E * C - N) rows of compute and reads every expert's weights, so this pays off
    where the rows are spread evenly over the experts, and where one call beats E calls:
    decode-sized inputs, and bf16 GEMMs that oneDNN runs on one thread when split per expert.
    Same contract as `experts_loop`.
    """
    counts = counts_E.tolist()
    if sum(counts) == 0:  # nothing to pad; grouped_mm returns zeros that stay in the graph
        return experts_grouped_mm(x_ND, counts_E, w_in_EDI, w_out_EHD, activation)
    return _PaddedExpertMLP.apply(x_ND, w_in_EDI, w_out_EHD, counts, activation)


# ---------------------------------------------------------------------------------------------
# auto


def choose_backend(counts_E: Tensor, dtype: torch.dtype) -> Literal["grouped_mm", "bmm"]:
    """The backend `auto` runs for one call, from the rows per expert and the dtype.

    `bmm` for bf16/fp16 on the CPU when every expert has rows and the input is small: N <= 16 E
    (decode: one call per GEMM instead of E, each of which repacks its weight), or N <= 128 E
    with E * max(counts) <= 1.25 N (little padding). `grouped_mm` otherwise: large inputs, any
    fp32 input (MKL runs per-expert GEMMs as fast as the dense one, padding only costs), and
    accelerators, where the counts stay on the device and deciding would need a host sync.
    The measurements behind this are in the module docstring.
    """
    if dtype not in (torch.bfloat16, torch.float16) or counts_E.device.type != "cpu":
        return "grouped_mm"
    counts = counts_E.tolist()
    E, N = len(counts), sum(counts)
    if E == 0 or min(counts) == 0:
        return "grouped_mm"
    if N <= 16 * E or (N <= 128 * E and E * max(counts) <= 1.25 * N):
        return "bmm"
    return "grouped_mm"


def bf16_emulated(x_ND: Tensor) -> bool:
    """Whether `auto` should compute this bf16 input in fp32: on a CPU that emulates bf16 (its
    measured bf16 matmul rate under half its fp32 rate, `vlmoe.nn.machine`: no bf16 units, or
    oneDNN capped below them).

    There bf16 GEMMs run 8-10x slower than fp32 (2-core Xeon with oneDNN capped at AVX2, one
    thread: a 128-token dense FFN takes 68 ms in bf16 against 8 ms in fp32), and slowest in the
    (in, out) weight layout the experts keep (a 1-token expert product 8 ms against 0.85 ms in
    nn.Linear's (out, in)). Computing in fp32 and rounding the output to bf16 is faster than
    any bf16 layout there (1 token: 0.17 ms), and more accurate.
    """
    if x_ND.dtype != torch.bfloat16 or x_ND.device.type != "cpu":
        return False
    return not bf16_is_fast("cpu")


_BACKENDS = {"loop": experts_loop, "grouped_mm": experts_grouped_mm, "bmm": experts_bmm}


class Experts(nn.Module):
    """E feed-forward experts with stacked weights `w_in` (E, D, I) and `w_out` (E, H, D)."""

    def __init__(
        self,
        num_experts: int,
        dim: int,
        hidden_dim: int,
        activation: Activation = "swiglu",
        backend: Backend = "auto",
    ) -> None:
        super().__init__()
        if backend not in ("auto", *_BACKENDS):
            raise ValueError(f"backend={backend!r} is not one of {['auto', *_BACKENDS]}")
        self.num_experts, self.dim, self.hidden_dim = num_experts, dim, hidden_dim
        self.activation, self.backend = activation, backend
        inner = in_features_factor(activation) * hidden_dim
        self.w_in = nn.Parameter(torch.empty(num_experts, dim, inner))
        self.w_out = nn.Parameter(torch.empty(num_experts, hidden_dim, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The same distribution nn.Linear uses, so an expert starts like a dense MLP would.
        nn.init.uniform_(self.w_in, -1 / math.sqrt(self.dim), 1 / math.sqrt(self.dim))
        bound = 1 / math.sqrt(self.hidden_dim)
        nn.init.uniform_(self.w_out, -bound, bound)

    def forward(self, x_ND: Tensor, counts_E: Tensor) -> Tensor:
        device = x_ND.device.type
        if torch.is_autocast_enabled(device) and x_ND.dtype != self.w_in.dtype:
            # Autocast does not reach inside the backends' autograd functions (and their
            # backward runs outside it): an input in autocast's dtype (e.g. straight from a
            # linear layer) runs with the weights cast to it on each call, their gradients
            # flowing back in full precision. A full-precision input (after a norm, as in the
            # presets) stays in full precision: casting it down too made a dim-128 MoE model's
            # bf16 step 1.3-1.9x slower on a CPU with AMX (`benchmarks/model_step.py`).
            with torch.autocast(device, enabled=False):
                w_in, w_out = self.w_in.to(x_ND.dtype), self.w_out.to(x_ND.dtype)
                return self._run(x_ND, counts_E, w_in, w_out)
        return self._run(x_ND, counts_E, self.w_in, self.w_out)

    def _run(self, x_ND: Tensor, counts_E: Tensor, w_in: Tensor, w_out: Tensor) -> Tensor:
        backend = self.backend
        if backend == "auto":
            if bf16_emulated(x_ND):
                w_in, w_out = self._fp32_weights()
                y_ND = experts_grouped_mm(x_ND.float(), counts_E, w_in, w_out, self.activation)
                return y_ND.to(x_ND.dtype)
            backend = choose_backend(counts_E, x_ND.dtype)
        return _BACKENDS[backend](x_ND, counts_E, w_in, w_out, self.activation)

    def run_one(self, expert: int, x_MD: Tensor) -> Tensor:
        """Expert `expert` on the rows x (M, D), without a dispatched buffer: the decoding fast
        path of `MoELayer` (a few tokens, no grad). Same arithmetic as the backends, in fp32
        where `auto` would compute this bf16 input in fp32."""
        if self.backend == "auto" and bf16_emulated(x_MD):
            w_in, w_out = self._fp32_weights()
            y = expert_mlp(x_MD.float(), w_in[expert], w_out[expert], self.activation)
            return y.to(x_MD.dtype)
        return expert_mlp(x_MD, self.w_in[expert], self.w_out[expert], self.activation)

    def _fp32_weights(self) -> tuple[Tensor, Tensor]:
        """fp32 copies of the weights for a CPU that emulates bf16 (see `bf16_emulated`).

        Under autograd they are fresh casts (the gradient flows back to the bf16 weights). Without
        it they are kept and reused while the weights are unchanged (same storage, same version
        counter): converting all experts every call would cost decode more than it saves. The
        copy is a cache, not state: it is never saved and is rebuilt after any weight update.
        """
        if torch.is_grad_enabled() and (self.w_in.requires_grad or self.w_out.requires_grad):
            return self.w_in.float(), self.w_out.float()
        key = tuple((w.data_ptr(), w._version, w.dtype) for w in (self.w_in, self.w_out))
        cached = self.__dict__.get("_fp32_cache")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, self.w_in.float(), self.w_out.float())
            self.__dict__["_fp32_cache"] = cached
        return cached[1], cached[2]

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, dim={self.dim}, hidden_dim={self.hidden_dim}, "
            f"activation={self.activation}, backend={self.backend}"
        )
