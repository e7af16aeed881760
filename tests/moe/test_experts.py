"""Every experts backend against the `loop` reference: outputs and gradients of the input and of
both expert weights, fp32 and bf16, SwiGLU and GELU, on random shapes (hypothesis) and on the
corner cases: one row, empty experts, all rows on one expert, no rows at all, and dropped rows
at the end of the buffer that hold NaN garbage.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vlmoe.moe.experts as experts_mod
from vlmoe.moe.experts import (
    Experts,
    choose_backend,
    experts_bmm,
    experts_grouped_mm,
    experts_loop,
    grouped_mm_applies,
)

FAST = {"grouped_mm": experts_grouped_mm, "bmm": experts_bmm}


def _case(counts, dropped, D, H, activation, seed=0):
    """fp64 operands: x_ND with NaN in the dropped rows, weights, and an output gradient."""
    g = torch.Generator().manual_seed(seed)
    E = len(counts)
    I = 2 * H if activation == "swiglu" else H
    N = sum(counts) + dropped
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    x[N - dropped :] = float("nan")
    w_in = torch.randn(E, D, I, generator=g, dtype=torch.float64) / D**0.5
    w_out = torch.randn(E, H, D, generator=g, dtype=torch.float64) / H**0.5
    grad = torch.randn(N, D, generator=g, dtype=torch.float64)
    return torch.tensor(counts, dtype=torch.int64), x, w_in, w_out, grad


def _run(fn, counts, x, w_in, w_out, grad, activation, dtype):
    """Output and gradients (x, w_in, w_out) of one backend, as fp64."""
    leaves = [t.to(dtype).detach().requires_grad_() for t in (x, w_in, w_out)]
    y = fn(leaves[0], counts, leaves[1], leaves[2], activation)
    if y.requires_grad:  # the loop reference returns a constant when no row is computed
        y.backward(grad.to(dtype))
    grads = [torch.zeros_like(t) if t.grad is None else t.grad for t in leaves]
    return [t.double() for t in (y, *grads)]


def _err(a, b):
    return (a - b).abs().max().item() if a.numel() else 0.0


def check_backend(fn, counts, dropped, D, H, activation, dtype, seed=0):
    counts, x, w_in, w_out, grad = _case(counts, dropped, D, H, activation, seed)
    exact = _run(experts_loop, counts, x, w_in, w_out, grad, activation, torch.float64)
    fast = _run(fn, counts, x, w_in, w_out, grad, activation, dtype)
    names = ("y", "grad x", "grad w_in", "grad w_out")
    if dtype == torch.float32:
        for name, a, b in zip(names, fast, exact):
            scale = b.abs().max().item() if b.numel() else 0.0
            assert _err(a, b) <= 1e-5 * max(scale, 1e-3), name
    else:  # within the rounding the bf16 reference itself makes
        ref = _run(experts_loop, counts, x, w_in, w_out, grad, activation, dtype)
        for name, a, r, b in zip(names, fast, ref, exact):
            scale = b.abs().max().item() if b.numel() else 0.0
            assert _err(a, b) <= 2 * max(_err(r, b), 2**-8 * scale) + 1e-6, name
    total = int(counts.sum())
    y, grad_x = fast[0], fast[1]
    assert torch.isfinite(torch.cat([t.flatten() for t in fast])).all()
    assert (y[total:] == 0).all() and (grad_x[total:] == 0).all()


counts_st = st.integers(1, 6).flatmap(
    lambda E: st.lists(st.sampled_from([0, 0, 1, 2, 3, 5, 9]), min_size=E, max_size=E)
)


@settings(max_examples=40, deadline=None)
@given(
    counts=counts_st,
    dropped=st.sampled_from([0, 0, 1, 3]),
    D=st.sampled_from([4, 8, 16, 5]),  # 5: rows not 16-byte aligned, grouped_mm falls back
    H=st.sampled_from([4, 8, 12, 6]),
    activation=st.sampled_from(["swiglu", "gelu"]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    backend=st.sampled_from(sorted(FAST)),
    seed=st.integers(0, 2**16),
)
def test_backends_match_loop(counts, dropped, D, H, activation, dtype, backend, seed):
    check_backend(FAST[backend], counts, dropped, D, H, activation, dtype, seed)


@pytest.mark.parametrize("backend", sorted(FAST))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
@pytest.mark.parametrize(
    "counts,dropped",
    [
        ([1], 0),  # N = 1
        ([0, 1, 0], 0),  # one row, empty experts around it
        ([0, 0, 12, 0], 0),  # every row on one expert
        ([4, 0, 0, 3], 2),  # empty experts and dropped NaN rows
        ([0, 0, 0], 3),  # everything dropped
        ([0, 0], 0),  # nothing at all
    ],
)
def test_corner_cases(backend, dtype, activation, counts, dropped):
    check_backend(FAST[backend], counts, dropped, 8, 8, activation, dtype)


def test_grouped_mm_fallback_matches(monkeypatch):
    """The per-expert mm fallback (used where torch._grouped_mm does not apply) is exact too."""
    monkeypatch.setattr(experts_mod, "grouped_mm_applies", lambda *args: False)
    for activation in ("swiglu", "gelu"):
        check_backend(experts_grouped_mm, [3, 0, 5, 1], 2, 8, 8, activation, torch.float32)


def test_grouped_mm_applies():
    E, D, H = 2, 8, 8
    w_in, w_out = torch.randn(E, D, 2 * H), torch.randn(E, H, D)
    assert grouped_mm_applies(torch.randn(5, D), w_in, w_out) == hasattr(torch, "_grouped_mm")
    assert not grouped_mm_applies(
        torch.randn(5, D, dtype=torch.float64), w_in.double(), w_out.double()
    )
    assert not grouped_mm_applies(torch.randn(5, 6), torch.randn(E, 6, 16), torch.randn(E, 8, 6))
    assert not grouped_mm_applies(torch.randn(5, D).bfloat16(), w_in, w_out)  # mixed dtypes


def test_no_grad_and_partial_grads():
    counts, x, w_in, w_out, _ = _case([2, 0, 3], 1, 8, 8, "swiglu")
    x, w_in, w_out = x.float(), w_in.float(), w_out.float()
    ref = experts_loop(x, counts, w_in, w_out, "swiglu")
    with torch.no_grad():
        torch.testing.assert_close(experts_grouped_mm(x, counts, w_in, w_out, "swiglu"), ref)
    # only the weights need grad (the first layer of a network): no grad for x is computed
    w = w_in.clone().requires_grad_()
    experts_grouped_mm(x, counts, w, w_out, "swiglu").sum().backward()
    w_ref = w_in.clone().requires_grad_()
    experts_loop(x, counts, w_ref, w_out, "swiglu").sum().backward()
    torch.testing.assert_close(w.grad, w_ref.grad)


@pytest.mark.parametrize("counts", [[2, 3], [3, 3]])  # [3, 3]: bmm's no-padding view
def test_non_contiguous_input(counts):
    counts, x, w_in, w_out, _ = _case(counts, 0, 8, 8, "gelu")
    x_t = x.float().t().contiguous().t()  # same values, column-major
    ref = experts_loop(x.float(), counts, w_in.float(), w_out.float(), "gelu")
    for fn in FAST.values():
        torch.testing.assert_close(fn(x_t, counts, w_in.float(), w_out.float(), "gelu"), ref)


@pytest.mark.parametrize("backend", ["auto", "loop", "grouped_mm", "bmm"])
def test_module_backends_agree(backend):
    torch.manual_seed(0)
    ref = Experts(4, 16, 8, "swiglu", backend="loop")
    mod = Experts(4, 16, 8, "swiglu", backend=backend)
    mod.load_state_dict(ref.state_dict())
    counts = torch.tensor([3, 0, 4, 1])
    x = torch.randn(9, 16)
    torch.testing.assert_close(mod(x, counts), ref(x, counts))


def test_module_rejects_unknown_backend():
    with pytest.raises(ValueError, match="backend='cuda_magic'"):
        Experts(2, 8, 8, backend="cuda_magic")


def test_choose_backend_rule():
    def pick(counts, dtype=torch.bfloat16):
        return choose_backend(torch.tensor(counts), dtype)

    assert pick([1, 0, 1, 0]) == "grouped_mm"  # decode touching few experts: read only those
    assert pick([3, 4, 5, 4]) == "bmm"  # decode touching every expert: one call per GEMM
    assert pick([120, 130, 125, 135]) == "bmm"  # small and balanced: little padding
    assert pick([400, 40, 40, 40]) == "grouped_mm"  # skewed: padding would double the work
    assert pick([1000, 1010, 990, 1020]) == "grouped_mm"  # large: per-expert GEMMs are big
    assert pick([120, 130, 125, 135], torch.float32) == "grouped_mm"


@pytest.mark.parametrize("backend", sorted(FAST))
def test_expanded_output_gradient(backend):
    """y.sum().backward() hands the backward a stride-0 gradient; grouped GEMMs need real rows."""
    counts, x, w_in, w_out, _ = _case([2, 0, 3], 1, 8, 8, "swiglu")
    grads = []
    for fn in (FAST[backend], experts_loop):
        leaves = [t.float().detach().requires_grad_() for t in (x, w_in, w_out)]
        fn(leaves[0], counts, leaves[1], leaves[2], "swiglu").sum().backward()
        grads.append([leaf.grad for leaf in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def _emulating(monkeypatch, emulated: bool) -> None:
    """Make `auto` see a CPU whose bf16 is (not) emulated, whatever this machine is."""
    import vlmoe.moe.experts as experts_module

    monkeypatch.setattr(experts_module, "bf16_is_fast", lambda device="cpu": not emulated)


def test_auto_on_emulated_bf16_computes_in_fp32(monkeypatch):
    _emulating(monkeypatch, True)
    torch.manual_seed(0)
    mod = Experts(4, 16, 8, "swiglu", backend="auto").to(torch.bfloat16)
    counts = torch.tensor([3, 0, 4, 1])
    x = torch.randn(10, 16).bfloat16().requires_grad_()  # one dropped row at the end
    y = mod(x, counts)
    assert y.dtype == torch.bfloat16 and torch.all(y[8:] == 0)
    x32 = x.detach().float().requires_grad_()
    w_in = mod.w_in.detach().float().requires_grad_()
    w_out = mod.w_out.detach().float().requires_grad_()
    ref = experts_loop(x32, counts, w_in, w_out, "swiglu")
    torch.testing.assert_close(y, ref.bfloat16())  # fp32 math, one rounding at the end
    g = torch.randn(10, 16)
    y.backward(g.bfloat16())
    ref.backward(g.bfloat16().float())
    assert mod.w_in.grad.dtype == torch.bfloat16
    for a, b in ((x.grad, x32.grad), (mod.w_in.grad, w_in.grad), (mod.w_out.grad, w_out.grad)):
        torch.testing.assert_close(a, b.bfloat16())


def test_emulated_bf16_weight_copies_follow_weight_updates(monkeypatch):
    _emulating(monkeypatch, True)
    torch.manual_seed(0)
    mod = Experts(2, 8, 8, "gelu", backend="auto").to(torch.bfloat16)
    counts, x = torch.tensor([2, 3]), torch.randn(5, 8).bfloat16()
    with torch.no_grad():
        first = mod(x, counts)
        cached = mod.__dict__["_fp32_cache"][1]
        assert mod(x, counts).equal(first) and mod.__dict__["_fp32_cache"][1] is cached
        mod.w_in.mul_(2)  # an optimizer step: the version counter moves
        second = mod(x, counts)
    assert mod.__dict__["_fp32_cache"][1] is not cached and not second.equal(first)
    assert "_fp32_cache" not in str(mod.state_dict().keys())


def test_auto_with_fast_bf16_keeps_bf16(monkeypatch):
    _emulating(monkeypatch, False)
    mod = Experts(2, 8, 8, "swiglu", backend="auto").to(torch.bfloat16)
    with torch.no_grad():
        mod(torch.randn(4, 8).bfloat16(), torch.tensor([2, 2]))
    assert "_fp32_cache" not in mod.__dict__


@pytest.mark.parametrize("backend", sorted(FAST))
def test_second_backward_is_refused_by_name(backend):
    """The fast backends free their intermediates during the backward (a lower peak), so a
    second backward through the same forward gets a clear error, not a wrong gradient."""
    counts, x, w_in, w_out, grad = _case([3, 0, 2], 0, 16, 8, "swiglu")
    x, w_in, w_out = (t.float().requires_grad_() for t in (x, w_in, w_out))
    y = FAST[backend](x, counts, w_in, w_out, "swiglu")
    y.backward(grad.float(), retain_graph=True)
    with pytest.raises(RuntimeError, match="ran twice for one forward"):
        y.backward(grad.float())
