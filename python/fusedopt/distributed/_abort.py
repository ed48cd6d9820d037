"""One rank's uncaught exception ends the whole MPI job (docs/launching.md).

Under a plain ``mpiexec -n N python train.py`` a rank that dies of an uncaught exception
(a KeyboardInterrupt included) leaves its peers waiting forever in their next collective,
and itself waiting in MPI_Finalize at exit. ``python -m mpi4py`` calls MPI_Abort instead;
the same is done here for a library: when the first DataParallel is made in a job of more
than one process, ``sys.excepthook`` is chained with a hook that lets the previous hook print
the traceback and then calls ``MPI.COMM_WORLD.Abort``, which ends every rank.

Opt out with the environment variable ``FUSEDOPT_MPI_ABORT=0`` or ``abort_on_uncaught(False)``.
"""
from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from typing import Any, Optional

from mpi4py import MPI

ENV = "FUSEDOPT_MPI_ABORT"
_GRACE = 0.2  # seconds between the traceback and MPI_Abort

_previous: Optional[Any] = None  # the hook ours chains, while ours is installed
_opted_out = False


def _hook(kind: type, value: BaseException, tb: Any) -> None:
    previous = _previous if _previous is not None else sys.__excepthook__
    try:
        previous(kind, value, tb)
    finally:
        if not _opted_out:
            _abort(kind)


def _abort(kind: type) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed stream must not keep the job from ending
            pass
    # MPI_Abort makes the launcher kill every process, its output forwarders included: a moment
    # first lets the traceback, already in the pipe, reach the terminal.
    time.sleep(_GRACE)
    # The status a shell gives a process killed by SIGINT, as mpi4py's own runner does.
    MPI.COMM_WORLD.Abort(128 + signal.SIGINT if issubclass(kind, KeyboardInterrupt) else 1)


def out_of_step(comm: Any, first: Optional[BaseException], second: BaseException) -> None:
    """A second exception (a second interrupt, say) cut short this rank's part in collectives its
    peers are in (a failed step's catch-up, or the agreement raising a failure everywhere): the
    ranks can no longer be brought to the same collective, so, rather than leave them waiting for
    each other forever, the job ends (whether or not the hook is installed; alone, there is no
    peer to wait and `second` is raised as it is)."""
    if comm.Get_size() == 1:
        raise second
    after = f" while handling {type(first).__name__}: {first}" if first is not None else ""
    print(f"fusedopt.distributed: {type(second).__name__} on rank {comm.Get_rank()} during the collectives "
          f"that keep the ranks in step{after}; the ranks cannot be brought to the same collective any more: "
          "ending the job (MPI_Abort)", file=sys.stderr)
    traceback.print_exception(type(second), second, second.__traceback__)
    _abort(type(second))


def install() -> None:
    """Chain the hook into sys.excepthook, once, unless opted out or alone in the job."""
    global _previous
    if _previous is not None or _opted_out or os.environ.get(ENV, "1").strip() == "0":
        return
    if MPI.COMM_WORLD.Get_size() == 1:  # nothing to end but this process: Python's own behaviour
        return
    _previous = sys.excepthook
    sys.excepthook = _hook


def abort_on_uncaught(enable: bool = True) -> None:
    """Whether an uncaught exception on this rank calls MPI_Abort, ending every rank of the job
    (installed by the first ``DataParallel`` of a job of more than one process).
    ``abort_on_uncaught(False)`` removes the hook (restoring the previous ``sys.excepthook``
    when it is still the one in place) and keeps later DataParallels from installing it;
    ``abort_on_uncaught(True)`` installs it now."""
    global _previous, _opted_out
    if not isinstance(enable, bool):
        raise TypeError(f"enable must be a bool, got {type(enable).__name__}")
    _opted_out = not enable
    if enable:
        install()
    elif sys.excepthook is _hook:  # (a hook chained after ours keeps calling it: it then only chains)
        sys.excepthook = _previous
        _previous = None
