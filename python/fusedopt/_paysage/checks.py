"""Checks of the values that optimizers, memories and states accept.

Each returns the value to store or raises TypeError/ValueError naming what was
given; none has side effects, so callers check everything before they change
anything.
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np


def weight(name: str, value: Any) -> np.float32:
    """A moment weight: a real number whose float32 value lies in [0, 1)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number in [0, 1), got {type(value).__name__}")
    with np.errstate(over="ignore"):  # a huge value is reported below, not as a warning
        result = np.float32(value)  # the kernels compute with the float32 value
    if not 0.0 <= result < 1.0:
        raise ValueError(f"{name} must be in [0, 1) as a float32, got {value!r}"
                         + (" (it rounds to 1.0)" if result == 1.0 else ""))
    return result


def tolerance(name: str, value: Any) -> Any:
    """A convergence tolerance: a real number >= 0 (inf is allowed: always converged)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number >= 0, got {type(value).__name__}")
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return value


def flag(name: str, value: Any) -> bool:
    """A switch: True or False (numpy's bool too); anything else is refused rather than
    read as truthy, so that ``check_finite = "no"`` cannot turn the check on."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r:.60}")
    return bool(value)


def count(name: str, value: Any) -> int:
    """A step count: an integer >= 0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= 0, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def rate(what: str, value: Any) -> np.float32:
    """A learning rate as the kernels take it: the float32 value of a real scalar (a Python or
    numpy int or float, or a 0-d array of one). A value beyond float32's range becomes +-inf,
    as np.float32() makes it; non-finite rates are the caller's to judge (check_finite)."""
    scalar = value[()] if isinstance(value, np.ndarray) and value.ndim == 0 else value
    if isinstance(scalar, (bool, np.bool_)) or not isinstance(scalar, numbers.Real):
        raise TypeError(f"{what} must be a real scalar (a Python or numpy int or float, or a 0-d array of one), "
                        f"got {type(value).__name__} {_short(value)}")
    try:
        with np.errstate(over="ignore"):
            return np.float32(scalar)
    except OverflowError:  # a Python int beyond float64
        return np.float32(np.inf if scalar > 0 else -np.inf)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
