"""What differs by the wrapped optimizer's family, in either mode: fusedopt.optimizers (the
paysage family: update(model_or_params, grad), a GradientMemory of moment trees) and
fusedopt.optim (step(params, grads), its own state of slots, a rate drawn before the agreement)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Optional

import numpy as np

from .. import optimizers
from . import _fields
from . import _optim as optim_family
from ._data_parallel import DataParallel
from ._layout import Layout

_MOMENTS = ("mean_gradient", "mean_square_gradient")


def _refused(message: str) -> Any:
    """The stepping method of the other family: a TypeError naming the optimizer's class."""
    def refused(self: DataParallel, model: Any, grad: Any) -> None:
        """Refused (TypeError): the wrapped optimizer steps with the other method."""
        raise TypeError(message.format(type(self._opt).__name__))
    return refused


class _Paysage(DataParallel):
    """A fusedopt.optimizers optimizer: a paysage model (its delta) or parameters in place."""

    _STATIC_NAMES = _fields.PAYSAGE_STATIC
    step = _refused("fusedopt.optimizers' {} steps with update(model, grad)")

    def _averages_in_kernel(self) -> bool:
        # A subclass's own update may read the gradient in Python: only Optimizer.update's native
        # step can be handed rows (its memory is a GradientMemory, checked on assignment).
        return type(self._opt).update is optimizers.Optimizer.update

    def _is_model(self, model: Any) -> bool:
        return hasattr(model, "parameter_update")

    # (step count, the objects of every other field) of the wrapped optimizer, given whether a
    # state waits for a layout (called every step: no method of its own in between), and the
    # (static, dynamic) fields every rank must hold alike, made from them
    _key = staticmethod(_fields.paysage_key)
    _fields = staticmethod(_fields.paysage_fields)

    def _ready(self, lay: Layout, changed: Optional[BaseException]) -> Any:
        """The last of a step's local checks: the rate, and what _adopt installs on a new layout."""
        opt = self._opt
        if opt.lr is None and getattr(opt.stepsize, "value", None) is None:
            raise TypeError(f"call update_lr() before update(): the schedule "
                            f"{type(opt.stepsize).__name__} has no current value")
        return None if lay is self._layout else self._prepare(lay, changed)

    def _holds_moments(self) -> bool:
        mem = getattr(self._opt, "memory", None)
        return mem is not None and (mem.mean_gradient is not None or mem.mean_square_gradient is not None)

    def _state_trees(self) -> list[Any]:
        mem = getattr(self._opt, "memory", None)
        return [] if mem is None else [mem.mean_gradient, mem.mean_square_gradient]

    def _own_delta(self) -> Any:
        return self._opt.delta

    def _step_wrapped(self, target: Any, grad: Any) -> None:
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

    def _state_parts(self, state: dict[str, Any], lay: Layout) -> tuple[dict[str, Any], dict[str, list[Any]]]:
        """(the scalars of a state_dict, {moment: this mode's leaves of it in the layout's order})."""
        mem = getattr(self._opt, "memory", None)
        sources = {}
        for name in _MOMENTS:
            tree = None if mem is None else getattr(mem, name)
            if tree is not None:
                sources[name] = self._moment_leaves(lay, tree)
        scalars = {k: v for k, v in state.items() if not k.startswith(tuple(f"{name}." for name in _MOMENTS))}
        scalars.update(leaf_paths=np.zeros(0, str), leaf_dtypes=np.zeros(0, str), has_mean_gradient=False,
                       has_mean_square_gradient=False)
        return scalars, sources

    def _loader(self, directory: str, lay: Layout, scalars: dict[str, Any], buffers: dict[str, np.ndarray],
                probe: Any) -> Callable[[], None]:
        """Check a sharded checkpoint's part on `probe`; return what loads it (cannot fail)."""
        unknown = sorted(set(buffers) - set(_MOMENTS))
        if unknown:
            raise ValueError(f"{directory}: moments {unknown} are not a fusedopt.optimizers optimizer's")
        probe.load_state_dict(scalars)
        moments = {name: self._moment_tree(lay, buf) for name, buf in buffers.items()}
        opt = self._opt

        def load() -> None:
            opt.reset()
            opt.load_state_dict(scalars)
            opt.reset()
            for name, tree in moments.items():
                setattr(opt.memory, name, tree)
        return load


