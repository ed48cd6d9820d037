"""Run under a plain mpiexec -n N: a second interrupt while the failing rank catches up.

    python second_interrupt.py POINT

The last rank's step is interrupted right after the agreement (a KeyboardInterrupt before the
gradient exchange); while it takes part in the step's remaining collectives (the catch-up that
makes every rank raise in the same step) a second KeyboardInterrupt lands, at POINT:
``exchange`` (before it enters the exchange), ``gather`` (before the all-gather) or
``agreement`` (inside the last agreement, between its two collectives). Every rank catches
KeyboardInterrupt and saves a checkpoint (``state_dict()``, a collective), as a training
loop does. The ranks can no longer be kept in step, so the job must end (MPI_Abort, status
130) instead of hanging with the ranks in different collectives; the launch has a time limit.
"""
import sys

import numpy as np
from mpi4py import MPI

from fusedopt import distributed, optimizers

COMM = MPI.COMM_WORLD
RANK, LAST = COMM.Get_rank(), COMM.Get_size() - 1
POINT = sys.argv[1]


class Comm:
    """The communicator, with a KeyboardInterrupt before the first bcast once armed."""

    def __init__(self, comm):
        self.comm, self.armed = comm, False

    def __getattr__(self, name):
        return getattr(self.comm, name)

    def bcast(self, *args, **kwargs):
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt("second")
        return self.comm.bcast(*args, **kwargs)


def interrupting(then=None):
    """A stand-in for a method that raises a KeyboardInterrupt: the first (after calling `then`)
    or, without `then`, the second."""
    def wrapped(*args, **kwargs):
        if then is not None:
            then()
        raise KeyboardInterrupt("first" if then is not None else "second")
    return wrapped


def main():
    dp = distributed.DataParallel(optimizers.ADAM(stepsize=0.01), shard_state=True)
    params = np.zeros(1000, np.float32)
    for step in range(2):
        dp.update(params, np.full(1000, RANK + step, np.float32))
    if RANK == LAST:
        if POINT == "agreement":
            dp._comm = comm = Comm(dp._comm)
            dp._average_shard = interrupting(lambda: setattr(comm, "armed", True))
        else:
            dp._average_shard = interrupting(lambda: None)
            setattr(dp, {"exchange": "_alltoall", "gather": "_allgather"}[POINT], interrupting())
    try:
        dp.update(params, np.full(1000, RANK + 2, np.float32))
    except KeyboardInterrupt:
        for name in ("_average_shard", "_alltoall", "_allgather"):
            dp.__dict__.pop(name, None)
        dp.state_dict()  # the checkpoint a training loop saves on Ctrl-C: a collective
    print(f"rank {RANK}: went on after the second interrupt", flush=True)


if __name__ == "__main__":
    main()
