"""Validation of the optim family's hyper-parameters (fusedopt.optim).

Each check returns the value to store, or raises TypeError (wrong kind of
value) or ValueError (right kind, out of range) naming the parameter.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import numpy as np

Check = Callable[[str, Any], Any]


def _real(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return out


def non_negative(name: str, value: Any) -> float:
    """A finite real >= 0."""
    out = _real(name, value)
    if out < 0.0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return out


def finite(name: str, value: Any) -> float:
    """Any finite real."""
    return _real(name, value)


def unit_open(name: str, value: Any) -> float:
    """A real in [0, 1)."""
    out = _real(name, value)
    if not 0.0 <= out < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return out


def unit_closed(name: str, value: Any) -> float:
    """A real in [0, 1]."""
    out = _real(name, value)
    if not 0.0 <= out <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return out


def flag(name: str, value: Any) -> bool:
    """A bool (numpy's included)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


# The check of each domain a native hyper-parameter is declared with (csrc/optim/rules.h,
# fusedopt._core.optim_hyper_fields).
DOMAINS: dict[str, Check] = {"FINITE": finite, "NON_NEGATIVE": non_negative, "UNIT_OPEN": unit_open,
                             "UNIT_CLOSED": unit_closed, "FLAG": flag}


def max_norm(name: str, value: Any) -> float | None:
    """None (no clipping) or a finite real > 0."""
    if value is None:
        return None
    out = _real(name, value)
    if not out > 0.0:
        raise ValueError(f"{name} must be None or > 0, got {value!r}")
    return out
