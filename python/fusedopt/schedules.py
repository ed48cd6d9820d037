"""Learning-rate schedules, as paysage 0.2.1's ``schedules`` module behaves.

A schedule is an iterator: ``next(schedule)`` returns the current value as a
float32 scalar, then advances. Values are kept as Python/NumPy float64 between
steps exactly as paysage keeps them, so sequences match it bit for bit.

A value must be a real scalar (a Python or numpy int or float, or a 0-d array of one);
``next()`` raises TypeError, naming the schedule and the value, for anything else.
"""
from __future__ import annotations

import sys
from typing import Any, Optional, Sequence, Union

import numpy as np

from . import _docs
from ._paysage import checks as _checks

# A schedule's numbers: Python or numpy reals (their arithmetic rounds differently, and each is
# kept as given so that sequences match paysage's bit for bit).
Value = Union[float, np.floating[Any], np.integer[Any]]

# The schedules a state may name; Schedule and _Decay are bases, not schedules.
_SCHEDULES = ("Constant", "Linear", "Step", "ExponentialDecay", "PowerLawDecay")

__all__ = ["Schedule", "Constant", "Linear", "Step", "ExponentialDecay", "PowerLawDecay", "schedule_from_config"]


def is_schedule_class(cls: object) -> bool:
    """Whether `cls` is one of the schedules of this module (not the bases Schedule or _Decay)."""
    return (isinstance(cls, type) and cls.__name__ in _SCHEDULES
            and getattr(sys.modules[__name__], cls.__name__) is cls)


def schedule_from_config(config: Sequence[Any]) -> Schedule:
    """Build a schedule from ``[class name, attributes]`` (see ``Schedule.get_config``).

    Raises:
        ValueError: the name is not one of Constant, Linear, Step, ExponentialDecay, PowerLawDecay.
    """
    name, attrs = config
    cls = getattr(sys.modules[__name__], name, None) if isinstance(name, str) else None
    if not is_schedule_class(cls):
        raise ValueError(f"unknown schedule class {name!r} (one of {', '.join(_SCHEDULES)} expected)")
    attrs = dict(attrs)
    extra = {k: attrs.pop(k) for k in cls._state_attrs if k in attrs}
    schedule: Schedule = cls(**attrs)
    for key, val in extra.items():  # counters are state, not constructor arguments
        setattr(schedule, key, val)
    return schedule


class Schedule:
    """Base class: configuration, copying and value setting of schedules.

    Attributes:
        initial: the value ``reset()`` goes back to.
        value: the current value, which the next ``next()`` returns as float32.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _docs.complete(cls, "")

    _state_attrs: tuple[str, ...] = ()  # attributes restored after construction
    initial: Any
    value: Any

    def get_config(self) -> list[Any]:
        """``[class name, dict of the schedule's attributes]``."""
        return [self.__class__.__name__, dict(self.__dict__)]

    def copy(self) -> Schedule:
        """A new schedule with this one's configuration and current value."""
        return schedule_from_config(self.get_config())

    def reset(self) -> None:
        """Set the value back to ``initial``."""
        self.value = self.initial

    def set_value(self, value: Value) -> None:
        """Set the current value."""
        self.value = value

    def __iter__(self) -> Schedule:
        return self

    def __next__(self) -> np.float32:
        raise NotImplementedError

    def __repr__(self) -> str:
        attrs = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"{self.__class__.__name__}({attrs})"

    def _current(self) -> np.float32:
        """float32(value), refusing what is no real scalar (np.float32 would parse "0.5")."""
        return _checks.rate(f"{type(self).__name__}.value", self.value)

    def _start(self, value: Optional[Value]) -> None:
        if value is None:
            self.reset()
        else:
            self.value = value


class Constant(Schedule):
    """Constant rate: x(t) = initial.

    Args:
        initial: the rate.
        value: the current value (default: ``initial``).
    """

    def __init__(self, initial: Value = 1.0, value: Optional[Value] = None) -> None:
        self.initial = initial
        self._start(value)

    def __next__(self) -> np.float32:
        return self._current()


class Linear(Schedule):
    """Linear rate x(t) = initial - delta * t, clipped to [minval, maxval] after each step
    (so the first value is never clipped).

    Args:
        initial: the first value.
        delta: subtracted at each step.
        value: the current value (default: ``initial``).
        minval, maxval: the clipping range.
    """

    def __init__(self, initial: Value = 1.0, delta: Value = 0.0, value: Optional[Value] = None,
                 minval: Value = 0.0, maxval: Value = 1.0) -> None:
        self.initial = initial
        self.delta = delta
        self.minval = minval
        self.maxval = maxval
        self._start(value)

    def __next__(self) -> np.float32:
        current = self._current()
        self.value = np.clip(self.value - self.delta, self.minval, self.maxval)
        return current


class Step(Schedule):
    """``initial`` while the call counter is <= ``steps`` (so for steps + 2 calls), then ``final``.

    Args:
        initial: the value of the first steps.
        final: the value after them.
        steps: the counter value up to which ``initial`` is kept.
        value: the current value (default: ``initial``).
    """

    _state_attrs = ("t",)

    def __init__(self, initial: Value = 1.0, final: Value = 0.0, steps: int = 1,
                 value: Optional[Value] = None) -> None:
        self.initial = initial
        self.final = final
        self.steps = steps
        self.t = 0
        self._start(value)

    def reset(self) -> None:
        """Set the value back to ``initial`` and the counter to 0."""
        self.value = self.initial
        self.t = 0

    def __next__(self) -> np.float32:
        current = self._current()
        self.value = self.initial if self.t <= self.steps else self.final
        self.t += 1
        return current


class _Decay(Schedule):
    """A schedule with an initial value and a decay coefficient."""

    def __init__(self, initial: Value = 1.0, coefficient: Value = 0.9, value: Optional[Value] = None) -> None:
        self.initial = initial
        self.coefficient = coefficient
        self._start(value)


class ExponentialDecay(_Decay):
    """x(t + 1) = coefficient * x(t).

    Args:
        initial: the first value.
        coefficient: the factor of each step.
        value: the current value (default: ``initial``).
    """

    def __next__(self) -> np.float32:
        current = self._current()
        self.value *= self.coefficient
        return current


class PowerLawDecay(_Decay):
    """1 / x(t + 1) = 1 / x(t) + coefficient.

    Args:
        initial: the first value.
        coefficient: added to the reciprocal at each step.
        value: the current value (default: ``initial``).
    """

    def __next__(self) -> np.float32:
        current = self._current()
        self.value = 1 / (1 / self.value + self.coefficient)
        return current
