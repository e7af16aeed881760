"""Nothing hangs and nothing drifts at the edges: identity round trips are exact, ranks and
experts with zero tokens and unequal local batches work, evaluation and generation run on each
rank alone (EP is off there: `Runtime.eval_model`). Every spawn has a hard timeout."""

import pytest

from tests.distributed import workers as W
from tests.distributed.launch import run_workers


def test_dispatch_edges_two_ranks(tmp_path):
    run_workers(W.dispatch_worker, 2, tmp_path, timeout=120)


@pytest.mark.distributed
def test_eval_and_generation_two_ranks(tmp_path):
    run_workers(W.eval_generate_worker, 2, tmp_path, timeout=120)
