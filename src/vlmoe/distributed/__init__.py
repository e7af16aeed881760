"""Scale-out over `torchrun`: process groups, expert parallelism, data parallelism.

See `mesh` (groups), `dispatch` (the all-to-all dispatcher), `parallelize` (applying it to a
built model, gradient reduction, global router losses, gathered checkpoints), `runtime` (what
a training loop calls) and `launch` (torchrun's elastic agent for `vlmoe train --nproc`).
"""

from vlmoe.distributed.dispatch import AllToAllDispatcher, ExpertParallelPlan
from vlmoe.distributed.mesh import (
    DistributedError,
    Mesh,
    ParallelConfig,
    init_mesh,
    resolve_ep,
    single_process_mesh,
)
from vlmoe.distributed.parallelize import (
    full_state_dict,
    gather_aux,
    load_full_state_dict,
    parallelize,
    reduce_gradients,
)

__all__ = [
    "AllToAllDispatcher",
    "DistributedError",
    "ExpertParallelPlan",
    "Mesh",
    "ParallelConfig",
    "full_state_dict",
    "gather_aux",
    "init_mesh",
    "load_full_state_dict",
    "parallelize",
    "reduce_gradients",
    "resolve_ep",
    "single_process_mesh",
]
