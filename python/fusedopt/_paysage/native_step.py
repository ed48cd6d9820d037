"""The one interface between the paysage family's optimizers and their native step.

``Optimizer.update`` makes one call, ``memory._update(optimizer, rule, stepsize, model, grad)``,
of the builtin that :func:`bind` makes for the memory's native state
(``fusedopt._core.bound_update``, csrc/bindings/paysage_state.cpp ``State::update``).
What follows is everything that step knows of Python; it reads no other attribute, and
none whose name starts with an underscore (tests/test_native_step_interface.py checks it).

Arguments, handed over by Python:
    optimizer: the optimizer object (its attributes below).
    rule: its class's ``_rule``, a ``fusedopt._core.Rule`` (or its int value); converted
        once per rule object.
    stepsize: its schedule; read only while ``lr`` is None (before any ``update_lr()``).
    model: a model (has ``parameter_update``: it takes the delta) or a tree stepped in place.
    grad: the gradient tree.

Bound with the state: :func:`unset_rate`, the rate before any ``update_lr()``.

Read from the optimizer (:data:`READS`): its instance dict's value, else Python's lookup
(a class attribute, or the AttributeError a plain read raises).

Written into the optimizer's instance dict (:data:`WRITES`), together with the moments and
the model's update, never through Python code: a signal between two writes cannot leave
half a step (docs/threads.md).

Read elsewhere (:data:`OTHER_READS`): ``stepsize.value`` while ``lr`` is None, to find
:func:`unset_rate`'s cached answer; ``model.parameter_update`` (looked up once per model
class, and called with the delta); ``grad.layers`` and ``grad.weights`` of a paysage
Gradient (their lengths are check_convergence's n); and ``optimizer.__dict__``.
"""
from typing import Any, Callable

import numpy as np

from .. import _core
from . import checks as _checks

READS = ("lr", "ascent", "check_finite", "keep_delta", "step_count")
WRITES = ("step_count", "delta")
OTHER_READS = ("value", "parameter_update", "layers", "weights", "__dict__")


def unset_rate(stepsize: Any) -> tuple[Any, float]:
    """The rate of an update before any update_lr(): ``(key, float(float32(stepsize.value)))``.

    The native state keeps the rate for ``key`` (the value object) and uses it again while
    ``stepsize.value`` is that very object (np.float32() alone costs more than a small step);
    key is None for an array value, which may change in place and is read every time.

    Raises:
        TypeError: the schedule has no current value, or its value is not a real scalar.
    """
    value = getattr(stepsize, "value", None)
    if value is None:
        raise TypeError(f"call update_lr() before update(): the schedule "
                        f"{type(stepsize).__name__} has no current value")
    rate = float(_checks.rate(f"{type(stepsize).__name__}.value (the rate before any update_lr())", value))
    return (None if isinstance(value, np.ndarray) else value), rate


def bind(state: "_core.State") -> Callable[..., None]:
    """``update(optimizer, rule, stepsize, model, grad)``: the native step on ``state``."""
    return _core.bound_update(state, unset_rate)
