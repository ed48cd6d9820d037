"""A fusedopt.optimizers optimizer stepping this rank's shard: its GradientMemory holds the
pieces of the moments; on the paysage path the delta's pieces are all-gathered inside its step."""
from __future__ import annotations

import copy
import sys
import time
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np

from .. import optimizers
from ._data_parallel import DataParallel, _state_of
from ._families import _Paysage
from ._layout import Layout, aligned_bytes
from ._sharded import _UNSET, _Sharded


class _Forward:
    """The model of a shard step on the paysage path: all-gathers the delta pieces it is handed
    and hands the whole delta to the caller's model, all inside the wrapped optimizer's step,
    which commits only after this returned: a model that raises leaves the step undone."""

    __slots__ = ("dp", "lay", "model", "delta", "entered", "seconds")

    def __init__(self, dp: DataParallel, lay: Layout, model: Any) -> None:
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


class _ShardedPaysage(_Paysage, _Sharded):
    """A fusedopt.optimizers optimizer, sharded: a model's delta or parameters in place."""

    def _held_state(self) -> Optional[dict[str, Any]]:
        """The moments the optimizer held before it was wrapped (they go: it will step this
        rank's pieces), or None."""
        opt = self._opt
        mem = getattr(opt, "memory", None)
        if mem is None or not (self._holds_moments() or mem._pending is not None):
            return None
        held = _state_of(mem)
        opt.reset()
        return held

    def _keeps_delta(self, is_model: bool) -> bool:
        return not is_model and bool(self._opt.__dict__.get("keep_delta", False))

    def _step_pieces(self, pieces: Any, avg_pieces: Any) -> bool:
        """Step this rank's parameter pieces; whether the caller asked to keep the delta.
        Its delta pieces are kept for check_convergence and `delta`: the setting is set in the
        instance dict, where the native step reads it (True needs no check), and the caller's
        checked value goes back."""
        opt = self._opt
        settings = opt.__dict__
        saved = settings.get("keep_delta", _UNSET)
        keep = saved is not _UNSET and bool(saved)
        settings["keep_delta"] = True
        try:
            self._step_wrapped(pieces, avg_pieces)
        finally:
            if saved is _UNSET:
                del settings["keep_delta"]
            else:
                settings["keep_delta"] = saved
        self._delta_shard = opt.delta
        return keep

    def _model_step(self, lay: Layout, model: Any) -> None:
        t0, since = time.perf_counter(), self.timings["gather"] + self.timings["agree"]
        forward = _Forward(self, lay, model)
        self._step_wrapped(forward, self._bufs.avg_pieces)
        self._delta = forward.delta
        self.timings["step"] += forward.entered - t0
        self._count_copies(forward.entered, since)
        self.timings["copy"] -= forward.seconds  # the caller's model is no phase of the wrapper's

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

    # -- state ---------------------------------------------------------------------------------
    def _gather_state(self) -> dict[str, Any]:
        opt = self._opt
        mem = getattr(opt, "memory", None)
        if mem is None:
            return _state_of(opt)
        if self._pending is not None:
            full = copy.deepcopy(opt)
            full.memory.load_state_dict(self._pending)  # no structure: the moments wait in the copy
            return _state_of(full)
        if self._layout is None or not self._holds_moments():
            return _state_of(opt)
        m, v = mem.mean_gradient, mem.mean_square_gradient
        m_full = None if m is None else self._gather_pieces(self._layout, m)
        v_full = None if v is None else self._gather_pieces(self._layout, v)
        full = copy.deepcopy(opt)
        full.reset()
        full.memory.mean_gradient = m_full
        full.memory.mean_square_gradient = v_full
        return _state_of(full)

    def _check_state(self, probe: Any, state: Mapping[str, Any]) -> Optional[dict[str, Any]]:
        """Load `state` into a copy; return the moments this rank installs (a GradientMemory
        state; checked against a known layout)."""
        probe.load_state_dict(state)
        mem = getattr(probe, "memory", None)
        if mem is None:
            return None
        mem_state = _state_of(mem)
        if self._layout is not None:
            self._full_moments(self._layout, mem_state)
        return mem_state

    def _load(self, state: Mapping[str, Any], mem_state: Optional[dict[str, Any]]) -> None:
        # Checked on the copy before, so none of this fails: the scalars load into the wrapped
        # optimizer, the moments are installed as this rank's pieces (or wait for a layout).
        opt = self._opt
        opt.reset()
        opt.load_state_dict(state)
        opt.reset()
        self._pending = None
        if mem_state is not None:
            if self._layout is not None:
                self._install_pieces(self._layout, *self._full_moments(self._layout, mem_state))
            else:
                self._pending = mem_state

    def _prepare_new(self, lay: Layout) -> Any:
        return None if self._pending is None else self._full_moments(lay, self._pending)

    def _install(self, lay: Layout, prepared: Any) -> None:
        self._install_pieces(lay, *prepared)
        self._pending = None

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
