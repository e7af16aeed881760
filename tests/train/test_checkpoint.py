import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from toy_moe import ToyMoE

from vlmoe.train.checkpoint import (
    CheckpointError,
    checkpoint_dirs,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from vlmoe.train.config import OptimizerConfig
from vlmoe.train.optim import build_optimizer

KILLED_WRITER = textwrap.dedent(
    """
    import sys, time, torch
    sys.path.insert(0, {here!r})
    from toy_moe import ToyMoE
    import vlmoe.train.checkpoint as ck
    torch.manual_seed(0)
    model = ToyMoE()
    ck.save_checkpoint({run!r}, 1, model, None, {{"note": "first"}})
    with torch.no_grad():
        model.head.bias.add_(1.0)
    real = ck.save_file
    def slow_save(tensors, path):  # the kill lands half-way through writing step 2
        with open(path, "wb") as f:
            f.write(b"partial")
        print("writing", flush=True)
        time.sleep(60)
    ck.save_file = slow_save
    ck.save_checkpoint({run!r}, 2, model, None, {{"note": "second"}})
    """
)


def test_kill_during_write_keeps_previous_checkpoint(tmp_path):
    here = os.path.dirname(__file__)
    script = KILLED_WRITER.format(here=here, run=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_0000001"]
    assert list((tmp_path / "checkpoints").glob(".tmp-*"))  # the torn write is left aside
    model = ToyMoE()
    state = load_checkpoint(latest_checkpoint(tmp_path), model)
    assert state["note"] == "first" and state["step"] == 1
    torch.manual_seed(0)
    assert torch.equal(model.head.bias, ToyMoE().head.bias)
    save_checkpoint(tmp_path, 3, model, None, {})  # the next save cleans the torn one
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_keep_last_and_optimizer_roundtrip(tmp_path):
    model = ToyMoE()
    opt = build_optimizer(model, OptimizerConfig())
    model(torch.randn(4, 8))[0].sum().backward()
    opt.step()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, opt, {"k": step}, keep_last=2)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_0000002", "step_0000003"]
    model2 = ToyMoE()
    opt2 = build_optimizer(model2, OptimizerConfig())
    load_checkpoint(latest_checkpoint(tmp_path), model2, opt2)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for i in s1["state"]:
        for k in s1["state"][i]:
            assert torch.equal(s1["state"][i][k], s2["state"][i][k])


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    model = ToyMoE()
    path = save_checkpoint(tmp_path, 1, model, None, {})
    other = ToyMoE()
    other.head = torch.nn.Linear(16, 5)
    with pytest.raises(CheckpointError, match=r"head\.(weight|bias) has shape"):
        load_checkpoint(path, other)
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path, model)
    (path / "trainer_state.json").write_text("{")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path, model)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope", model)
