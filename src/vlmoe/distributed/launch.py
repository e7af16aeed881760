"""Start a command on N processes through torchrun's elastic agent (`torch.distributed.run`).

`vlmoe train --nproc N ...` calls `launch`: this process becomes the agent, starts N workers
running the same command (each sees RANK, WORLD_SIZE, MASTER_ADDR/PORT and joins the run with
`init_mesh`), watches them, and when one dies (an exception, or kill -9) stops the others and
raises one `DistributedError` naming the rank and how it ended. No restarts: a failed run is
resumed from its last checkpoint (written atomically, so a kill never leaves half a one).

Single node: `--standalone` (a free local port). Several nodes: the same command on every node
with `nnodes` and a c10d rendezvous endpoint `host:port` reachable from all of them; see the
README's "Scale out" section.
"""

from __future__ import annotations

import logging

from vlmoe.distributed.mesh import DistributedError

log = logging.getLogger(__name__)


def torchrun_args(
    command: list[str],
    nproc: int,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    rdzv_id: str = "vlmoe",
    join_timeout_s: float = 300.0,
) -> list[str]:
    """The `torchrun` argument list for `command` ("-m module args..." or "script.py args...").
    Several nodes wait at most `join_timeout_s` for each other at the rendezvous."""
    if nproc < 1:
        raise DistributedError(f"--nproc must be >= 1, got {nproc}")
    if nnodes < 1:
        raise DistributedError(f"--nnodes must be >= 1, got {nnodes}")
    args = ["--nproc-per-node", str(nproc), "--max-restarts", "0"]
    if nnodes == 1 and rdzv_endpoint is None:
        args.append("--standalone")
    else:
        if rdzv_endpoint is None:
            raise DistributedError(
                f"--nnodes={nnodes} needs --rdzv-endpoint HOST:PORT (a c10d rendezvous that "
                "every node can reach)"
            )
        args += ["--nnodes", str(nnodes), "--rdzv-backend", "c10d"]
        args += ["--rdzv-endpoint", rdzv_endpoint, "--rdzv-id", rdzv_id]
        args += ["--rdzv-conf", f"join_timeout={max(1, round(join_timeout_s))}"]
    return args + command


def launch(
    command: list[str],
    nproc: int,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    rdzv_id: str = "vlmoe",
    join_timeout_s: float = 300.0,
) -> None:
    """Run `command` on `nproc` local processes (times `nnodes` nodes); return when all end.

    Raises DistributedError when a worker fails, naming its rank and exit code or signal, or
    when the nodes do not all join the rendezvous within `join_timeout_s`."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        torchrun_args(command, nproc, nnodes, rdzv_endpoint, rdzv_id, join_timeout_s)
    )
    log.info("starting %d process(es) per node on %d node(s): %s", nproc, nnodes, command)
    try:
        run(args)
    except RendezvousError as e:
        raise DistributedError(
            f"the {nnodes} nodes did not all join the rendezvous at {rdzv_endpoint} within "
            f"{join_timeout_s:g}s (parallel.timeout_s): start the same command on every node "
            f"({type(e).__name__})"
        ) from None
    except ChildFailedError as e:
        # The root cause: a rank killed by a signal (not the agent's SIGTERM), else one that
        # exited with an error (peers of a dead rank fail too), earliest and lowest first.
        def cause(item):
            rank, f = item
            order = 2 if f.signal_name() == "SIGTERM" else 0 if f.exitcode < 0 else 1
            return order, f.timestamp, rank

        rank, failure = min(e.failures.items(), key=cause)
        how = (
            f"was killed by {failure.signal_name()}"
            if failure.exitcode < 0
            else f"exited with code {failure.exitcode}"
        )
        raise DistributedError(
            f"rank {rank} {how}; the other ranks were stopped. The last checkpoint is intact: "
            "resume the run to continue"
        ) from None
