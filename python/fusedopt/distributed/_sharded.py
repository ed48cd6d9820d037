"""shard_state=True (ZeRO stage 1): each rank holds and steps the moments of its shard (pieces
of the layout's flat bytes) on its shard of the average; the stepped parameters (in-place path)
or the delta (paysage path) are then all-gathered."""
from __future__ import annotations

import copy
import time
from typing import Any, Optional

import numpy as np
from mpi4py import MPI

from .. import optimizers
from ._data_parallel import DataParallel
from ._layout import Layout, aligned_bytes
from ._replicated import _RankRows

_UNSET = object()  # an attribute the instance dict did not hold


class _Sink:
    """A model that ignores its delta (the convergence probe's)."""

    def parameter_update(self, delta: Any) -> None:
        pass


class _ShardBuffers(_RankRows):
    """The sharded step's flat buffers for one layout and path kind (allocated once)."""

    def __init__(self, lay: Layout, size: int, deterministic: bool, inplace: bool) -> None:
        super().__init__(lay, size, deterministic)
        params: Any = lay.gather_buffer() if inplace else None
        self.params = params
        self.avg: Any = aligned_bytes(lay.shard_nbytes)  # the averaged shard
        self.avg_pieces: Any = lay.shard_pieces(self.avg)
        self.param_pieces: Any = lay.shard_pieces(params[lay.lo:lay.hi]) if inplace else None


