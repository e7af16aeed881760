"""`Runtime`, the training loop's calls, on 2 gloo ranks against one process: DDP and FSDP2 for
the dense parameters, EP for the experts, global gradient-norm clipping, and checkpoints in the
single-process layout that resume on another world size (2 -> 1 and 1 -> 2)."""

import pytest
import torch

from tests.distributed import workers as W
from tests.distributed.launch import run_workers

STEPS, MORE = 3, 5


def _assert_matches(got: dict, want: dict, steps: range, what: str) -> None:
    for step in steps:
        for key in (f"loss/{step}", f"grad_norm/{step}"):
            torch.testing.assert_close(got[key], want[key], atol=1e-6, rtol=1e-5, msg=what + key)
    for key in (k for k in want if k.startswith("param/")):
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-5, msg=what + key)


@pytest.mark.parametrize("dp", ["ddp", pytest.param("fsdp", marks=pytest.mark.distributed)])
def test_two_ranks_train_then_one_process_resumes(tmp_path, dp):
    run_workers(W.runtime_worker, 2, tmp_path, dp, 2, 0, STEPS, timeout=180)
    want = W.reference_run(W.RUNTIME_MOE, 0, STEPS)
    for r, got in enumerate(W.load_ranks(tmp_path, "rt", 2)):
        _assert_matches(got, want, range(STEPS), f"{dp} rank {r} ")
    ckpt = tmp_path / f"run/checkpoints/step_{STEPS:07d}"
    resumed = W.reference_run(W.RUNTIME_MOE, STEPS, MORE, ckpt_in=ckpt)
    _assert_matches(resumed, W.reference_run(W.RUNTIME_MOE, 0, MORE), range(STEPS, MORE), "2->1 ")


@pytest.mark.distributed
@pytest.mark.parametrize("dp", ["ddp", "fsdp"])
def test_one_process_checkpoint_resumes_on_two_ranks(tmp_path, dp):
    W.reference_run(W.RUNTIME_MOE, 0, STEPS, ckpt_out=tmp_path / "one")
    ckpt = str(tmp_path / f"one/checkpoints/step_{STEPS:07d}")
    run_workers(W.runtime_worker, 2, tmp_path, dp, 2, STEPS, MORE, ckpt, timeout=180)
    want = W.reference_run(W.RUNTIME_MOE, 0, MORE)
    for r, got in enumerate(W.load_ranks(tmp_path, "rt", 2)):
        _assert_matches(got, want, range(STEPS, MORE), f"1->2 {dp} rank {r} ")
