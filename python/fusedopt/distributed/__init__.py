"""Data-parallel training over MPI, bit-reproducible at any number of processes.

``DataParallel(optimizer, comm)`` wraps a fusedopt optimizer. Every rank calls
``update(model_or_params, local_grad)`` with its own gradient; the step taken
is the wrapped optimizer's step on the average ``(((g0 + g1) + g2) + ...) / N``
(in rank order, rounded to each leaf's dtype). See docs/distributed.md.

Launch with ``mpiexec -n N python train.py``; needs the ``[mpi]`` extra
(``pip install "fusedopt[mpi]"``: mpi4py and the mpich wheel).
"""
from __future__ import annotations

import copy
import sys
import time
from collections.abc import Mapping
from typing import Any, Optional, cast

import numpy as np

try:
    from mpi4py import MPI
except ImportError as _exc:  # pragma: no cover - exercised only without mpi4py
    raise ImportError("fusedopt.distributed needs mpi4py and an MPI library: "
                      "pip install 'fusedopt[mpi]' (mpi4py and the mpich wheel)") from _exc

from .. import _core, optimizers
from . import _optim as optim_family
from . import _abort, _checkpoint, _fields, _layout
from ._abort import abort_on_uncaught
from ._agree import agree, agree_flag, try_local
from ._layout import Layout, aligned_bytes

__all__ = ["DataParallel", "abort_on_uncaught"]


class _Forward:
    """The model of a shard step on the paysage path: all-gathers the delta pieces it is handed
    and hands the whole delta to the caller's model, all inside the wrapped optimizer's step,
    which commits only after this returned: a model that raises leaves the step undone."""

    __slots__ = ("dp", "lay", "model", "delta", "entered", "seconds")

    def __init__(self, dp: "DataParallel", lay: Layout, model: Any) -> None:
        self.dp, self.lay, self.model = dp, lay, model
        self.delta: Any = None
        self.entered = 0.0  # when the step's kernel had run
        self.seconds = 0.0  # spent in the caller's model

    def parameter_update(self, pieces: Any) -> None:
        self.entered = time.perf_counter()
        lay, dp = self.lay, self.dp
        flat = dp._gather_flat
        lay.shard_pack.pack(pieces, flat[lay.lo:lay.hi], "delta")
        dp._allgather(lay, flat)
        dp._settle(None, False)  # a rank that failed before this raises here on every rank: nothing commits
        delta = lay.tree(flat)
        t = time.perf_counter()
        self.model.parameter_update(delta)
        self.seconds = time.perf_counter() - t
        self.delta = delta


class _Sink:
    """A model that ignores its delta (the convergence probe's)."""

    def parameter_update(self, delta: Any) -> None:
        pass


_UNSET = object()  # an attribute the instance dict did not hold
_RAISED = -1  # DataParallel._done once an agreement of the step raised on every rank


def _holds_moments(opt: Any) -> bool:
    if _is_optim(opt):
        return bool(opt.state_arrays())
    mem = getattr(opt, "memory", None)
    return mem is not None and (mem.mean_gradient is not None or mem.mean_square_gradient is not None)


def _check_no_clip(opt: Any) -> None:
    if opt.max_grad_norm is not None:
        raise TypeError(f"{type(opt).__name__}(max_grad_norm=...) needs the whole gradient's norm: wrap it "
                        "with shard_state=False (each rank then holds every moment)")


def _is_optim(opt: Any) -> bool:
    """A fusedopt.optim optimizer (step(params, grads)); imported only when there is one."""
    optim = sys.modules.get("fusedopt.optim")  # not loaded: `opt` cannot be one of its optimizers
    return optim is not None and isinstance(opt, optim.Optimizer)


def _state_of(obj: Any) -> dict[str, Any]:
    return cast(dict[str, Any], obj.state_dict())


def _leaves(tree: Any) -> list[np.ndarray]:
    return list(_core.Plan(tree, "tree").flatten(tree)) if tree is not None else []


class _Buffers:
    """The wrapper's flat byte buffers for one layout and path kind (allocated once)."""

    def __init__(self, lay: Layout, size: int, shard: bool, deterministic: bool, inplace: bool) -> None:
        n = lay.shard_nbytes
        # (Any: which buffers exist depends on the modes; the wrapper uses only those of its own.)
        recv = aligned_bytes((size - 1) * n) if deterministic else None
        self.recv: Any = recv  # the other ranks' copies of this shard, at lay.recv_displs
        # The rows of the fixed-order sum in rank order; this rank's own slot (None here) is its
        # gradient's bytes, read where they are (see DataParallel._fixed_order_average).
        self.rows: list[Any] = [] if recv is None else [
            None if r == lay.rank else recv[d:d + n] for r, d in enumerate(lay.recv_displs)]
        self.params: Any = lay.gather_buffer() if shard and inplace else None
        self.avg: Any
        self.avg_pieces: Any
        self.param_pieces: Any
        self.avg_tree: Any
        if shard:
            self.avg = aligned_bytes(n)  # the averaged shard
            self.avg_pieces = lay.shard_pieces(self.avg)
            params: Any = self.params
            self.param_pieces = lay.shard_pieces(params[lay.lo:lay.hi]) if inplace else None
        else:
            # Deterministic: every rank averages its shard into its range, then all are gathered;
            # otherwise the allreduce works in the send buffer itself.
            self.avg = lay.gather_buffer() if deterministic else lay.send
            self.avg_tree = lay.tree(self.avg)


def _checked_comm(comm: Any) -> Any:
    if comm is None:
        return MPI.COMM_WORLD
    if not isinstance(comm, MPI.Comm):
        raise TypeError(f"comm must be an mpi4py communicator (MPI.Intracomm: MPI.COMM_WORLD or one made "
                        f"from it), got {type(comm).__name__}")
    if comm == MPI.COMM_NULL:
        raise ValueError("comm is MPI.COMM_NULL: this process is not in the communicator (make the DataParallel "
                         "only on the processes of the communicator)")
    if not isinstance(comm, MPI.Intracomm):
        raise TypeError(f"comm must be an intracommunicator (MPI.Intracomm), got {type(comm).__name__}")
    return comm


