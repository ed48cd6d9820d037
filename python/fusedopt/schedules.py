"""Learning-rate schedules, as paysage 0.2.1's ``schedules`` module behaves.

A schedule is an iterator: ``next(schedule)`` returns the current value as a
float32 scalar, then advances. Values are kept as Python/NumPy float64 between
steps exactly as paysage keeps them, so sequences match it bit for bit.
"""
import sys

import numpy as np

from . import _checks

# The schedules a state may name; Schedule and _Decay are bases, not schedules.
_SCHEDULES = ("Constant", "Linear", "Step", "ExponentialDecay", "PowerLawDecay")

__all__ = ["Schedule", "Constant", "Linear", "Step", "ExponentialDecay", "PowerLawDecay", "schedule_from_config"]


def is_schedule_class(cls):
    """Whether `cls` is one of the schedules of this module (not the bases Schedule or _Decay)."""
    return isinstance(cls, type) and cls.__name__ in _SCHEDULES and getattr(sys.modules[__name__], cls.__name__) is cls


def schedule_from_config(config):
    """Build a schedule from ``[class name, attributes]`` (see ``get_config``)."""
    name, attrs = config
    cls = getattr(sys.modules[__name__], name, None) if isinstance(name, str) else None
    if not is_schedule_class(cls):
        raise ValueError(f"unknown schedule class {name!r} (one of {', '.join(_SCHEDULES)} expected)")
    attrs = dict(attrs)
    extra = {k: attrs.pop(k) for k in cls._state_attrs if k in attrs}
    schedule = cls(**attrs)
    for key, val in extra.items():  # counters are state, not constructor arguments
        setattr(schedule, key, val)
    return schedule


class Schedule:
    """Base class: configuration, copying and value setting of schedules."""

    _state_attrs = ()  # attributes restored after construction

    def get_config(self):
        """``[class name, dict of the schedule's attributes]``."""
        return [self.__class__.__name__, dict(self.__dict__)]

    def copy(self):
        """A new schedule with this one's configuration and current value."""
        return schedule_from_config(self.get_config())

    def reset(self):
        """Set the value back to ``initial``."""
        self.value = self.initial

    def set_value(self, value):
        """Set the current value."""
        self.value = value

    def __iter__(self):
        return self

    def __repr__(self):
        attrs = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"{self.__class__.__name__}({attrs})"

    def _current(self):
        """float32(value), refusing what is no real scalar (np.float32 would parse "0.5")."""
        return _checks.rate(f"{type(self).__name__}.value", self.value)

    def _start(self, value):
        if value is None:
            self.reset()
        else:
            self.value = value


class Constant(Schedule):
    """Constant rate: x(t) = initial."""

    def __init__(self, initial=1.0, value=None):
        self.initial = initial
        self._start(value)

    def __next__(self):
        return self._current()


class Linear(Schedule):
    """Linear rate x(t) = initial - delta * t, clipped to [minval, maxval] after each step."""

    def __init__(self, initial=1.0, delta=0.0, value=None, minval=0.0, maxval=1.0):
        self.initial = initial
        self.delta = delta
        self.minval = minval
        self.maxval = maxval
        self._start(value)

    def __next__(self):
        current = self._current()
        self.value = np.clip(self.value - self.delta, self.minval, self.maxval)
        return current


class Step(Schedule):
    """``initial`` while the call counter is <= ``steps`` (so for steps + 2 calls), then ``final``."""

    _state_attrs = ("t",)

    def __init__(self, initial=1.0, final=0.0, steps=1, value=None):
        self.initial = initial
        self.final = final
        self.steps = steps
        self.t = 0
        self._start(value)

    def reset(self):
        """Set the value back to ``initial`` and the counter to 0."""
        self.value = self.initial
        self.t = 0

    def __next__(self):
        current = self._current()
        self.value = self.initial if self.t <= self.steps else self.final
        self.t += 1
        return current


class _Decay(Schedule):
    """A schedule with an initial value and a decay coefficient."""

    def __init__(self, initial=1.0, coefficient=0.9, value=None):
        self.initial = initial
        self.coefficient = coefficient
        self._start(value)


class ExponentialDecay(_Decay):
    """x(t + 1) = coefficient * x(t)."""

    def __next__(self):
        current = self._current()
        self.value *= self.coefficient
        return current


class PowerLawDecay(_Decay):
    """1 / x(t + 1) = 1 / x(t) + coefficient."""

    def __next__(self):
        current = self._current()
        self.value = 1 / (1 / self.value + self.coefficient)
        return current