class _Optim(DataParallel):
    """A fusedopt.optim optimizer: parameters stepped in place at a rate drawn before the agreement."""

    _STATIC_NAMES = _fields.OPTIM_STATIC
    update = _refused("fusedopt.optim's {} steps with step(params, grads)")

    def _averages_in_kernel(self) -> bool:
        return False  # its kernels take no rows

    def _is_model(self, model: Any) -> bool:
        return False

    def _key(self, opt: Any, pending: bool) -> tuple[Any, tuple[Any, ...]]:
        """(step count, the objects of every other field) of the wrapped optimizer."""
        return _fields.optim_key(opt, None if self._drawn is None else self._drawn[0], pending)

    def _fields(self, count: Any, key: tuple[Any, ...]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        """(static, dynamic) fields of the wrapped optimizer that every rank must hold alike."""
        return _fields.optim_fields(count, key, self._opt)

    def _ready(self, lay: Layout, changed: Optional[BaseException]) -> Any:
        """The last of a step's local checks: what _adopt installs (a new layout, or a mask the
        caller assigned since the last step), then the rate drawn from the schedule (last:
        nothing after it fails)."""
        self._check_ready()
        prepared = self._prepare_same(lay) if lay is self._layout else self._prepare(lay, changed)
        self._drawn = optim_family.draw_lr(self._opt)
        return prepared

    def _check_ready(self) -> None:
        """Refuse, before a step's agreement, an optimizer this mode cannot step (none here)."""

    def _prepare_same(self, lay: Layout) -> Any:
        """What _adopt installs on the agreed layout (nothing here)."""
        return None

    def _undraw(self) -> None:
        if self._drawn is not None:
            optim_family.undraw_lr(self._opt, self._drawn)
            self._drawn = None

    def _holds_moments(self) -> bool:
        return bool(self._opt.state_arrays())

    def _state_trees(self) -> list[Any]:
        return list(self._opt.state_arrays().values())

    def _own_delta(self) -> Any:
        return None

    def _step_wrapped(self, params: Any, grads: Any) -> None:
        """The wrapped fusedopt.optim optimizer's step at the rate drawn (and agreed) before."""
        optim_family.step_at(self._opt, self._drawn[0], params, grads)
        self._drawn = None  # taken: the schedule stays where the step left it

    def _check_state(self, probe: Any, state: Mapping[str, Any]) -> Optional[dict[str, Any]]:
        """Load `state` into a copy; return this rank's cut of it (checked), once a layout is known."""
        probe.load_state_dict(state)
        return None if self._layout is None else optim_family.shard_state(state, self._layout)

    def _state_parts(self, state: dict[str, Any], lay: Layout) -> tuple[dict[str, Any], dict[str, list[Any]]]:
        """(the scalars of a state_dict, {slot: this mode's leaves of it in the layout's order})."""
        scalars = optim_family.without_leaves(state)
        paths = optim_family.leaf_paths(state)
        sources = {name: self._slot_leaves(state, name, paths, lay)
                   for name in (optim_family.slot_names(state) if paths else [])}
        flags = self._decay_flags(state)
        scalars.update(optim_family.whole_leaf_keys(lay, flags if paths else None))
        return scalars, sources

    def _loader(self, directory: str, lay: Layout, scalars: dict[str, Any], buffers: dict[str, np.ndarray],
                probe: Any) -> Callable[[], None]:
        """Check a sharded checkpoint's part on `probe`; return what loads it (cannot fail)."""
        state = self._state_from(scalars, lay, buffers)
        probe.load_state_dict(state)
        mask = self._mask_for(lay)
        opt = self._opt

        def load() -> None:
            opt.reset()
            opt.load_state_dict(state)
            self._set_mask(mask)
        return load

