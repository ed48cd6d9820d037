"""The step every strategy takes: local checks, the agreement, the collectives of the step and
the joining of one rank's failure to them, so that every rank raises it in the same step.

What differs by mode (sharded or replicated) and by family (fusedopt.optimizers or
fusedopt.optim) is asked of methods the strategy classes define (_sharded.py, _replicated.py,
_families.py and the classes of both); nothing here looks at which one it is.
"""
from __future__ import annotations

import time
from operator import is_
from typing import Any, Optional

import numpy as np
from mpi4py import MPI

from .. import _core
from . import _fields
from ._abort import out_of_step
from ._agree import agree, agree_flag
from ._interface import _Interface
from ._layout import Layout

_RAISED = -1  # _Step._done once an agreement of the step raised on every rank


def _leaves(tree: Any) -> list[np.ndarray]:
    return list(_core.Plan(tree, "tree").flatten(tree)) if tree is not None else []


class _Step(_Interface):
    """The step's machinery, shared by every strategy (the attributes are DataParallel's)."""

    def _step(self, model: Any, grad: Any) -> None:
        self._plan, self._done, self._adopting = ("agree",), 0, None
        try:
            self._step_once(model, grad)
        except BaseException as exc:
            try:
                self._join(exc)
            finally:
                self._undraw()  # a fusedopt.optim schedule drawn for a step that did not happen
            raise
        finally:
            # (_src and _gather_flat may be the caller's gradient and parameters: not kept past the step)
            self._src = self._fused = self._gather_flat = self._step_layout = None
            self._drawn, self._done = None, 0  # (gathers outside a step count too, to no end)

    def _step_once(self, model: Any, grad: Any) -> None:
        t0 = time.perf_counter()
        is_model = self._is_model(model)
        lay, exc, pleaves, prepared = self._local_checks(model, grad, is_model)
        value = 0
        if exc is None:
            assert lay is not None
            # From the agreement on, every rank takes the same collectives (the plan's), and nothing
            # fails on one rank only for an input the checks above could see. What still can (an
            # interrupt, a MemoryError, a subclass's own update) is joined to them: see _join.
            value, self._plan = self._agreement_value(lay, is_model, *self._key(self._opt, self._pending is not None))
            self._step_layout = lay
        t1 = time.perf_counter()
        self._done = _RAISED  # if the agreement raises, it does so on every rank
        same = agree(self._comm, exc, value, self._message)
        self._done = 1
        timings = self.timings
        timings["pack"] += t1 - t0
        timings["agree"] += time.perf_counter() - t1
        if not same:
            self._plan = ("agree", "describe")
            self._raise_mismatch(lay, is_model, self._fields(*self._key(self._opt, self._pending is not None)))
        assert lay is not None  # no error anywhere, so every rank has its layout
        if lay is not self._layout or prepared is not None:
            self._adopting = (lay, prepared)
            self._adopt(lay, prepared)
        self._adopting = None
        self._step_agreed(lay, model, is_model, pleaves)

    # -- one rank failing after the agreement ----------------------------------------------------
    def _collectives(self, lay: Layout, is_model: bool) -> tuple[str, ...]:
        """The kinds of the collectives an agreed step takes, in order (the same on every rank:
        they depend only on what the agreement compared)."""
        if self._det:
            exchange = self._DET_EXCHANGE
        else:
            exchange = tuple(f"{self._REDUCE} {dtype}" for dtype in ("float64", "float32")
                             if self._exchanged(lay, dtype))
        return (*exchange, *self._after_exchange(is_model))

    def _join(self, exc: BaseException) -> None:
        """This rank's step raised: it takes part in the collectives of the step it has not
        entered yet (with its own buffers; their results are not used) up to the next in-step
        agreement, which raises `exc` on every rank (the others: the same type, naming this
        rank). A failure after the step's last collective (the model's parameter_update, or the
        replicated step itself) stays on this rank; the next collective call sees it. A second
        failure while it catches up ends the job (_abort.out_of_step): the peers wait in a
        collective this rank can no longer tell."""
        done = self._done
        if done == _RAISED:  # raised by an agreement of the step: every rank raises it together
            return
        try:
            self._catch_up(exc, done)
        except BaseException as second:
            if second is not exc:  # a second failure (interrupt) amid the peers' collectives: no way back
                out_of_step(self._comm, exc, second)
            raise

    def _catch_up(self, exc: BaseException, done: int) -> None:
        """_join's collectives: those of the plan from `done` on, up to the agreement raising `exc`."""
        lay = self._step_layout
        if self._adopting is not None:  # what the agreement installs, as on every other rank
            self._adopt(*self._adopting)
            self._adopting = None
        first_gather = self._plan.index("gather") if "gather" in self._plan else -1
        for at in range(done, len(self._plan)):
            kind = self._plan[at]
            if kind == "agree":
                self._done = _RAISED
                agree(self._comm, exc, 0, self._message)  # raises on every rank
            elif kind in ("finite", "settle"):
                self._step_agree(exc)  # raises on every rank
            elif kind == "describe":  # the others describe their steps to raise a mismatch
                self._comm.allgather([("this step", f"{type(exc).__name__} raised")])
            elif kind == "alltoall":
                self._alltoall(lay)
            elif kind == "gather":  # the step's own buffer; a kept delta's: scratch bytes
                self._allgather(lay, self._gather_flat if at == first_gather else self._bufs.params)
            else:
                self._reduce(lay, kind.split()[1])

    def _step_agree(self, exc: Optional[BaseException]) -> None:
        """An agreement inside a step, in the cheapest message: raise on every rank if any rank failed."""
        done, self._done = self._done, _RAISED  # if it raises, it does so on every rank
        t = time.perf_counter()
        agree_flag(self._comm, exc, self._flag)
        self._done = done + 1
        self.timings["agree"] += time.perf_counter() - t

    def _settle(self, exc: Optional[BaseException], inplace: bool, gathers: bool = False) -> None:
        """The step's last collective: whether every rank got through its part; then what
        decides whether check_convergence() gathers moves on alike on every rank."""
        done, self._done = self._done, _RAISED  # (_step_agree, inline: this runs every step)
        t = time.perf_counter()
        agree_flag(self._comm, exc, self._flag)
        self.timings["agree"] += time.perf_counter() - t
        self._done = done + 1
        self._stepped, self._inplace, self._probe, self._probe_gathers = True, inplace, None, gathers

    def _alltoall(self, lay: Layout) -> None:
        """Every other rank's copy of this rank's shard into bufs.recv (this rank's own is not sent)."""
        self._done += 1
        self._comm.Alltoallv([self._src, (lay.send_counts, lay.displs), MPI.BYTE],
                             [self._bufs.recv, (lay.recv_counts, lay.recv_displs), MPI.BYTE])

    def _reduce_each(self, lay: Layout) -> None:
        """MPI's own sums (deterministic=False) of the step's plan, one per dtype region."""
        for kind in self._plan:
            if kind.startswith(self._REDUCE):
                self._reduce(lay, kind.split()[1])

    def _local_checks(self, model: Any, grad: Any, is_model: bool
                      ) -> tuple[Optional[Layout], Optional[BaseException], Any, Any]:
        """(layout of grad, local error, param leaves, what _adopt installs); packs grad into its
        send buffer. Modifies nothing a user sees (a fusedopt.optim rate drawn from its schedule
        is undone if the step does not happen)."""
        lay, changed = self._layout, None
        self._src = None
        try:
            if lay is not None:
                try:
                    self._src = self._grad_bytes(lay, grad)
                except (TypeError, ValueError) as exc:  # another layout, or bad input: a new plan tells
                    lay, changed = None, exc
            if lay is None:
                lay = Layout(_core.Plan(grad, "grad"), self._size, self._rank)
                self._src = self._grad_bytes(lay, grad)
            # The step's buffers, allocated here (a MemoryError is agreed on too); used only after
            # the agreement, which a failed step never passes.
            self._bufs = bufs = self._buffers_for(lay, not is_model)
            pleaves = None
            if not is_model:
                pleaves = lay.plan.flatten(model, "params")
                lay.pack.check(pleaves, "params", True)
            self._gather_flat = self._gather_target(lay, bufs, pleaves, is_model)
            prepared = self._ready(lay, changed)
            return lay, None, pleaves, prepared
        except Exception as exc:  # every local failure must reach the agreement
            return lay, exc, None, None

    def _agreement_value(self, lay: Layout, is_model: bool, count: Any, key: tuple[Any, ...]
                         ) -> tuple[int, tuple[str, ...]]:
        """(the step's hash: the layout, path kind and configuration, and the wrapped optimizer's
        fields; the plan of its collectives). All but the step count is hashed again only when
        one of the objects it is made of (`key`) is not the last step's (the plan depends on
        nothing else): the same objects hold the same values, and the memo keeps them alive."""
        memo, fresh = self._static, lay is not self._layout
        if (memo is None or memo[0] is not lay or memo[1] is not is_model or memo[2] is not fresh
                or len(key) != len(memo[3]) or not all(map(is_, key, memo[3]))):
            static, dynamic = self._fields(count, key)
            base = _fields.combined_hash(_fields.static_hash(lay.hash(self._config, is_model, not fresh), static),
                                         dynamic[1:])  # (the count, first, is mixed in below)
            memo = self._static = (lay, is_model, fresh, key, base, ("agree", *self._collectives(lay, is_model)))
        if type(count) is int:  # (with_count's common case, inline: this runs every step)
            return (memo[4] ^ (count * _fields.ODD)) & _fields.MASK, memo[5]
        return _fields.with_count(memo[4], count), memo[5]

    def _grad_bytes(self, lay: Layout, grad: Any) -> np.ndarray:
        """The flat bytes the collectives send: the caller's own memory for a tree of one
        plain C-contiguous leaf (nothing writes it), else the gradient packed into lay.send."""
        leaves = lay.plan.flatten(grad, "grad")
        flat = lay.pack.flat_view(leaves, "grad") if lay.single and self._grad_in_place else None
        if flat is None:
            lay.pack.pack(leaves, lay.send, "grad")
            return lay.send
        return flat

    def _buffers_for(self, lay: Layout, inplace: bool) -> Any:
        bufs = lay.bufs.get(inplace)
        if bufs is None:
            bufs = lay.bufs[inplace] = self._BUFFERS(lay, self._size, self._det, inplace)
        return bufs

    def _raise_mismatch(self, lay: Optional[Layout], is_model: bool, fields: Any) -> None:
        """All ranks: their steps' hashes differ. Every rank's fields by name, all-gathered; the
        same ValueError on every rank names each that differs and the ranks of each value."""
        assert lay is not None and fields is not None
        mine = [("path", "paysage (a model)" if is_model else "in place (params)"),
                ("layout", "the agreed one" if lay is self._layout else "a new one")]
        mine += [(f"grad leaf {p or '(root)'}", f"{d} {tuple(shape)}")
                 for p, d, shape in zip(lay.paths, lay.dtypes, lay.shapes)]
        mine += [("shard_state", repr(self.shard_state)), ("deterministic", repr(self._det)),
                 ("world size", repr(self._size))]
        mine += _fields.describe(self._STATIC_NAMES, *fields)
        self._done += 1
        every = self._comm.allgather(mine)
        raise ValueError("DataParallel: the ranks differ in what a step needs alike (nothing was changed): "
                         + _fields.mismatch_message(every))

    def _prepare(self, lay: Layout, changed: Optional[BaseException]) -> Any:
        """What _adopt installs after the agreement on a new layout, checked now (an error here
        is agreed on): the shard of a waiting state and (fusedopt.optim) the pieces' mask."""
        if self._layout is not None and self._holds_moments():
            raise changed if changed is not None else ValueError(
                "the gradient's structure differs from the optimizer's moments (call reset() first)")
        return self._prepare_new(lay)

    def _adopt(self, lay: Layout, prepared: Any) -> None:
        """Every rank, after the agreement: install what _prepare checked (cannot fail)."""
        if prepared is not None:
            self._install(lay, prepared)
        self._layout = lay

    def _fixed_order_average(self, lay: Layout, out: np.ndarray, fuse: bool = False) -> None:
        """Every other rank's copy of this rank's shard (all-to-all; this rank's own is not sent
        to itself), summed with it in rank order and divided by N in one native pass, into
        `out` (the shard's bytes); with `fuse`, left to the step's kernel (self._fused)."""
        bufs, src = self._bufs, self._src
        t0 = time.perf_counter()
        self._alltoall(lay)
        t1 = time.perf_counter()
        rows = list(bufs.rows)  # this step's: it holds the caller's gradient
        rows[self._rank] = src[lay.lo:lay.lo + lay.counts[self._rank]]
        if fuse:
            self._fused = (rows, out, float(self._size))
        else:
            _core.rank_average(rows, out, lay.part32.offset, lay.part32.count,
                               lay.part64.offset, lay.part64.count, self._size)
        self.timings["exchange"] += t1 - t0
        self.timings["average"] += time.perf_counter() - t1

    def _native_average(self, buf: np.ndarray, lo32: int, n32: int, lo64: int, n64: int, t0: float) -> None:
        """After MPI's own sums (since t0) in `buf`: their division by N, or left to the kernel."""
        t1 = time.perf_counter()
        if self._fusable():
            self._fused = ([buf], buf, float(self._size))
        else:
            _core.rank_average([buf], buf, lo32, n32, lo64, n64, self._size)
        self.timings["exchange"] += t1 - t0
        self.timings["average"] += time.perf_counter() - t1

    def _fusable(self) -> bool:
        """Whether the wrapped optimizer's kernel can average the rows itself: fusedopt.optimizers'
        own update() (fusedopt.optim's kernels take no rows), and only when no finiteness check
        of the average must be agreed on before the step."""
        return self._kernel_averages and not self._opt.check_finite

    def _allgather(self, lay: Layout, flat: np.ndarray) -> None:
        """Every rank's shard of `flat` into it (counted among a step's collectives)."""
        self._done += 1
        t0 = time.perf_counter()
        if lay.gather_blocks:
            self._comm.Allgather(MPI.IN_PLACE, [flat[:lay.gather_blocks], MPI.BYTE])
        else:
            self._comm.Allgatherv(MPI.IN_PLACE, [flat, (lay.counts, lay.displs), MPI.BYTE])
        self.timings["gather"] += time.perf_counter() - t0

    @staticmethod
    def _finite_error(tree: Any) -> Optional[FloatingPointError]:
        """With check_finite: this rank's part of the average non-finite (agreed on before any step)."""
        if all(np.isfinite(leaf).all() for leaf in _leaves(tree)):
            return None
        return FloatingPointError("the averaged gradient has a NaN or Inf (check_finite=True); nothing was modified")
