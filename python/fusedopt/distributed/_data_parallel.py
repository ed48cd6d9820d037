"""DataParallel, the facade: its constructor makes the strategy class of the wrapped optimizer's
family and the mode (_strategies.py), a subclass of it whose methods the public ones call. What
every strategy shares is here (the checkpoints' agreement) and in _step.py (the step)."""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Optional, cast

import numpy as np
from mpi4py import MPI

from .. import _core
from . import _abort, _checkpoint, _fields, _layout
from ._agree import agree, message, try_local
from ._layout import Layout, aligned_bytes
from ._step import _leaves, _Step
from ._strategies import strategy


def _state_of(obj: Any) -> dict[str, Any]:
    return cast(dict[str, Any], obj.state_dict())


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


def _picked(optimizer: Any, comm: Any = None, *, shard_state: bool = True, deterministic: bool = True
            ) -> tuple[Any, bool]:
    """What picks the strategy, from DataParallel's arguments (its __init__'s signature)."""
    return optimizer, shard_state


class DataParallel(_Step):
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

    def __new__(cls, *args: Any, **kwargs: Any) -> "DataParallel":
        if cls is DataParallel:  # (not a strategy class itself: a copy's reconstruction)
            try:
                optimizer, shard_state = _picked(*args, **kwargs)
            except TypeError:  # arguments __init__ refuses, with Python's own message
                return super().__new__(cls)
            cls = strategy(optimizer, bool(shard_state))
        return super().__new__(cls)

    def __init__(self, optimizer: Any, comm: Any = None, *, shard_state: bool = True,
                 deterministic: bool = True) -> None:
        """The arguments are explained in the class documentation, help(DataParallel)."""
        self._opt: Any = optimizer
        self._check_wrappable()
        self._comm = _checked_comm(comm)
        self._size, self._rank = self._comm.Get_size(), self._comm.Get_rank()
        self._det = bool(deterministic)
        self._config = (type(optimizer).__name__, bool(shard_state), self._det, self._size)
        self._layout: Optional[Layout] = None   # the layout all ranks agreed on
        self._bufs: Any = None                   # the buffers of the layout and path kind in use
        # Loaded state (moments) awaiting a layout; sharded, a state the optimizer already holds
        # (stepped before it was wrapped) waits the same way, to be cut into this rank's shard.
        self._pending: Optional[dict[str, Any]] = self._held_state()
        self._drawn: Any = None                  # fusedopt.optim during a step: (its rate, the schedule's undo)
        # the last step's memo: (layout, is_model, fresh, key, base hash, collectives)
        self._static: Any = None
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
        self._kernel_averages = self._averages_in_kernel()
        self._grad_in_place = self._sends_in_place()  # a single-leaf gradient sent from the caller's memory
        self._message = message()  # the step's agreement message, reused
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

    # -- what a strategy adds where it needs to (none of these by default) ----------------------
    def _check_wrappable(self) -> None:
        """Refuse, at construction, an optimizer this strategy cannot step."""

    def _undraw(self) -> None:
        """After a step that failed: put back what its local checks took (the optim family's rate)."""

    # -- passthrough of the wrapped optimizer ---------------------------------------------
    @property
    def optimizer(self) -> Any:
        """The wrapped optimizer (with shard_state it holds this rank's shard of the moments)."""
        return self._opt

    @property
    def comm(self) -> Any:
        return self._comm

    @property  # type: ignore[override]
    def shard_state(self) -> bool:
        return bool(self._config[1])

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
        return self._whole_delta()

    def update_lr(self) -> None:
        """Advance the wrapped optimizer's schedule (every rank does the same)."""
        self._opt.update_lr()

    def reset(self) -> None:
        """Forget the moments (as the wrapped optimizer's reset())."""
        self._opt.reset()
        self._pending = None

    @property
    def state_nbytes(self) -> int:
        """Bytes of optimizer state (moments, slots) this rank holds: about 1/N of the whole
        with shard_state (at most full / N plus 64 bytes per moment), all of it without."""
        return sum(leaf.nbytes for tree in self._state_trees() for leaf in _leaves(tree))

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
        self._step(model, grad)

    def step(self, params: Any, grads: Any) -> None:
        """One data-parallel step of a wrapped ``fusedopt.optim`` optimizer (collective): its
        ``step(params, average of every rank's grads)``; errors as in update()."""
        self._step(params, grads)

    def check_convergence(self) -> bool:
        """The single-process answer: sqrt(sum over leaves of mean(delta**2) / n) <= tolerance,
        with the per-leaf sums taken over the whole delta in the single process's order.
        False before the first step and after a load. Collective on the sharded in-place path
        (it gathers the last delta once)."""
        return self._converged()

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The whole state in the wrapped optimizer's own format, identical on every rank and
        loadable by a single-process optimizer (collective with shard_state)."""
        return self._whole_state()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a state_dict() saved at any number of ranks (a single process's included).
        Collective: every rank must pass the same state; anything wrong raises on every rank
        and changes nothing."""
        probe = self._blank_copy()
        mem_state, exc = try_local(self._check_state, probe, state)
        value = 0 if exc is not None else _fields.state_hash(state)
        if not agree(self._comm, exc, value, self._message):
            raise ValueError("load_state_dict() was given different states on different ranks")
        self._stepped, self._delta, self._probe = False, None, None
        self._load(state, mem_state)

    def _agree_on_state(self) -> None:
        """Whether state_dict() gathers (sharded) depends on this rank's state; every rank must
        hold alike (a layout, a loaded state waiting, moments, the step count: a step that failed
        on one rank only leaves it behind) or all raise."""
        lay, held = self._layout, self._holds_moments()
        mine = (None if lay is None else lay.hash(), self._pending is not None, held, self.step_count)
        if not agree(self._comm, None, _fields.static_hash(*mine), self._message):
            every = self._comm.allgather([("layout", "none" if lay is None else f"{len(lay.paths)} leaves"),
                                          ("loaded state waiting", repr(mine[1])), ("moments", repr(held)),
                                          ("step_count", repr(mine[3]))])
            raise ValueError("state_dict(): the ranks' optimizer states differ (reset() or a step on some ranks "
                             "only?): " + _fields.mismatch_message(every))

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
        start, end = _layout.data_range(lay.data, self._size, self._rank)
        scalars, sources = self._state_parts(_state_of(self._opt), lay)
        return scalars, {name: self._cut(lay, leaves, name, start, end) for name, leaves in sources.items()}

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
        lo, hi = self._data_range(lay)
        scalars, flats, ident = _checkpoint.read(directory, lay, lo, hi, self._rank, self._size)
        buffers = {}
        for name, data in flats.items():
            buf = aligned_bytes(self._part_nbytes(lay))
            buf[:hi - lo] = data
            buffers[name] = buf
        probe = copy.deepcopy(self._opt)
        probe.reset()
        load = self._loader(directory, lay, scalars, buffers, probe)

        def install() -> None:
            load()
            self._layout, self._pending = lay, None
        return install, _fields.static_hash(ident, lay.hash())
