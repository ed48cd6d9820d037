"""shard_state=False: every rank holds every moment and steps the whole tree on the whole
average (all-gathered after the rank-order sum of its shard, or MPI's own allreduce)."""
from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np
from mpi4py import MPI

from . import _optim as optim_family
from ._data_parallel import DataParallel, _state_of
from ._families import _Optim, _Paysage
from ._layout import Layout, aligned_bytes


class _RankRows:
    """The rows of the fixed-order sum, in rank order (deterministic): the other ranks' copies
    of this rank's shard, received at lay.recv_displs; this rank's own slot (None here) is its
    gradient's bytes, read where they are (see _Step._fixed_order_average)."""

    def __init__(self, lay: Layout, size: int, deterministic: bool) -> None:
        n = lay.shard_nbytes
        recv = aligned_bytes((size - 1) * n) if deterministic else None
        self.recv: Any = recv
        self.rows: list[Any] = [] if recv is None else [
            None if r == lay.rank else recv[d:d + n] for r, d in enumerate(lay.recv_displs)]


class _WholeBuffers(_RankRows):
    """The replicated step's flat buffers for one layout (allocated once)."""

    def __init__(self, lay: Layout, size: int, deterministic: bool, inplace: bool) -> None:
        super().__init__(lay, size, deterministic)
        self.params: Any = None
        # Deterministic: every rank averages its shard into its range, then all are gathered;
        # otherwise the allreduce works in the send buffer itself.
        self.avg: Any = lay.gather_buffer() if deterministic else lay.send
        self.avg_tree: Any = lay.tree(self.avg)


class _Replicated(DataParallel):
    """Every rank holds the whole state: the wrapped optimizer steps as in a single process."""

    _BUFFERS = _WholeBuffers
    _DET_EXCHANGE = ("alltoall", "gather")
    _REDUCE = "allreduce"

    def _held_state(self) -> Optional[dict[str, Any]]:
        return None  # the wrapped optimizer keeps what it holds: it steps the whole tree

    def _exchanged(self, lay: Layout, dtype: str) -> bool:
        """Whether MPI's own reduction (deterministic=False) has bytes of this dtype to reduce."""
        lo, hi = lay.region(dtype)
        return hi > lo

    def _after_exchange(self, is_model: bool) -> tuple[str, ...]:
        return ("settle",)

    def _sends_in_place(self) -> bool:
        # MPI's out-of-place Allreduce (not deterministic) first copies its send buffer into the
        # result: packing is the same copy, and the collective then runs in place.
        return self._det

    def _gather_target(self, lay: Layout, bufs: Any, pleaves: Any, is_model: bool) -> Any:
        """The flat buffer the step's all-gather writes: the average's (deterministic), or None."""
        return bufs.avg if self._det else None

    def _prepare_new(self, lay: Layout) -> Any:
        return None

    def _step_agreed(self, lay: Layout, model: Any, is_model: bool, pleaves: Any) -> None:
        self._average_replicated(lay)
        self._settle(self._finite_error(self._bufs.avg_tree) if self._opt.check_finite else None, not is_model)
        t = time.perf_counter()
        self._step_wrapped(model, self._bufs.avg_tree)
        self.timings["step"] += time.perf_counter() - t

    def _average_replicated(self, lay: Layout) -> None:
        """The whole average into bufs.avg on every rank."""
        if self._det:
            self._fixed_order_average(lay, self._bufs.avg[lay.lo:lay.hi])
            self._allgather(lay, self._bufs.avg)
            return
        t0 = time.perf_counter()
        self._reduce_each(lay)
        self._native_average(lay.send, lay.split, (lay.data - lay.split) // 4, 0, lay.split // 8, t0)

    def _reduce(self, lay: Layout, dtype: str) -> None:
        """MPI's own sum of one dtype's region (deterministic=False), all of it in lay.send."""
        self._done += 1
        mpi_type = MPI.DOUBLE if dtype == "float64" else MPI.FLOAT
        lo, hi = lay.region(dtype)
        src = MPI.IN_PLACE if self._src is lay.send else [self._src[lo:hi], mpi_type]
        self._comm.Allreduce(src, [lay.send[lo:hi], mpi_type], op=MPI.SUM)

    def _whole_delta(self) -> Any:
        return self._own_delta()

    def _converged(self) -> bool:
        return bool(self._opt.check_convergence())

    # -- state ---------------------------------------------------------------------------------
    def _whole_state(self) -> dict[str, Any]:
        return _state_of(self._opt)

    def _blank_copy(self) -> Any:
        return copy.deepcopy(self._opt)

    def _check_state(self, probe: Any, state: Mapping[str, Any]) -> Optional[dict[str, Any]]:
        probe.load_state_dict(state)
        return None

    def _load(self, state: Mapping[str, Any], checked: Any) -> None:
        self._opt.load_state_dict(state)

    def _data_range(self, lay: Layout) -> tuple[int, int]:
        return 0, lay.data

    def _part_nbytes(self, lay: Layout) -> int:
        return lay.nbytes

    def _moment_tree(self, lay: Layout, buf: np.ndarray) -> Any:
        return lay.tree(buf)

    def _moment_leaves(self, lay: Layout, tree: Any) -> list[Any]:
        return list(lay.plan.flatten(tree))

    def _slot_leaves(self, state: Mapping[str, Any], name: str, paths: list[str], lay: Layout) -> list[Any]:
        index = {p: i for i, p in enumerate(paths)}
        return [state[f"{name}.{index[p]}"] for p in lay.paths]

    def _cut(self, lay: Layout, leaves: list[Any], name: str, start: int, end: int) -> np.ndarray:
        """This rank's bytes [start, end) of a whole tree's leaves, as the layout packs them."""
        flat = aligned_bytes(lay.nbytes)
        lay.pack.pack(leaves, flat, name)
        return flat[start:end]


class _ReplicatedPaysage(_Paysage, _Replicated):
    """A fusedopt.optimizers optimizer, replicated."""


class _ReplicatedOptim(_Optim, _Replicated):
    """A fusedopt.optim optimizer, replicated: it steps the whole tree with the caller's mask."""

    def _decay_flags(self, state: Mapping[str, Any]) -> list[bool]:
        return [bool(b) for b in np.asarray(state["decay_mask"]).reshape(-1)]

    def _state_from(self, scalars: Mapping[str, Any], lay: Layout, flats: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return optim_family.whole_state_from(scalars, lay, flats)

    def _mask_for(self, lay: Layout) -> None:
        return None  # the caller's mask steps the whole tree as it is

    def _set_mask(self, mask: None) -> None:
        """Nothing to install: the optimizer keeps the caller's mask."""
