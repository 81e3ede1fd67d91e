"""A rank's main under ``mpiexec``: one error line, then every rank aborted (no rank waits forever
in a collective)."""
from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable

from minicnn.training.distributed import Communicator

__all__ = ["run_rank"]


def run_rank(main: Callable[[], int], comm: Communicator, prog: str,
             expected: tuple[type[BaseException], ...] = (), grace: float = 1.0,
             debug: bool = False) -> int:
    """Run ``main()`` in this rank; if it raises, print one line ``<prog>: error: rank K:
    <message>`` to stderr and abort every rank (exit status 1, or 130 after Ctrl-C), so no rank
    waits forever in a collective. ``expected`` errors (a user's mistake, which every rank
    usually meets alike) print their message alone, from ranks other than 0 after ``grace``
    seconds (rank 0's abort usually ends them first); others also print their type. ``debug``
    (or MINICNN_DEBUG=1) prints the traceback first."""
    try:
        return main()
    except SystemExit as exc:
        if exc.code in (0, None):
            raise
        error: BaseException = exc
    except BaseException as exc:
        error = exc
    if debug or os.environ.get("MINICNN_DEBUG"):
        traceback.print_exception(error)
    message = " ".join(str(error).split())
    if isinstance(error, KeyboardInterrupt):
        message = "interrupted"
    elif not isinstance(error, expected) or not message:
        message = f"{type(error).__name__}: {message}" if message else type(error).__name__
    if isinstance(error, expected) and not comm.is_root:
        time.sleep(grace)        # every rank may have hit it: let rank 0 say it, alone
    sys.stderr.write(f"{prog}: error: rank {comm.rank}: {message}\n")   # one write: no
    sys.stderr.flush()                                                  # interleaving
    time.sleep(0.2)              # for the launcher to pass the line on before it kills all
    comm.abort(130 if isinstance(error, KeyboardInterrupt) else 1)
    return 1                               # only reached when abort returns (LocalComm fakes)
