"""Expert (+ data) parallel training equals one process on the full batch.

Outputs, the total loss (task + balance, z and entropy losses), every gradient (expert shards
gathered) after one step, and every parameter after 3 AdamW steps, in fp32, for dropless top-1
and top-2, modality expert groups, shared experts, capacity per group of tokens and expert
choice per group. Two ranks
in the default run (one spawn for all cases); four ranks (EP x EDP = 2 x 2, and EP = 4) under
the `distributed` marker. EP 2 x EDP 2 is the case that catches expert gradients scaled by the
EDP size instead of the world size.
"""

import pytest
import torch

from tests.distributed import workers as W
from tests.distributed.launch import run_workers

BASE = dict(hidden_dim=16, num_experts=8)
CASES = {
    "top1": dict(BASE, top_k=1),
    "top2": dict(BASE, top_k=2),
    "modality": dict(BASE, top_k=2, expert_groups="modality", num_cross_modal_experts=2),
    "shared": dict(BASE, top_k=2, num_shared_experts=1, shared_expert_gate=True),
    "capacity": dict(BASE, top_k=2, capacity_factor=0.75, capacity_group_size=W.SEQ),
    "capacity_pos": dict(
        BASE, top_k=1, capacity_factor=1.0, capacity_group_size=W.SEQ, drop_policy="position"
    ),
    "expert_choice": dict(
        BASE, router="expert_choice", expert_choice_capacity=1.5, capacity_group_size=W.SEQ
    ),
}
STEPS = 3


def _check(out_dir, world: int) -> None:
    for name, moe in CASES.items():
        ref = W.reference(moe, STEPS)
        ranks = W.load_ranks(out_dir, name, world)
        logits = torch.cat([r["logits"] for r in ranks])
        torch.testing.assert_close(logits, ref["logits"], atol=1e-6, rtol=1e-5, msg=name)
        for r, out in enumerate(ranks):
            for key, want in ref.items():
                if key == "logits":
                    continue
                tol = dict(atol=1e-5, rtol=1e-5) if key.startswith("param/") else {}
                tol = tol or dict(atol=1e-6, rtol=1e-5)
                torch.testing.assert_close(out[key], want, **tol, msg=f"{name} rank {r} {key}")


def test_capacity_case_drops_pairs():
    """The capacity cases would prove nothing if nothing were dropped."""
    for name in ("capacity", "capacity_pos"):
        model = W.build(CASES[name])
        b = W.batch(0)
        _, auxes = model(b["x"], b["modality"])
        assert not bool(auxes[0].kept_TK.all()), name


def test_two_ranks_equal_one_process(tmp_path):
    cases = {name: (moe, 2) for name, moe in CASES.items()}
    run_workers(W.equivalence_worker, 2, tmp_path, cases, STEPS, timeout=180)
    _check(tmp_path, 2)


@pytest.mark.distributed
@pytest.mark.parametrize("ep", [2, 4, 1])
def test_four_ranks_equal_one_process(tmp_path, ep):
    cases = {name: (moe, ep) for name, moe in CASES.items()}
    run_workers(W.equivalence_worker, 4, tmp_path, cases, STEPS, timeout=300)
    _check(tmp_path, 4)
