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
) -> list[str]:
    """The `torchrun` argument list for `command` ("-m module args..." or "script.py args...")."""
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
    return args + command


def launch(
    command: list[str],
    nproc: int,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    rdzv_id: str = "vlmoe",
) -> None:
    """Run `command` on `nproc` local processes (times `nnodes` nodes); return when all end.

    Raises DistributedError when a worker fails, naming its rank and exit code or signal."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        torchrun_args(command, nproc, nnodes, rdzv_endpoint, rdzv_id)
    )
    log.info("starting %d process(es) per node on %d node(s): %s", nproc, nnodes, command)
    try:
        run(args)
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
