"""Run under a plain mpiexec -n N (no ``-m mpi4py``): one rank fails, uncaught; the job must end.

    python abort.py MODE

MODE: ``raise`` (an exception on the last rank between steps), ``sigint`` (SIGINT to the last
rank), ``between`` (the last rank's optimizer raises inside a sharded step, between the
exchange and the all-gather the other ranks are waiting in), ``model`` (its paysage model's
parameter_update raises), ``opt-out`` (FUSEDOPT_MPI_ABORT=0: no hook; exits normally).
The other ranks keep stepping; only MPI_Abort from the failing rank's hook ends them.
"""
import os
import signal
import sys

import numpy as np
from mpi4py import MPI

from fusedopt import distributed, optimizers

COMM = MPI.COMM_WORLD
RANK, LAST = COMM.Get_rank(), COMM.Get_size() - 1
MODE = sys.argv[1]


class Failing(optimizers.Gradient):
    """Its own update raises on the last rank after its first step."""

    def update(self, model, grad):
        if RANK == LAST and self.step_count >= 1:
            raise RuntimeError("the last rank's optimizer failed inside the step")
        super().update(model, grad)
        self.step_count += 1


class Model:
    def __init__(self):
        self.updates = 0

    def parameter_update(self, delta):
        self.updates += 1
        if RANK == LAST and self.updates > 2:
            raise RuntimeError("the last rank's model failed")


def main():
    if MODE == "opt-out":
        before = sys.excepthook
        distributed.DataParallel(optimizers.ADAM())
        assert sys.excepthook is before, "the hook was installed despite FUSEDOPT_MPI_ABORT=0"
        print("opt-out: no hook", flush=True)
        return
    opt = Failing(stepsize=0.01) if MODE == "between" else optimizers.ADAM(stepsize=0.01)
    dp = distributed.DataParallel(opt, shard_state=True)
    params, model = np.zeros(1000, np.float32), Model()
    for step in range(100000):
        if RANK == LAST and step == 3:
            if MODE == "raise":
                raise RuntimeError("the last rank failed between steps")
            if MODE == "sigint":
                os.kill(os.getpid(), signal.SIGINT)
        g = np.full(1000, RANK + step, np.float32)
        dp.update(model if MODE == "model" else params, g)
    raise SystemExit("no rank failed: the test is broken")


if __name__ == "__main__":
    main()