class DataParallel:
    """A fusedopt optimizer stepped data-parallel over the ranks of an MPI communicator.

    Every rank must call the collective methods (``update``, ``state_dict``,
    ``load_state_dict``, and ``check_convergence`` on the sharded in-place path)
    in the same order, as with any MPI program.

    Args:
        optimizer: a ``fusedopt.optimizers`` optimizer (Gradient, Momentum,
            RMSProp, ADAM; stepped with ``update``) or a ``fusedopt.optim`` one
            (SGD, Adam, AdamW, RMSprop, Adagrad, Lion; stepped with ``step``;
            with ``max_grad_norm`` only replicated), built with the same
            arguments on every rank. With ``shard_state=True`` it steps this rank's shard: read its
            state through this wrapper (``state_dict()``), not directly.
        comm: the communicator (default ``MPI.COMM_WORLD``).
        shard_state: each rank keeps and steps 1/N of the moments (ZeRO
            stage 1); the stepped parameters (in-place path) or the delta
            (paysage path) are then all-gathered. False: every rank holds all
            moments and steps the whole tree.
        deterministic: the average is summed in rank order by fusedopt (an
            all-to-all of gradient shards, then one native pass), so every
            result is bit-identical to a single process stepped with that
            average, at any N. False: MPI's own reduce-scatter / allreduce
            (ranks still agree with each other; bits may differ from a
            single process and between rank counts).
    """

    def __init__(self, optimizer: Any, comm: Any = None, *, shard_state: bool = True,
                 deterministic: bool = True) -> None:
        """The arguments are explained in the class documentation, help(DataParallel)."""
        self._is_optim = _is_optim(optimizer)
        if not (self._is_optim or isinstance(optimizer, optimizers.Optimizer)):
            raise TypeError(f"DataParallel wraps a fusedopt.optimizers or fusedopt.optim optimizer, "
                            f"got {type(optimizer).__name__}")
        if self._is_optim and shard_state:
            _check_no_clip(optimizer)
        self._opt: Any = optimizer
        self._comm = _checked_comm(comm)
        self._size, self._rank = self._comm.Get_size(), self._comm.Get_rank()
        self._shard, self._det = bool(shard_state), bool(deterministic)
        self._config = (type(optimizer).__name__, self._shard, self._det, self._size)
        self._layout: Optional[Layout] = None   # the layout all ranks agreed on
        self._bufs: Any = None                   # the _Buffers of the layout and path kind in use
        # Loaded state (moments) awaiting a layout; sharded, a state the optimizer already holds
        # (stepped before it was wrapped) waits the same way, to be cut into this rank's shard.
        self._pending: Optional[dict[str, Any]] = self._held_state() if self._shard else None
        self._drawn: Any = None                  # fusedopt.optim during a step: (its rate, the schedule's undo)
        self._static: Any = None                 # (the static fields, their hash) of the last step
        self._user_mask: Optional[tuple[Any]] = None     # fusedopt.optim sharded: the caller's mask,
        self._piece_mask: Any = None                     # the mask of the pieces made from it,
        self._flags: list[bool] = []                     # and the whole tree's flags
        self._stepped = False                   # a step since creation / the last load
        self._inplace = False                   # the last step's path: parameters in place, or a model
        self._delta: Any = None
        self._delta_shard: Any = None           # sharded in-place: this rank's delta pieces
        self._delta_flats: list[np.ndarray] = []  # the buffers the paysage path's deltas view (two at most)
        self._probe: Any = None                 # a Gradient holding the last delta's convergence sums
        self._probe_gathers = False             # whether making it gathers the delta (collective)
        self._src: Any = None                   # during a step: the flat bytes of this rank's gradient
        # During a step: (rows, base, N) whose average the wrapped optimizer's kernel computes
        # itself (State.average_next) instead of a separate pass writing it to base; or None.
        self._fused: Any = None
        # A subclass's own update may read the gradient in Python: only Optimizer.update's native
        # step can be handed rows (its memory is a GradientMemory, checked on assignment).
        self._kernel_averages = not self._is_optim and type(optimizer).update is optimizers.Optimizer.update
        self._message = np.empty(3, np.int64)  # the step's agreement message, reused
        self._flag = [bytearray(8), MPI.INT64_T]  # the message of the agreements inside a step (agree_flag)
        # During a step: the collectives every rank takes (their kinds, in order), how many this
        # rank has entered (_RAISED: an agreement of the step raised on every rank), and the flat
        # buffer its (first) all-gather writes; see _join.
        self._plan: tuple[str, ...] = ()
        self._done = 0
        self._gather_flat: Any = None
        self._adopting: Any = None  # (layout, prepared) while _adopt installs them
        self._step_layout: Any = None  # the layout of the step's collectives
        # (params leaf, layout, its flat bytes, this rank's pieces) of the last single-leaf step,
        # so that the same parameter array is not viewed again every step (it is kept alive).
        self._direct: Any = None
        #: Cumulative seconds per phase of update() (for benchmarks): local checks and the gradient
        #: pack, the agreement, the gradient exchange, the native average, the optimizer step, the
        #: all-gather, and copies between flat buffers and trees (parameters, delta).
        self.timings = {"pack": 0.0, "agree": 0.0, "exchange": 0.0, "average": 0.0, "step": 0.0, "gather": 0.0,
                        "copy": 0.0}
        _abort.install()  # one rank's uncaught exception ends the job (docs/launching.md)

    def _held_state(self) -> Optional[dict[str, Any]]:
        """The state an optimizer held before it was wrapped with shard_state (its moments go:
        it will step this rank's pieces), or None."""
        opt = self._opt
        if self._is_optim:
            return _state_of(opt) if optim_family.leaf_paths(_state_of(opt)) else None
        mem = getattr(opt, "memory", None)
        if mem is None or not (_holds_moments(opt) or mem._pending is not None):
            return None
        held = _state_of(mem)
        opt.reset()
        return held

    # -- passthrough of the wrapped optimizer ---------------------------------------------
    @property
    def optimizer(self) -> Any:
        """The wrapped optimizer (with shard_state it holds this rank's shard of the moments)."""
        return self._opt

    @property
    def comm(self) -> Any:
        return self._comm

    @property
    def shard_state(self) -> bool:
        return self._shard

    @property
    def deterministic(self) -> bool:
        return self._det

    @property
    def stepsize(self) -> Any:
        """The wrapped optimizer's stepsize schedule."""
        return self._opt.stepsize

    @stepsize.setter
    def stepsize(self, value: Any) -> None:
        self._opt.stepsize = value

    @property
    def step_count(self) -> int:
        return int(self._opt.step_count)

    @property
    def delta(self) -> Any:
        """The last step's whole delta tree on every rank (paysage path, or keep_delta on the
        wrapped optimizer); None otherwise."""
        return self._delta if self._shard else self._delta_source

    def update_lr(self) -> None:
        """Advance the wrapped optimizer's schedule (every rank does the same)."""
        self._opt.update_lr()

    @property
    def _delta_source(self) -> Any:
        return None if self._is_optim else self._opt.delta

    def reset(self) -> None:
        """Forget the moments (as the wrapped optimizer's reset())."""
        self._opt.reset()
        self._pending = None

    @property
    def state_nbytes(self) -> int:
        """Bytes of optimizer state (moments, slots) this rank holds: about 1/N of the whole
        with shard_state (at most full / N plus 64 bytes per moment), all of it without."""
        if self._is_optim:
            trees = list(self._opt.state_arrays().values())
        else:
            mem = getattr(self._opt, "memory", None)
            trees = [] if mem is None else [mem.mean_gradient, mem.mean_square_gradient]
        return sum(leaf.nbytes for tree in trees for leaf in _leaves(tree))

    # -- the step ----------------------------------------------------------------------------
    def update(self, model: Any, grad: Any) -> None:
        """One data-parallel step (collective): the wrapped optimizer's step on the average of
        every rank's `grad`.

        Args:
            model: a paysage model (``parameter_update(delta)``, which gets the whole delta on
                every rank) or a tree of writeable C-contiguous arrays, stepped in place. The same
                kind on every rank, holding the same values (data parallelism).
            grad: this rank's gradient, a tree with the same layout on every rank.

        Raises:
            TypeError, ValueError: bad input or layouts that differ across ranks; raised on
                every rank, with nothing modified anywhere.
            FloatingPointError: with the optimizer's check_finite, a non-finite average.
        """
        if self._is_optim:
            raise TypeError(f"fusedopt.optim's {type(self._opt).__name__} steps with step(params, grads)")
        self._step(model, grad)

    def step(self, params: Any, grads: Any) -> None:
        """One data-parallel step of a wrapped ``fusedopt.optim`` optimizer (collective): its
        ``step(params, average of every rank's grads)``; errors as in update()."""
        if not self._is_optim:
            raise TypeError(f"fusedopt.optimizers' {type(self._opt).__name__} steps with update(model, grad)")
        self._step(params, grads)

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
        is_model = not self._is_optim and hasattr(model, "parameter_update")
        lay, exc, pleaves, prepared = self._local_checks(model, grad, is_model)
        fields, value = None, 0
        if exc is None:
            assert lay is not None
            fields = self._fields() if self._is_optim else _fields.paysage(self._opt, self._pending is not None)
            # From the agreement on, every rank takes the same collectives (the plan's), and nothing
            # fails on one rank only for an input the checks above could see. What still can (an
            # interrupt, a MemoryError, a subclass's own update) is joined to them: see _join.
            value, self._plan = self._agreement_value(lay, is_model, fields)
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
            self._raise_mismatch(lay, is_model, fields)
        assert lay is not None  # no error anywhere, so every rank has its layout
        if lay is not self._layout or prepared is not None:
            self._adopting = (lay, prepared)
            self._adopt(lay, prepared)
        self._adopting = None
        if self._shard:
            self._average_shard(lay)
            if self._opt.check_finite:  # agreed before any step
                self._step_agree(self._finite_error(self._bufs.avg_pieces))
            if is_model:
                self._sharded_paysage_step(lay, model)
            else:
                self._sharded_inplace_step(lay, pleaves)
        else:
            self._average_replicated(lay)
            self._settle(self._finite_error(self._bufs.avg_tree) if self._opt.check_finite else None, not is_model)
            t = time.perf_counter()
            if self._is_optim:
                self._optim_step(model, self._bufs.avg_tree)
            else:
                self._update_wrapped(model, self._bufs.avg_tree)
            self.timings["step"] += time.perf_counter() - t

    # -- one rank failing after the agreement ----------------------------------------------------
    def _collectives(self, lay: Layout, is_model: bool) -> tuple[str, ...]:
        """The kinds of the collectives an agreed step takes, in order (the same on every rank:
        they depend only on what the agreement compared)."""
        if self._det:
            exchange = ("alltoall", "gather") if not self._shard else ("alltoall",)
        else:
            kind = "reduce_scatter" if self._shard else "allreduce"
            exchange = tuple(f"{kind} {dtype}" for dtype in ("float64", "float32") if self._exchanged(lay, dtype))
        if not self._shard:
            return (*exchange, "settle")
        finite = ("finite",) if self._opt.check_finite else ()
        keep = not is_model and not self._is_optim and bool(self._opt.__dict__.get("keep_delta", False))
        return (*exchange, *finite, "gather", *(("gather",) if keep else ()), "settle")

    def _exchanged(self, lay: Layout, dtype: str) -> bool:
        """Whether MPI's own reduction (deterministic=False) has bytes of this dtype to reduce."""
        lo, hi = lay.region(dtype)
        return bool(sum(lay.region_counts(dtype))) if self._shard else hi > lo

    def _join(self, exc: BaseException) -> None:
        """This rank's step raised: it takes part in the collectives of the step it has not
        entered yet (with its own buffers; their results are not used) up to the next in-step
        agreement, which raises `exc` on every rank (the others: the same type, naming this
        rank). A failure after the step's last collective (the model's parameter_update, or the
        replicated step itself) stays on this rank; the next collective call sees it."""
        done, lay = self._done, self._step_layout
        if done == _RAISED:  # raised by an agreement of the step: every rank raises it together
            return
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
                self._reduce(lay, kind)

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

    def _reduce(self, lay: Layout, kind: str) -> None:
        """MPI's own sum of one dtype's region (deterministic=False): this rank's shard of it
        into bufs.avg (sharded), or all of it in lay.send (replicated)."""
        self._done += 1
        op, dtype = kind.split()
        mpi_type = MPI.DOUBLE if dtype == "float64" else MPI.FLOAT
        lo, hi = lay.region(dtype)
        if op == "allreduce":
            src = MPI.IN_PLACE if self._src is lay.send else [self._src[lo:hi], mpi_type]
            self._comm.Allreduce(src, [lay.send[lo:hi], mpi_type], op=MPI.SUM)
            return
        part, item = (lay.part64, 8) if dtype == "float64" else (lay.part32, 4)
        recv = self._bufs.avg[part.offset:part.offset + item * part.count]
        self._comm.Reduce_scatter([self._src[lo:hi], mpi_type], [recv, mpi_type], lay.region_counts(dtype),
                                  op=MPI.SUM)

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
            opt = self._opt
            if self._is_optim and self._shard:
                _check_no_clip(opt)
            if not self._is_optim and opt.lr is None and getattr(opt.stepsize, "value", None) is None:
                raise TypeError(f"call update_lr() before update(): the schedule "
                                f"{type(opt.stepsize).__name__} has no current value")
            # (the common case, a step on the agreed layout of a fusedopt.optimizers one, needs nothing)
            prepared = None if lay is self._layout and not self._is_optim else self._prepare(lay, changed)
            if self._is_optim:
                self._drawn = optim_family.draw_lr(opt)  # last: nothing after it fails
            return lay, None, pleaves, prepared
        except Exception as exc:  # every local failure must reach the agreement
            return lay, exc, None, None

    def _fields(self) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        """(static, dynamic) fields of the wrapped optimizer that every rank must hold alike."""
        pending = self._pending is not None
        if self._is_optim:
            return _fields.optim(self._opt, None if self._drawn is None else self._drawn[0], pending)
        return _fields.paysage(self._opt, pending)

    def _agreement_value(self, lay: Layout, is_model: bool, fields: tuple[Any, ...]) -> tuple[int, tuple[str, ...]]:
        """(the step's hash: the layout, path kind and configuration, and the wrapped optimizer's
        fields; the plan of its collectives), the static part of both made again only when it
        changes (the plan depends on nothing else)."""
        static, dynamic = fields
        memo, fresh = self._static, lay is not self._layout
        if memo is None or memo[0] is not lay or memo[1] != (is_model, fresh) or memo[2] != static:
            memo = self._static = (lay, (is_model, fresh), static,
                                   _fields.static_hash(lay.hash(self._config, is_model, not fresh), static),
                                   ("agree", *self._collectives(lay, is_model)))
        return _fields.combined_hash(memo[3], dynamic), memo[4]

    def _undraw(self) -> None:
        if self._drawn is not None:
            optim_family.undraw_lr(self._opt, self._drawn)
            self._drawn = None

    def _optim_step(self, params: Any, grads: Any) -> None:
        """The wrapped fusedopt.optim optimizer's step at the rate drawn (and agreed) before."""
        optim_family.step_at(self._opt, self._drawn[0], params, grads)
        self._drawn = None  # taken: the schedule stays where the step left it

    def _grad_bytes(self, lay: Layout, grad: Any) -> np.ndarray:
        """The flat bytes the collectives send: the caller's own memory for a tree of one
        plain C-contiguous leaf (nothing writes it), else the gradient packed into lay.send."""
        leaves = lay.plan.flatten(grad, "grad")
        # MPI's out-of-place Allreduce (replicated, not deterministic) first copies its send
        # buffer into the result: packing is the same copy, and the collective then runs in place.
        direct = lay.single and (self._det or self._shard)
        flat = lay.pack.flat_view(leaves, "grad") if direct else None
        if flat is None:
            lay.pack.pack(leaves, lay.send, "grad")
            return lay.send
        return flat

    def _gather_target(self, lay: Layout, bufs: _Buffers, pleaves: Any, is_model: bool) -> Any:
        """The flat buffer the step's (first) all-gather writes: the delta's (sharded paysage
        path), the parameters' (sharded in-place: the caller's array itself when it can be),
        the average's (replicated, deterministic), or None (no all-gather)."""
        if not self._shard:
            return bufs.avg if self._det else None
        if is_model:
            return self._delta_buffer(lay)
        direct = self._direct_params(lay, pleaves) if lay.single else None
        return bufs.params if direct is None else direct[0]

    def _buffers_for(self, lay: Layout, inplace: bool) -> _Buffers:
        bufs = lay.bufs.get(inplace)
        if bufs is None:
            bufs = lay.bufs[inplace] = _Buffers(lay, self._size, self._shard, self._det, inplace)
        return bufs

    def _raise_mismatch(self, lay: Optional[Layout], is_model: bool, fields: Any) -> None:
        """All ranks: their steps' hashes differ. Every rank's fields by name, all-gathered; the
        same ValueError on every rank names each that differs and the ranks of each value."""
        assert lay is not None and fields is not None
        mine = [("path", "paysage (a model)" if is_model else "in place (params)"),
                ("layout", "the agreed one" if lay is self._layout else "a new one")]
        mine += [(f"grad leaf {p or '(root)'}", f"{d} {tuple(shape)}")
                 for p, d, shape in zip(lay.paths, lay.dtypes, lay.shapes)]
        mine += [("shard_state", repr(self._shard)), ("deterministic", repr(self._det)),
                 ("world size", repr(self._size))]
        names = _fields.OPTIM_STATIC if self._is_optim else _fields.PAYSAGE_STATIC
        mine += _fields.describe(names, *fields)
        self._done += 1
        every = self._comm.allgather(mine)
        raise ValueError("DataParallel: the ranks differ in what a step needs alike (nothing was changed): "
                         + _fields.mismatch_message(every))

    def _prepare(self, lay: Layout, changed: Optional[BaseException]) -> Any:
        """What _adopt installs after the agreement, checked now (an error here is agreed on):
        for a new layout, the shard of a waiting state and (fusedopt.optim) the pieces' mask;
        for the agreed one, a mask the caller assigned since the last step."""
        opt = self._opt
        if lay is self._layout:
            if self._is_optim and self._shard and opt.weight_decay_mask is not self._piece_mask:
                return None, self._mask_for(lay)
            return None
        if self._layout is not None and _holds_moments(opt):
            raise changed if changed is not None else ValueError(
                "the gradient's structure differs from the optimizer's moments (call reset() first)")
        if not self._shard:
            return None
        if self._is_optim:
            shard = None
            if self._pending is not None:
                shard = optim_family.shard_state(self._pending, lay)
                probe = copy.deepcopy(opt)
                probe.reset()
                probe.load_state_dict(shard)  # what _adopt does, on a copy
            return shard, self._mask_for(lay)
        return None if self._pending is None else self._full_moments(lay, self._pending)

    def _adopt(self, lay: Layout, prepared: Any) -> None:
        """Every rank, after the agreement: install what _prepare checked (cannot fail)."""
        if lay is self._layout:
            if prepared is not None:
                self._set_mask(prepared[1])
            return
        opt = self._opt
        if self._is_optim and self._shard:
            shard, mask = prepared
            if shard is not None:
                opt.reset()
                opt.load_state_dict(shard)
                self._pending = None
            self._set_mask(mask)
        elif prepared is not None:
            self._install_pieces(lay, *prepared)
            self._pending = None
        self._layout = lay

    def _mask_for(self, lay: Layout) -> tuple[Any, list[bool], Any]:
        """(the caller's weight-decay mask, its flags over the whole tree, the mask of this
        rank's pieces) of a fusedopt.optim optimizer stepping pieces."""
        opt = self._opt
        user = self._user_mask
        if user is None or opt.weight_decay_mask is not self._piece_mask:
            user = (opt.weight_decay_mask,)  # the caller's (None is a valid mask)
        probe = copy.deepcopy(opt)
        probe.weight_decay_mask = user[0]
        flags = optim_family.whole_tree_flags(probe, lay)
        return user, flags, optim_family.piece_mask(lay, flags)

    def _set_mask(self, mask: tuple[Any, list[bool], Any]) -> None:
        self._user_mask, self._flags, self._piece_mask = mask
        self._opt.weight_decay_mask = self._piece_mask

    # -- the average -----------------------------------------------------------------------
    def _average_shard(self, lay: Layout) -> None:
        """This rank's shard of the average into bufs.avg."""
        if self._det:
            self._fixed_order_average(lay, self._bufs.avg, self._fusable())
            return
        bufs = self._bufs
        t0 = time.perf_counter()
        for kind in self._plan:
            if kind.startswith("reduce_scatter"):
                self._reduce(lay, kind)
        t1 = time.perf_counter()
        if self._fusable():
            self._fused = ([bufs.avg], bufs.avg, float(self._size))
        else:
            _core.rank_average([bufs.avg], bufs.avg, lay.part32.offset, lay.part32.count,
                               lay.part64.offset, lay.part64.count, self._size)
        self.timings["exchange"] += t1 - t0
        self.timings["average"] += time.perf_counter() - t1

    def _average_replicated(self, lay: Layout) -> None:
        """The whole average into bufs.avg on every rank."""
        bufs = self._bufs
        if self._det:
            self._fixed_order_average(lay, bufs.avg[lay.lo:lay.hi])
            self._allgather(lay, bufs.avg)
            return
        t0 = time.perf_counter()
        for kind in self._plan:
            if kind.startswith("allreduce"):
                self._reduce(lay, kind)
        t1 = time.perf_counter()
        if self._fusable():
            self._fused = ([lay.send], lay.send, float(self._size))
        else:
            _core.rank_average([lay.send], lay.send, lay.split, (lay.data - lay.split) // 4, 0, lay.split // 8,
                               self._size)
        self.timings["exchange"] += t1 - t0
        self.timings["average"] += time.perf_counter() - t1

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

    def _fusable(self) -> bool:
        """Whether the wrapped optimizer's kernel can average the rows itself: fusedopt.optimizers'
        own update() (fusedopt.optim's kernels take no rows), and only when no finiteness check
        of the average must be agreed on before the step."""
        return self._kernel_averages and not self._opt.check_finite

    def _update_wrapped(self, target: Any, grad: Any) -> None:
        """The wrapped optimizer's update(target, grad); with rows pending, its kernel reads each
        leaf of grad as their average (the same bits as the separate pass)."""
        fused, self._fused = self._fused, None
        if fused is None:
            self._opt.update(target, grad)
            return
        native = self._opt._memory._native
        native.average_next(*fused)  # the native step consumes them, whatever happens there
        try:
            self._opt.update(target, grad)  # Optimizer.update itself (_fusable): its native call takes them
        except BaseException:
            native.average_next(None, None, 1.0)  # raised before the native call: not kept either
            raise

    def _allgather(self, lay: Layout, flat: np.ndarray) -> None:
        """Every rank's shard of `flat` into it (counted among a step's collectives)."""
        self._done += 1
        t0 = time.perf_counter()
        if lay.gather_blocks:
            self._comm.Allgather(MPI.IN_PLACE, [flat[:lay.gather_blocks], MPI.BYTE])
        else:
            self._comm.Allgatherv(MPI.IN_PLACE, [flat, (lay.counts, lay.displs), MPI.BYTE])
        self.timings["gather"] += time.perf_counter() - t0

    def _count_copies(self, t0: float, since: float) -> None:
        """Time since t0 that was neither the all-gather nor an agreement (`since`: their sum
        then): copies between the flat buffer and trees."""
        self.timings["copy"] += time.perf_counter() - t0 - (self.timings["gather"] + self.timings["agree"] - since)

    @staticmethod
    def _finite_error(tree: Any) -> Optional[FloatingPointError]:
        """With check_finite: this rank's part of the average non-finite (agreed on before any step)."""
        if all(np.isfinite(leaf).all() for leaf in _leaves(tree)):
            return None
        return FloatingPointError("the averaged gradient has a NaN or Inf (check_finite=True); nothing was modified")

    # -- sharded steps -------------------------------------------------------------------------
    def _sharded_paysage_step(self, lay: Layout, model: Any) -> None:
        t0, since = time.perf_counter(), self.timings["gather"] + self.timings["agree"]
        forward = _Forward(self, lay, model)
        self._update_wrapped(forward, self._bufs.avg_pieces)
        self._delta = forward.delta
        self.timings["step"] += forward.entered - t0
        self._count_copies(forward.entered, since)
        self.timings["copy"] -= forward.seconds  # the caller's model is no phase of the wrapper's

    def _sharded_inplace_step(self, lay: Layout, pleaves: Any) -> None:
        bufs, opt = self._bufs, self._opt
        t0, since = time.perf_counter(), self.timings["gather"] + self.timings["agree"]
        flat = self._gather_flat  # (chosen before the agreement)
        direct = flat is not bufs.params
        if not direct:  # stepped in a flat copy, then copied back
            pieces = bufs.param_pieces
            lay.pack.pack(pleaves, flat[lay.lo:lay.hi], "params", lay.lo, lay.hi)
        else:  # the caller's array itself: its shard stepped in place, then gathered in place
            pieces = self._direct[3]
        t1 = time.perf_counter()
        keep = False
        if self._is_optim:
            self._optim_step(pieces, bufs.avg_pieces)
        else:
            # This rank's delta pieces, for check_convergence and `delta`: the setting is set in
            # the instance dict, where the native step reads it (True needs no check) and the
            # caller's checked value goes back.
            settings = opt.__dict__
            saved = settings.get("keep_delta", _UNSET)
            keep = saved is not _UNSET and bool(saved)
            settings["keep_delta"] = True
            try:
                self._update_wrapped(pieces, bufs.avg_pieces)
            finally:
                if saved is _UNSET:
                    del settings["keep_delta"]
                else:
                    settings["keep_delta"] = saved
            self._delta_shard = opt.delta
        t2 = time.perf_counter()
        self.timings["step"] += t2 - t1
        self._allgather(lay, flat)
        delta = None
        if keep:
            delta = lay.gather_buffer(zero=False)
            lay.shard_pack.pack(list(self._delta_shard), delta[lay.lo:lay.hi], "delta")
            self._allgather(lay, delta)
        self._settle(None, True, not keep)  # a rank that failed before this raises here on every rank
        if not direct:
            lay.pack.unpack(flat, pleaves, "params")
        self._delta = None if delta is None else lay.tree(delta)
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

    def _delta_buffer(self, lay: Layout) -> np.ndarray:
        """The flat buffer of this step's delta: one of the last two again when nothing holds it
        any more (no array of that delta is alive; the last committed delta, `delta`, still
        holds its own, so a step that fails keeps it), else a fresh one. A delta a model kept
        is never overwritten; reuse spares a large delta its page faults every step."""
        for flat in self._delta_flats:
            # NumPy points every view at the array owning the memory, so the owner's references
            # count the views: none alive leaves `flat`'s own and getrefcount's argument.
            if flat.nbytes == lay.gather_nbytes and sys.getrefcount(flat.base) == 2:
                return flat
        flat = lay.gather_buffer(zero=False)
        self._delta_flats = [flat, *self._delta_flats[:1]]
        return flat

    def _gather_delta(self, lay: Layout) -> Any:
        """The whole delta tree from every rank's delta pieces (collective)."""
        flat = lay.gather_buffer(zero=False)
        lay.shard_pack.pack(list(self._delta_shard), flat[lay.lo:lay.hi], "delta")
        self._allgather(lay, flat)
        return lay.tree(flat)

    def _gather_pieces(self, lay: Layout, pieces: Any) -> Any:
        """A whole tree from every rank's pieces of it (collective)."""
        flat = lay.gather_buffer(zero=False)
        lay.shard_pack.pack(list(pieces), flat[lay.lo:lay.hi], "moment")
        self._allgather(lay, flat)
        return lay.tree(flat)

    # -- convergence -------------------------------------------------------------------------
    def check_convergence(self) -> bool:
        """The single-process answer: sqrt(sum over leaves of mean(delta**2) / n) <= tolerance,
        with the per-leaf sums taken over the whole delta in the single process's order.
        False before the first step and after a load. Collective on the sharded in-place path
        (it gathers the last delta once)."""
        if not self._shard:
            return bool(self._opt.check_convergence())
        if not self._stepped or self._layout is None:
            return False
        if self._probe is None:
            lay = self._layout
            delta = self._gather_delta(lay) if self._probe_gathers else self._delta
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
    def state_dict(self) -> dict[str, Any]:
        """The whole state in the wrapped optimizer's own format, identical on every rank and
        loadable by a single-process optimizer (collective with shard_state)."""
        opt = self._opt
        if self._shard:
            self._agree_on_state()
        if self._is_optim and self._shard and self._layout is not None:
            own = _state_of(opt)  # this rank's pieces (stepped, or loaded and waiting for the next step)
            if optim_family.leaf_paths(own):
                return optim_family.whole_state(own, self._layout, self._flags, self._gather_pieces)
        mem = getattr(opt, "memory", None)
        if not self._shard or mem is None:
            return _state_of(opt)  # (a sharded fusedopt.optim one without state: its own, pending or empty)
        if self._pending is not None:
            full = copy.deepcopy(opt)
            full.memory.load_state_dict(self._pending)  # no structure: the moments wait in the copy
            return _state_of(full)
        if self._layout is None or not _holds_moments(opt):
            return _state_of(opt)
        m, v = mem.mean_gradient, mem.mean_square_gradient
        m_full = None if m is None else self._gather_pieces(self._layout, m)
        v_full = None if v is None else self._gather_pieces(self._layout, v)
        full = copy.deepcopy(opt)
        full.reset()
        full.memory.mean_gradient = m_full
        full.memory.mean_square_gradient = v_full
        return _state_of(full)

    # -- sharded checkpoints ------------------------------------------------------------------
    def save_sharded(self, directory: str) -> None:
        """Write this rank's part of the state to ``directory/shard-<rank>-of-<N>.npz``
        (collective; each rank writes only the moments of its own shard, cut as the layout cuts
        them also without shard_state). Loadable by ``load_sharded`` at any number of ranks.
        Needs a layout (a step, or a load_sharded, before). Anything wrong on any rank (states
        that differ, a file that cannot be written) raises on every rank."""
        lay = self._layout
        self._agree_on_state()
        part, exc = try_local(self._own_part, lay)
        ident = 0 if exc is not None else _checkpoint.checkpoint_id(part[0], lay, self._size)
        if not agree(self._comm, exc, ident, self._message):
            raise ValueError("save_sharded(): the ranks' optimizer states differ (hyper-parameters, schedule or "
                             "step counts); nothing was written")
        _, exc = try_local(_checkpoint.write, directory, self._rank, self._size, part[0], lay, part[1])
        agree(self._comm, exc)

    def _own_part(self, lay: Optional[Layout]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(the state without its leaves' values, {moment or slot: this rank's bytes of it})."""
        if lay is None:
            raise ValueError("save_sharded() needs the layout of a step: take a step (or load_sharded) first, "
                             "or save state_dict()")
        opt, state = self._opt, _state_of(self._opt)
        start, end = _layout.data_range(lay.data, self._size, self._rank)
        sources: dict[str, list[Any]] = {}
        if self._is_optim:
            scalars = optim_family.without_leaves(state)
            paths = optim_family.leaf_paths(state)
            index = {p: i for i, p in enumerate(paths)}
            for name in optim_family.slot_names(state) if paths else []:
                sources[name] = ([state[f"{name}.{j}"] for j in range(len(paths))] if self._shard
                                 else [state[f"{name}.{index[p]}"] for p in lay.paths])
            flags = self._flags if self._shard else [bool(b) for b in np.asarray(state["decay_mask"]).reshape(-1)]
            scalars.update(optim_family.whole_leaf_keys(lay, flags if paths else None))
        else:
            mem = getattr(opt, "memory", None)
            for name in ("mean_gradient", "mean_square_gradient"):
                tree = None if mem is None else getattr(mem, name)
                if tree is not None:
                    sources[name] = list(tree) if self._shard else list(lay.plan.flatten(tree))
            moment_keys = tuple(f"{name}." for name in ("mean_gradient", "mean_square_gradient"))
            scalars = {k: v for k, v in state.items() if not k.startswith(moment_keys)}
            scalars.update(leaf_paths=np.zeros(0, str), leaf_dtypes=np.zeros(0, str), has_mean_gradient=False,
                           has_mean_square_gradient=False)
        flats = {}
        for name, leaves in sources.items():
            if self._shard:
                flat = aligned_bytes(lay.shard_nbytes)
                lay.shard_pack.pack(leaves, flat, name)
                flats[name] = flat[:end - start]
            else:
                flat = aligned_bytes(lay.nbytes)
                lay.pack.pack(leaves, flat, name)
                flats[name] = flat[start:end]
        return scalars, flats

    def load_sharded(self, directory: str, like: Any) -> None:
        """Load a checkpoint of ``save_sharded`` saved at any number of ranks (collective): each
        rank reads only the files holding its shard (all of them without shard_state). `like`:
        a tree of the gradient's structure (the parameters on the in-place path, a gradient on
        the paysage path), the same on every rank. A missing, foreign or mismatched file, or a
        checkpoint of other leaves, raises ValueError on every rank and changes nothing."""
        commit, exc = try_local(self._read_sharded, directory, like)
        value = 0 if exc is not None else commit[1]
        if not agree(self._comm, exc, value, self._message):
            raise ValueError("load_sharded(): the ranks were given different checkpoints or trees")
        commit[0]()
        self._stepped, self._delta, self._probe, self._static = False, None, None, None

    def _read_sharded(self, directory: str, like: Any) -> tuple[Any, int]:
        """(what installs the checkpoint's part of this rank, cannot fail; the checkpoint's and
        layout's hash), everything checked on copies first."""
        lay = Layout(_core.Plan(like, "grad"), self._size, self._rank)
        if self._layout is not None and self._layout.hash() == lay.hash():
            lay = self._layout
        lo, hi = (lay.displs[self._rank], lay.displs[self._rank] + lay.counts[self._rank]) if self._shard \
            else (0, lay.data)
        scalars, flats, ident = _checkpoint.read(directory, lay, lo, hi, self._rank, self._size)
        buffers = {}
        for name, data in flats.items():
            buf = aligned_bytes(lay.shard_nbytes if self._shard else lay.nbytes)
            buf[:hi - lo] = data
            buffers[name] = buf
        opt = self._opt
        probe = copy.deepcopy(opt)
        probe.reset()
        if self._is_optim:
            state = optim_family.shard_state(scalars, lay, buffers) if self._shard else \
                optim_family.whole_state_from(scalars, lay, buffers)
            probe.load_state_dict(state)
            mask = self._mask_for(lay) if self._shard else None

            def install() -> None:
                opt.reset()
                opt.load_state_dict(state)
                if mask is not None:
                    self._set_mask(mask)
                self._layout, self._pending = lay, None
        else:
            unknown = sorted(set(buffers) - {"mean_gradient", "mean_square_gradient"})
            if unknown:
                raise ValueError(f"{directory}: moments {unknown} are not a fusedopt.optimizers optimizer's")
            probe.load_state_dict(scalars)
            moments = {name: lay.shard_pieces(buf) if self._shard else lay.tree(buf) for name, buf in buffers.items()}

            def install() -> None:
                opt.reset()
                opt.load_state_dict(scalars)
                opt.reset()
                for name, tree in moments.items():
                    setattr(opt.memory, name, tree)
                self._layout, self._pending = lay, None
        return install, _fields.static_hash(ident, lay.hash())

    def _agree_on_state(self) -> None:
        """Sharded: whether state_dict() gathers depends on this rank's state; every rank must
        hold alike (a layout, a loaded state waiting, moments, the step count: a step that failed
        on one rank only leaves it behind) or all raise."""
        lay, held = self._layout, _holds_moments(self._opt)
        mine = (None if lay is None else lay.hash(), self._pending is not None, held, self.step_count)
        if not agree(self._comm, None, _fields.static_hash(*mine), self._message):
            every = self._comm.allgather([("layout", "none" if lay is None else f"{len(lay.paths)} leaves"),
                                          ("loaded state waiting", repr(mine[1])), ("moments", repr(held)),
                                          ("step_count", repr(mine[3]))])
            raise ValueError("state_dict(): the ranks' optimizer states differ (reset() or a step on some ranks "
                             "only?): " + _fields.mismatch_message(every))

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a state_dict() saved at any number of ranks (a single process's included).
        Collective: every rank must pass the same state; anything wrong raises on every rank
        and changes nothing."""
        opt = self._opt
        probe = copy.deepcopy(opt)
        if self._shard:
            probe.reset()  # this rank's shard structure is not the state's
        mem_state, exc = try_local(self._check_state, probe, state)
        value = 0 if exc is not None else _fields.state_hash(state)
        if not agree(self._comm, exc, value, self._message):
            raise ValueError("load_state_dict() was given different states on different ranks")
        self._stepped, self._delta, self._probe = False, None, None
        if not self._shard:
            opt.load_state_dict(state)
            return
        if self._is_optim:
            opt.reset()
            opt.load_state_dict(mem_state if mem_state is not None else state)
            self._pending = dict(state) if self._layout is None else None
            return
        # Checked on the copy above, so none of this fails: the scalars load into the wrapped
        # optimizer, the moments are installed as this rank's pieces (or wait for a layout).
        opt.reset()
        opt.load_state_dict(state)
        opt.reset()
        self._pending = None
        if mem_state is not None:
            if self._layout is not None:
                self._install_pieces(self._layout, *self._full_moments(self._layout, mem_state))
            else:
                self._pending = mem_state

    def _check_state(self, probe: Any, state: Mapping[str, Any]) -> Optional[dict[str, Any]]:
        """Load `state` into a copy; sharded, also return what this rank installs: the moments
        (a GradientMemory state; checked against a known layout) or a fusedopt.optim shard state."""
        probe.load_state_dict(state)
        if self._is_optim:  # sharded: this rank's cut of the state (checked), once a layout is known
            return None if self._layout is None else optim_family.shard_state(state, self._layout)
        mem = getattr(probe, "memory", None)
        if not self._shard or mem is None:
            return None
        mem_state = _state_of(mem)
        if self._layout is not None:
            self._full_moments(self._layout, mem_state)
        return mem_state

    def _full_moments(self, lay: Layout, mem_state: dict[str, Any]) -> tuple[Any, Any]:
        """The moments of a memory state as trees of the layout's structure (ValueError if they
        do not fit it)."""
        mem: Any = optimizers.GradientMemory()  # type: ignore[no-untyped-call]
        template = lay.tree(aligned_bytes(lay.nbytes))
        mem.mean_gradient = template       # gives the memory the layout's structure,
        mem.mean_square_gradient = template
        mem.load_state_dict(mem_state)     # which the loaded moments must then match
        return mem.mean_gradient, mem.mean_square_gradient

    def _install_pieces(self, lay: Layout, m: Any, v: Any) -> None:
        """This rank's pieces of whole moment trees (from _full_moments) into the wrapped optimizer."""
        mem = self._opt.memory
        for name, tree in (("mean_gradient", m), ("mean_square_gradient", v)):
            if tree is not None:
                flat = aligned_bytes(lay.nbytes)
                lay.pack.pack(lay.plan.flatten(tree), flat, "moment")
                setattr(mem, name, lay.shard_pieces(flat[lay.lo:lay.hi]))
