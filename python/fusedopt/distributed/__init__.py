"""Data-parallel training over MPI, bit-reproducible at any number of processes.

``DataParallel(optimizer, comm)`` wraps a fusedopt optimizer. Every rank calls
``update(model_or_params, local_grad)`` with its own gradient; the step taken
is the wrapped optimizer's step on the average ``(((g0 + g1) + g2) + ...) / N``
(in rank order, rounded to each leaf's dtype). See docs/distributed.md.

Launch with ``mpiexec -n N python train.py``; needs the ``[mpi]`` extra
(``pip install "fusedopt[mpi]"``: mpi4py and the mpich wheel).
"""
from __future__ import annotations

try:
    from mpi4py import MPI  # noqa: F401 - the clear error below, before any module needs it
except ImportError as _exc:  # pragma: no cover - exercised only without mpi4py
    raise ImportError("fusedopt.distributed needs mpi4py and an MPI library: "
                      "pip install 'fusedopt[mpi]' (mpi4py and the mpich wheel)") from _exc

from ._abort import abort_on_uncaught
from ._data_parallel import DataParallel
from ._replicated import _ReplicatedOptim, _ReplicatedPaysage
from ._sharded_optim import _ShardedOptim
from ._sharded_paysage import _ShardedPaysage
from ._strategies import STRATEGIES

# (a fusedopt.optim optimizer, shard_state) -> the strategy class
STRATEGIES.update({(False, False): _ReplicatedPaysage, (False, True): _ShardedPaysage,
                   (True, False): _ReplicatedOptim, (True, True): _ShardedOptim})

__all__ = ["DataParallel", "abort_on_uncaught"]
