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
import hashlib
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
from . import _optim as textbook
from ._agree import agree, try_local
from ._layout import Layout, aligned_bytes

__all__ = ["DataParallel"]


class _Capture:
    """The model of a shard step on the paysage path: keeps the delta pieces it is handed."""

    __slots__ = ("delta",)

    def __init__(self) -> None:
        self.delta: Any = None

    def parameter_update(self, delta: Any) -> None:
        self.delta = delta


class _Sink:
    """A model that ignores its delta (the convergence probe's)."""

    def parameter_update(self, delta: Any) -> None:
        pass


_UNSET = object()  # an attribute the instance dict did not hold


def _holds_moments(opt: Any) -> bool:
    if _is_textbook(opt):
        return bool(opt.state_arrays())
    mem = getattr(opt, "memory", None)
    return mem is not None and (mem.mean_gradient is not None or mem.mean_square_gradient is not None)


def _check_no_clip(opt: Any) -> None:
    if opt.max_grad_norm is not None:
        raise TypeError(f"{type(opt).__name__}(max_grad_norm=...) needs the whole gradient's norm: wrap it "
                        "with shard_state=False (each rank then holds every moment)")


def _is_textbook(opt: Any) -> bool:
    """A fusedopt.optim optimizer (step(params, grads)); imported only when there is one."""
    optim = sys.modules.get("fusedopt.optim")  # not loaded: `opt` cannot be one of its optimizers
    return optim is not None and isinstance(opt, optim.Optimizer)


def _state_of(obj: Any) -> dict[str, Any]:
    return cast(dict[str, Any], obj.state_dict())


def _leaves(tree: Any) -> list[np.ndarray]:
    return list(_core.Plan(tree, "tree").flatten(tree)) if tree is not None else []