class _Sharded(DataParallel):
    """Each rank holds and steps its shard of the state."""

    _BUFFERS = _ShardBuffers
    _DET_EXCHANGE = ("alltoall",)
    _REDUCE = "reduce_scatter"

    def _exchanged(self, lay: Layout, dtype: str) -> bool:
        """Whether MPI's own reduction (deterministic=False) has bytes of this dtype to reduce."""
        return bool(sum(lay.region_counts(dtype)))

    def _after_exchange(self, is_model: bool) -> tuple[str, ...]:
        finite = ("finite",) if self._opt.check_finite else ()
        return (*finite, "gather", *(("gather",) if self._keeps_delta(is_model) else ()), "settle")

    def _sends_in_place(self) -> bool:
        return True

    def _gather_target(self, lay: Layout, bufs: Any, pleaves: Any, is_model: bool) -> Any:
        """The flat buffer the step's (first) all-gather writes: the delta's (paysage path) or
        the parameters' (in place: the caller's array itself when it can be)."""
        if is_model:
            return self._delta_buffer(lay)
        direct = self._direct_params(lay, pleaves) if lay.single else None
        return bufs.params if direct is None else direct[0]

    def _step_agreed(self, lay: Layout, model: Any, is_model: bool, pleaves: Any) -> None:
        self._average_shard(lay)
        if self._opt.check_finite:  # agreed before any step
            self._step_agree(self._finite_error(self._bufs.avg_pieces))
        if is_model:
            self._model_step(lay, model)
        else:
            self._inplace_step(lay, pleaves)

    def _average_shard(self, lay: Layout) -> None:
        """This rank's shard of the average into bufs.avg."""
        if self._det:
            self._fixed_order_average(lay, self._bufs.avg, self._fusable())
            return
        t0 = time.perf_counter()
        self._reduce_each(lay)
        self._native_average(self._bufs.avg, lay.part32.offset, lay.part32.count, lay.part64.offset,
                             lay.part64.count, t0)

    def _reduce(self, lay: Layout, dtype: str) -> None:
        """MPI's own sum of one dtype's region (deterministic=False): this rank's shard of it
        into bufs.avg."""
        self._done += 1
        mpi_type = MPI.DOUBLE if dtype == "float64" else MPI.FLOAT
        lo, hi = lay.region(dtype)
        part, item = (lay.part64, 8) if dtype == "float64" else (lay.part32, 4)
        recv = self._bufs.avg[part.offset:part.offset + item * part.count]
        self._comm.Reduce_scatter([self._src[lo:hi], mpi_type], [recv, mpi_type], lay.region_counts(dtype),
                                  op=MPI.SUM)

    def _count_copies(self, t0: float, since: float) -> None:
        """Time since t0 that was neither the all-gather nor an agreement (`since`: their sum
        then): copies between the flat buffer and trees."""
        self.timings["copy"] += time.perf_counter() - t0 - (self.timings["gather"] + self.timings["agree"] - since)

    def _inplace_step(self, lay: Layout, pleaves: Any) -> None:
        bufs = self._bufs
        t0, since = time.perf_counter(), self.timings["gather"] + self.timings["agree"]
        flat = self._gather_flat  # (chosen before the agreement)
        direct = flat is not bufs.params
        if not direct:  # stepped in a flat copy, then copied back
            pieces = bufs.param_pieces
            lay.pack.pack(pleaves, flat[lay.lo:lay.hi], "params", lay.lo, lay.hi)
        else:  # the caller's array itself: its shard stepped in place, then gathered in place
            pieces = self._direct[3]
        t1 = time.perf_counter()
        keep = self._step_pieces(pieces, bufs.avg_pieces)
        t2 = time.perf_counter()
        self.timings["step"] += t2 - t1
        self._allgather(lay, flat)
        delta = self._gather_pieces(lay, self._delta_shard, "delta") if keep else None
        self._settle(None, True, not keep)  # a rank that failed before this raises here on every rank
        if not direct:
            lay.pack.unpack(flat, pleaves, "params")
        self._delta = delta
        self._count_copies(t0, since)
        self.timings["copy"] -= t2 - t1

    def _direct_params(self, lay: Layout, pleaves: Any) -> Optional[tuple[np.ndarray, list[np.ndarray]]]:
        """(flat bytes, this rank's pieces) of a parameter tree's one leaf (checked writeable),
        views into it, when the all-gather can write it directly; memoized for the same array
        (an array's contiguity and memory never change)."""
        leaf, memo = pleaves[0], self._direct
        if memo is not None and memo[0] is leaf and memo[1] is lay:
            return memo[2], memo[3]
        flat = lay.pack.flat_view(pleaves, "params", True)
        if flat is None:
            return None
        pieces = lay.shard_pieces(flat[lay.lo:lay.hi])
        self._direct = (leaf, lay, flat, pieces)
        return flat, pieces

    def _gather_pieces(self, lay: Layout, pieces: Any, what: str = "moment") -> Any:
        """A whole tree from every rank's pieces of it (collective)."""
        flat = lay.gather_buffer(zero=False)
        lay.shard_pack.pack(list(pieces), flat[lay.lo:lay.hi], what)
        self._allgather(lay, flat)
        return lay.tree(flat)

    def _whole_delta(self) -> Any:
        return self._delta

    def _converged(self) -> bool:
        if not self._stepped or self._layout is None:
            return False
        if self._probe is None:
            lay = self._layout
            delta = self._gather_pieces(lay, self._delta_shard, "delta") if self._probe_gathers else self._delta
            if delta is None:  # no step committed here (a model raised after the step's collectives)
                return False
            # A Gradient step with rate 1 takes d = 1 * delta exactly, and sums d**2 per leaf
            # over the same tree layout as the single process's step did, by the kernel of the
            # same output (the delta written, or parameters stepped in place, with or without
            # keep_delta): the single process's sums, whichever way a kernel orders them.
            probe: Any = optimizers.Gradient(stepsize=1.0,  # type: ignore[no-untyped-call]
                                             keep_delta=bool(self._opt.keep_delta))
            probe.update(lay.tree(aligned_bytes(lay.nbytes)) if self._inplace else _Sink(), delta)
            self._probe = probe
        self._probe.tolerance = self._opt.tolerance
        return bool(self._probe.check_convergence())

    # -- state ---------------------------------------------------------------------------------
    def _whole_state(self) -> dict[str, Any]:
        self._agree_on_state()
        return self._gather_state()

    def _blank_copy(self) -> Any:
        probe = copy.deepcopy(self._opt)
        probe.reset()  # this rank's shard structure is not the state's
        return probe

    def _data_range(self, lay: Layout) -> tuple[int, int]:
        return lay.displs[self._rank], lay.displs[self._rank] + lay.counts[self._rank]

    def _part_nbytes(self, lay: Layout) -> int:
        return lay.shard_nbytes

    def _moment_tree(self, lay: Layout, buf: np.ndarray) -> Any:
        return lay.shard_pieces(buf)

    def _moment_leaves(self, lay: Layout, tree: Any) -> list[Any]:
        return list(tree)

    def _slot_leaves(self, state: Any, name: str, paths: list[str], lay: Layout) -> list[Any]:
        return [state[f"{name}.{j}"] for j in range(len(paths))]

    def _cut(self, lay: Layout, leaves: list[Any], name: str, start: int, end: int) -> np.ndarray:
        """This rank's bytes [start, end) from its pieces, as the layout packs them."""
        flat = aligned_bytes(lay.shard_nbytes)
        lay.shard_pack.pack(leaves, flat, name)
        return flat[:end - start]
