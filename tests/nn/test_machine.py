"""Machine capability detection, the cached matmul-rate probe and `resolve_precision`."""

import json
import logging

import pytest
import torch

from vlmoe.nn import machine
from vlmoe.nn.machine import CpuInfo, MatmulRates, cpu_info, matmul_rates, resolve_precision

AMX = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})
AVX2 = frozenset({"avx", "avx2", "fma"})


def cpu(flags=AVX2, cap=None) -> CpuInfo:
    return CpuInfo("Test CPU 9000", flags, "AVX2", cap)


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
    """Each test logs afresh and never touches the user's cache."""
    monkeypatch.setattr(machine, "_said", set())
    monkeypatch.setattr(machine, "_rates_memo", {})
    monkeypatch.setenv("VLMOE_CACHE_DIR", str(tmp_path / "cache"))


def test_cpu_info_parses_model_and_flags(tmp_path, monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    f = tmp_path / "cpuinfo"
    f.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx avx2 fma\n\n"
        "processor\t: 1\nmodel name\t: other\nflags\t\t: avx512_bf16\n"
    )
    info = cpu_info(str(f))
    assert info.model == "AMD EPYC 7B13"
    assert info.isa == ["avx2"]
    assert not info.has_bf16_units
    assert "AMD EPYC 7B13" in info.describe() and "avx2" in info.describe()


def test_bf16_units_from_flags_and_onednn_cap():
    assert cpu(AMX).has_bf16_units
    assert not cpu(AVX2).has_bf16_units
    assert not cpu(AMX, cap="AVX2").has_bf16_units  # oneDNN told not to use them
    assert cpu(AMX, cap="AVX512_CORE_AMX").has_bf16_units


@pytest.mark.parametrize(
    ("fp32", "bf16", "expected"),
    [(40.0, 0.5, "fp32"), (40.0, 50.0, "fp32"), (40.0, 59.9, "fp32"), (40.0, 60.0, "bf16")],
)
def test_auto_picks_bf16_only_where_clearly_faster(fp32, bf16, expected, caplog):
    rates = MatmulRates(fp32=fp32, bf16=bf16, threads=2, size=1024)
    with caplog.at_level(logging.INFO, logger="vlmoe.nn.machine"):
        assert resolve_precision("auto", "cpu", rates, cpu(AMX)) == expected
        assert resolve_precision("auto", "cpu", rates, cpu(AMX)) == expected
    said = [r.getMessage() for r in caplog.records if "precision auto" in r.getMessage()]
    assert len(said) == 1 and f"auto: {expected}" in said[0]  # said once


def test_forced_bf16_without_units_warns_once(caplog):
    slow = MatmulRates(fp32=40.0, bf16=0.4, threads=2, size=256)
    with caplog.at_level(logging.WARNING, logger="vlmoe.nn.machine"):
        for _ in range(3):
            assert resolve_precision("bf16", "cpu", slow, cpu(AVX2)) == "bf16"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "no bf16 units" in warnings[0].getMessage()


def test_forced_bf16_with_fast_units_is_silent(caplog):
    fast = MatmulRates(fp32=40.0, bf16=160.0, threads=2, size=1024)
    with caplog.at_level(logging.WARNING, logger="vlmoe.nn.machine"):
        assert resolve_precision("bf16", "cpu", fast, cpu(AMX)) == "bf16"
    assert not caplog.records


def test_fp32_and_bad_values():
    assert resolve_precision("fp32", "cpu") == "fp32"  # never measures
    assert not machine._rates_memo
    with pytest.raises(ValueError, match="'fp16'"):
        resolve_precision("fp16", "cpu")


def test_rates_are_measured_once_and_cached_on_disk(tmp_path, monkeypatch):
    calls = []

    def fake_measure(n=1024):
        calls.append(n)
        return MatmulRates(fp32=50.0, bf16=10.0, threads=torch.get_num_threads(), size=n)

    monkeypatch.setattr(machine, "measure_matmul_rates", fake_measure)
    path = tmp_path / "rates.json"
    first = matmul_rates(cpu(), path)
    assert calls == [1024] and first.bf16_emulated
    machine._rates_memo.clear()  # a new process: read from the file
    assert matmul_rates(cpu(), path) == first and calls == [1024]
    stored = json.loads(path.read_text())
    assert len(stored) == 1 and "Test CPU 9000" in next(iter(stored))
    machine._rates_memo.clear()  # another oneDNN cap is another key
    matmul_rates(cpu(cap="AVX2"), path)
    assert len(calls) == 2 and len(json.loads(path.read_text())) == 2


def test_corrupt_cache_is_remeasured(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "measure_matmul_rates", lambda n=1024: MatmulRates(1.0, 2.0, 1, n))
    path = tmp_path / "rates.json"
    path.write_text("{not json")
    assert matmul_rates(cpu(), path).bf16 == 2.0
    assert json.loads(path.read_text())  # rewritten whole


def test_real_probe_measures_positive_rates():
    rates = machine.measure_matmul_rates(n=256)
    assert rates.fp32 > 0 and rates.bf16 > 0 and rates.size in (64, 256)


def test_train_config_accepts_auto():
    from vlmoe.train.config import TrainConfig

    assert TrainConfig(precision="auto").precision == "auto"


def test_trainer_autocasts_as_auto_resolves(tmp_path, monkeypatch):
    """precision=auto asks the resolver, and trains in bf16 autocast when it says bf16."""
    import vlmoe.train.trainer as trainer_module
    from vlmoe.recipes.run import train
    from vlmoe.train.config import RunConfig, apply_overrides

    asked, dtypes = [], []
    monkeypatch.setattr(
        trainer_module, "resolve_precision", lambda p, device: asked.append(p) or "bf16"
    )
    real_forward = torch.nn.Linear.forward

    def spy(self, x):
        dtypes.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return real_forward(self, x)

    monkeypatch.setattr(torch.nn.Linear, "forward", spy)
    overrides = [
        "model.preset=vit-debug-moe",
        "data.name=digits",
        "data.num_train=8",
        "data.num_eval=4",
        "train.batch_size=4",
        "train.steps=1",
        "train.progress=none",
        "train.precision=auto",
    ]
    result = train(apply_overrides(RunConfig(), overrides), tmp_path)
    assert torch.isfinite(torch.tensor(result.losses)).all()
    assert asked and set(asked) == {"auto"}
    assert torch.bfloat16 in dtypes


@pytest.mark.parametrize(
    ("fp32", "bf16", "emulated"), [(40.0, 0.4, True), (40.0, 19.0, True), (40.0, 30.0, False)]
)
def test_emulated_means_under_half_the_fp32_rate(fp32, bf16, emulated):
    assert MatmulRates(fp32=fp32, bf16=bf16, threads=1, size=256).bf16_emulated == emulated