def _state_hash(state: Mapping[str, Any]) -> int:
    """A 62-bit hash of a state dict's content, to check that every rank loads the same state.
    Values go through np.asarray, so a state as saved and as np.load gives it back hash alike."""
    h = hashlib.blake2b(digest_size=8)
    for key in sorted(state):
        value = np.asarray(state[key])
        h.update(f"{key!r}{value.dtype.str}{value.shape}".encode())
        h.update(value.tobytes() if value.dtype.kind != "O" else repr(value).encode())
    return int.from_bytes(h.digest(), "little") & ((1 << 62) - 1)


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
        self._textbook = _is_textbook(optimizer)
        if not (self._textbook or isinstance(optimizer, optimizers.Optimizer)):
            raise TypeError(f"DataParallel wraps a fusedopt.optimizers or fusedopt.optim optimizer, "
                            f"got {type(optimizer).__name__}")
        if self._textbook and shard_state:
            _check_no_clip(optimizer)
        self._opt: Any = optimizer
        self._comm = MPI.COMM_WORLD if comm is None else comm
        self._size, self._rank = self._comm.Get_size(), self._comm.Get_rank()
        self._shard, self._det = bool(shard_state), bool(deterministic)
        self._config = (type(optimizer).__name__, self._shard, self._det, self._size)
        self._layout: Optional[Layout] = None   # the layout all ranks agreed on
        self._bufs: Any = None                   # the _Buffers of the layout and path kind in use
        self._pending: Optional[dict[str, Any]] = None  # loaded state (moments) awaiting a layout
        self._user_mask: Optional[tuple[Any]] = None     # fusedopt.optim sharded: the caller's mask,
        self._piece_mask: Any = None                     # the mask of the pieces made from it,
        self._flags: list[bool] = []                     # and the whole tree's flags
        self._stepped = False                   # a step since creation / the last load
        self._inplace = False                   # the last step's path: parameters in place, or a model
        self._delta: Any = None
        self._delta_shard: Any = None           # sharded in-place: this rank's delta pieces
        self._delta_flat: Optional[np.ndarray] = None  # the buffer the paysage path's delta views
        self._probe: Any = None                 # a Gradient holding the last delta's convergence sums
        self._src: Any = None                   # during a step: the flat bytes of this rank's gradient
        # During a step: (rows, base, N) whose average the wrapped optimizer's kernel computes
        # itself (State.average_next) instead of a separate pass writing it to base; or None.
        self._fused: Any = None
        # A subclass's own update may read the gradient in Python: only Optimizer.update's native
        # step can be handed rows (its memory is a GradientMemory, checked on assignment).
        self._kernel_averages = not self._textbook and type(optimizer).update is optimizers.Optimizer.update
        self._message = np.empty(3, np.int64)  # the step's agreement message, reused
        # (params leaf, layout, its flat bytes, this rank's pieces) of the last single-leaf step,
        # so that the same parameter array is not viewed again every step (it is kept alive).
        self._direct: Any = None
        #: Cumulative seconds per phase of update() (for benchmarks): local checks and the gradient
        #: pack, the agreement, the gradient exchange, the native average, the optimizer step, the
        #: all-gather, and copies between flat buffers and trees (parameters, delta).
        self.timings = {"pack": 0.0, "agree": 0.0, "exchange": 0.0, "average": 0.0, "step": 0.0, "gather": 0.0,
                        "copy": 0.0}

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
        return None if self._textbook else self._opt.delta

    def reset(self) -> None:
        """Forget the moments (as the wrapped optimizer's reset())."""
        self._opt.reset()
        self._pending = None

    @property
    def state_nbytes(self) -> int:
        """Bytes of optimizer state (moments, slots) this rank holds: about 1/N of the whole
        with shard_state (at most full / N plus 64 bytes per moment), all of it without."""
        if self._textbook:
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
        if self._textbook:
            raise TypeError(f"fusedopt.optim's {type(self._opt).__name__} steps with step(params, grads)")
        self._step(model, grad)

    def step(self, params: Any, grads: Any) -> None:
        """One data-parallel step of a wrapped ``fusedopt.optim`` optimizer (collective): its
        ``step(params, average of every rank's grads)``; errors as in update()."""
        if not self._textbook:
            raise TypeError(f"fusedopt.optimizers' {type(self._opt).__name__} steps with update(model, grad)")
        self._step(params, grads)

    def _step(self, model: Any, grad: Any) -> None:
        try:
            self._step_once(model, grad)
        finally:
            self._src = self._fused = None  # may hold the caller's gradient: not kept past the step

    def _step_once(self, model: Any, grad: Any) -> None:
        t0 = time.perf_counter()
        is_model = not self._textbook and hasattr(model, "parameter_update")
        lay, changed, exc, pleaves = self._local_checks(model, grad, is_model)
        value = 0 if lay is None else lay.hash(self._config, is_model, lay is self._layout)
        t1 = time.perf_counter()
        if not agree(self._comm, exc, value, self._message):
            self._raise_mismatch(lay, is_model)
        if lay is not self._layout:
            assert lay is not None  # no error anywhere, so every rank has its layout
            self._adopt(lay, changed)
        lay = self._layout
        assert lay is not None
        self._bufs = self._buffers_for(lay, not is_model)
        t2 = time.perf_counter()
        self.timings["pack"] += t1 - t0
        self.timings["agree"] += t2 - t1
        if self._shard:
            self._average_shard(lay)
            self._check_finite(self._bufs.avg_pieces)
            if is_model:
                self._sharded_paysage_step(lay, model)
            else:
                self._sharded_inplace_step(lay, pleaves)
        else:
            self._average_replicated(lay)
            self._check_finite(self._bufs.avg_tree)
            t = time.perf_counter()
            if self._textbook:
                self._opt.step(model, self._bufs.avg_tree)
            else:
                self._update_wrapped(model, self._bufs.avg_tree)
            self.timings["step"] += time.perf_counter() - t
        self._stepped, self._inplace = True, not is_model
        self._probe = None

    def _local_checks(self, model: Any, grad: Any, is_model: bool
                      ) -> tuple[Optional[Layout], Optional[BaseException], Optional[BaseException], Any]:
        """(layout of grad, why the agreed layout no longer fits, local error, param leaves);
        packs grad into its send buffer. Modifies nothing a user sees."""
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
            self._buffers_for(lay, not is_model)  # allocated here: a MemoryError is agreed on too
            if (self._textbook and self._shard and lay is self._layout
                    and self._opt.weight_decay_mask is not self._piece_mask):
                self._translate_mask(lay)  # the caller assigned a new mask: pieces decay by it
            pleaves = None
            if not is_model:
                pleaves = lay.plan.flatten(model, "params")
                lay.pack.check(pleaves, "params", True)
            opt = self._opt
            if self._textbook and self._shard:
                _check_no_clip(opt)
            if not self._textbook and opt.lr is None and getattr(opt.stepsize, "value", None) is None:
                raise TypeError(f"call update_lr() before update(): the schedule "
                                f"{type(opt.stepsize).__name__} has no current value")
            return lay, changed, None, pleaves
        except Exception as exc:  # every local failure must reach the agreement
            return lay, changed, exc, None

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

    def _buffers_for(self, lay: Layout, inplace: bool) -> _Buffers:
        bufs = lay.bufs.get(inplace)
        if bufs is None:
            bufs = lay.bufs[inplace] = _Buffers(lay, self._size, self._shard, self._det, inplace)
        return bufs

    def _raise_mismatch(self, lay: Optional[Layout], is_model: bool) -> None:
        """All ranks: layouts differ. Say which rank and leaf differ from rank 0."""
        mine = (["paysage path (a model)" if is_model else "in-place path (params)"]
                + (lay.describe() if lay is not None else []) + [f"configuration {self._config}"])
        every = self._comm.allgather(mine)
        for r, desc in enumerate(every):
            if desc != every[0]:
                first = next((i for i, (a, b) in enumerate(zip(desc, every[0])) if a != b), min(len(desc), len(every[0])))
                a = every[0][first] if first < len(every[0]) else "(nothing)"
                b = desc[first] if first < len(desc) else "(nothing)"
                raise ValueError(f"the gradient tree layout differs across ranks: rank 0 has {a!r}, rank {r} has "
                                 f"{b!r} (entry {first}; every rank must pass the same paths, shapes and dtypes)")
        raise ValueError("the gradient tree layout changed on some ranks but not on others")

    def _adopt(self, lay: Layout, changed: Optional[BaseException]) -> None:
        """Every rank: a new agreed layout. Same decision on all ranks (same state everywhere)."""
        if self._layout is not None and _holds_moments(self._opt):
            raise changed if changed is not None else ValueError(
                "the gradient's structure differs from the optimizer's moments (call reset() first)")
        if self._textbook and self._shard:
            self._adopt_textbook(lay)
        elif self._shard and self._pending is not None:
            self._install(lay, self._pending)  # ValueError if the loaded state does not fit
            self._pending = None
        self._layout = lay

    def _adopt_textbook(self, lay: Layout) -> None:
        """A fusedopt.optim optimizer stepping this rank's pieces: each piece decays as its
        leaf does under the caller's mask, and a state loaded before is cut to the shard."""
        opt = self._opt
        shard = None if self._pending is None else textbook.shard_state(self._pending, lay)
        if shard is not None:
            opt.reset()
            opt.load_state_dict(shard)
            self._pending = None
        self._translate_mask(lay)

    def _translate_mask(self, lay: Layout) -> None:
        """The caller's weight-decay mask resolved over the whole tree, as a mask of the pieces."""
        opt = self._opt
        if self._user_mask is None or opt.weight_decay_mask is not self._piece_mask:
            self._user_mask = (opt.weight_decay_mask,)  # the caller's (None is a valid mask)
        probe = copy.deepcopy(opt)
        probe.weight_decay_mask = self._user_mask[0]
        self._flags = textbook.whole_tree_flags(probe, lay)
        self._piece_mask = textbook.piece_mask(lay, self._flags)
        opt.weight_decay_mask = self._piece_mask

    # -- the average -----------------------------------------------------------------------
    def _average_shard(self, lay: Layout) -> None:
        """This rank's shard of the average into bufs.avg."""
        if self._det:
            self._fixed_order_average(lay, self._bufs.avg, self._fusable())
            return
        bufs = self._bufs
        t0 = time.perf_counter()
        for dtype, part, mpi_type, item in (("float64", lay.part64, MPI.DOUBLE, 8), ("float32", lay.part32, MPI.FLOAT, 4)):
            counts = lay.region_counts(dtype)
            if sum(counts):
                lo, hi = lay.region(dtype)
                recv = bufs.avg[part.offset:part.offset + item * part.count]
                self._comm.Reduce_scatter([self._src[lo:hi], mpi_type], [recv, mpi_type], counts, op=MPI.SUM)
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
        for dtype, mpi_type in (("float64", MPI.DOUBLE), ("float32", MPI.FLOAT)):
            lo, hi = lay.region(dtype)
            if hi > lo:
                src = MPI.IN_PLACE if self._src is lay.send else [self._src[lo:hi], mpi_type]
                self._comm.Allreduce(src, [lay.send[lo:hi], mpi_type], op=MPI.SUM)
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
        self._comm.Alltoallv([src, (lay.send_counts, lay.displs), MPI.BYTE],
                             [bufs.recv, (lay.recv_counts, lay.recv_displs), MPI.BYTE])
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
        t0 = time.perf_counter()
        if lay.gather_blocks:
            self._comm.Allgather(MPI.IN_PLACE, [flat[:lay.gather_blocks], MPI.BYTE])
        else:
            self._comm.Allgatherv(MPI.IN_PLACE, [flat, (lay.counts, lay.displs), MPI.BYTE])
        self.timings["gather"] += time.perf_counter() - t0

    def _count_copies(self, t0: float, gather0: float) -> None:
        """Time since t0 that was not the all-gather: copies between the flat buffer and trees."""
        self.timings["copy"] += time.perf_counter() - t0 - (self.timings["gather"] - gather0)

    def _check_finite(self, tree: Any) -> None:
        """With check_finite, a non-finite average on any rank raises on all, before any step."""
        if not self._opt.check_finite:
            return
        exc = None
        if not all(np.isfinite(leaf).all() for leaf in _leaves(tree)):
            exc = FloatingPointError("the averaged gradient has a NaN or Inf (check_finite=True); nothing was modified")
        agree(self._comm, exc)

    # -- sharded steps -------------------------------------------------------------------------
    def _sharded_paysage_step(self, lay: Layout, model: Any) -> None:
        bufs = self._bufs
        t0 = time.perf_counter()
        capture = _Capture()
        self._update_wrapped(capture, bufs.avg_pieces)
        t1, gather0 = time.perf_counter(), self.timings["gather"]
        self.timings["step"] += t1 - t0
        flat = self._delta_buffer(lay)
        lay.shard_pack.pack(capture.delta, flat[lay.lo:lay.hi], "delta")
        self._allgather(lay, flat)
        delta = lay.tree(flat)
        self._delta = delta
        self._count_copies(t1, gather0)
        model.parameter_update(delta)

    def _sharded_inplace_step(self, lay: Layout, pleaves: Any) -> None:
        bufs, opt = self._bufs, self._opt
        t0, gather0 = time.perf_counter(), self.timings["gather"]
        direct = self._direct_params(lay, pleaves) if lay.single else None
        if direct is None:  # stepped in a flat copy, then copied back
            flat, pieces = bufs.params, bufs.param_pieces
            lay.pack.pack(pleaves, flat[lay.lo:lay.hi], "params", lay.lo, lay.hi)
        else:  # the caller's array itself: its shard stepped in place, then gathered in place
            flat, pieces = direct
        t1 = time.perf_counter()
        keep = False
        if self._textbook:
            opt.step(pieces, bufs.avg_pieces)
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
        if direct is None:
            lay.pack.unpack(flat, pleaves, "params")
        self._delta = self._gather_delta(lay) if keep else None
        self._count_copies(t0, gather0)
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
        """The flat buffer of this step's delta: the last one's again when nothing else holds it
        (no array of the last delta is alive), else a fresh one, so a delta a model kept is
        never overwritten; reuse spares a large delta its page faults every step."""
        self._delta = None
        last = self._delta_flat
        # NumPy points every view at the array owning the memory, so the owner's references
        # count the views: none alive leaves `last`'s own and getrefcount's argument.
        if last is not None and last.nbytes == lay.gather_nbytes and sys.getrefcount(last.base) == 2:
            return last
        self._delta_flat = flat = lay.gather_buffer(zero=False)
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
            delta = self._delta if self._delta is not None else self._gather_delta(lay)
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
        if self._textbook and self._shard and self._layout is not None:
            own = _state_of(opt)  # this rank's pieces (stepped, or loaded and waiting for the next step)
            if textbook.leaf_paths(own):
                return textbook.whole_state(own, self._layout, self._flags, self._gather_pieces)
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

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a state_dict() saved at any number of ranks (a single process's included).
        Collective: every rank must pass the same state; anything wrong raises on every rank
        and changes nothing."""
        opt = self._opt
        probe = copy.deepcopy(opt)
        if self._shard:
            probe.reset()  # this rank's shard structure is not the state's
        mem_state, exc = try_local(self._check_state, probe, state)
        value = 0 if exc is not None else _state_hash(state)
        if not agree(self._comm, exc, value, self._message):
            raise ValueError("load_state_dict() was given different states on different ranks")
        self._stepped, self._delta, self._probe = False, None, None
        if not self._shard:
            opt.load_state_dict(state)
            return
        if self._textbook:
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
                self._install(self._layout, mem_state)
            else:
                self._pending = mem_state

    def _check_state(self, probe: Any, state: Mapping[str, Any]) -> Optional[dict[str, Any]]:
        """Load `state` into a copy; sharded, also return what this rank installs: the moments
        (a GradientMemory state; checked against a known layout) or a fusedopt.optim shard state."""
        probe.load_state_dict(state)
        if self._textbook:  # sharded: this rank's cut of the state (checked), once a layout is known
            return None if self._layout is None else textbook.shard_state(state, self._layout)
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

    def _install(self, lay: Layout, mem_state: dict[str, Any]) -> None:
        """This rank's pieces of loaded moments into the wrapped optimizer."""
        m, v = self._full_moments(lay, mem_state)
        mem = self._opt.memory
        for name, tree in (("mean_gradient", m), ("mean_square_gradient", v)):
            if tree is not None:
                flat = aligned_bytes(lay.nbytes)
                lay.pack.pack(lay.plan.flatten(tree), flat, "moment")
                setattr(mem, name, lay.shard_pieces(flat[lay.lo:lay.hi]))
