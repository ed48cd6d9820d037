"""Typed reads of the entries of a saved state, shared by both optimizer families' formats.

np.load gives scalars back as 0-d arrays and lists of strings as str arrays; these
accept both forms and raise TypeError/ValueError naming the entry otherwise.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
import numbers
from typing import Any, Optional

import numpy as np


def scalar(value: Any) -> Any:
    """A 0-d array's element, anything else as it is."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value[()]
    return value


def get(state: Mapping[str, Any], key: str, fmt: str, version: int) -> Any:
    """state[key], or a ValueError saying which key of which format is missing."""
    try:
        return state[key]
    except KeyError:
        raise ValueError(f"not a {fmt} state (version {version}): the key {key!r} is missing") from None


def as_str(value: Any, key: str) -> str:
    value = scalar(value)
    if not isinstance(value, str):
        raise TypeError(f"state[{key!r}] must be a string, got {type(value).__name__}")
    return str(value)


def as_bool(value: Any, key: str) -> bool:
    value = scalar(value)
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"state[{key!r}] must be a bool, got {type(value).__name__}")
    return bool(value)


def as_int(value: Any, key: str) -> int:
    value = scalar(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"state[{key!r}] must be an integer, got {type(value).__name__}")
    return int(value)


def as_float(value: Any, key: str) -> float:
    value = scalar(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"state[{key!r}] must be a real number, got {type(value).__name__}")
    return float(value)


def as_strs(value: Any, key: str, n: Optional[int] = None) -> list[str]:
    if isinstance(value, (list, tuple)):
        value = strs(value)
    if not (isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind == "U"):
        raise TypeError(f"state[{key!r}] must be a 1-d array of strings, got {type(value).__name__}")
    if n is not None and len(value) != n:
        raise ValueError(f"state[{key!r}] has {len(value)} entries, expected {n}")
    return [str(s) for s in value]


def snapshot(leaf: np.ndarray, dtype: Any = None) -> np.ndarray:
    """A C-contiguous copy of an array's values that costs the memory the array holds:
    a broadcast (zero-stride) axis is copied once and broadcast again, read-only. A
    loaded state is checked against the layout before it is expanded, so huge
    broadcast views are refused by their shape instead of running out of memory."""
    compact = leaf[tuple(slice(0, 1) if stride == 0 and n > 1 else slice(None)
                         for stride, n in zip(leaf.strides, leaf.shape))]
    out = np.array(compact, dtype=dtype, order="C", copy=True)
    return out if out.shape == leaf.shape else np.broadcast_to(out, leaf.shape)


def strs(items: Sequence[str]) -> np.ndarray:
    """A 1-d str array (np.array([]) alone would be float64)."""
    items = list(items)
    return np.array(items, dtype=str) if items else np.zeros(0, dtype=str)


def check_header(state: Any, kind: str, fmt: str, version: int, oldest: Optional[int] = None) -> int:
    """Refuse what is not a state of format `fmt`, a version from `oldest` (default: this
    `version` only) to `version`, for a `kind` (a class name); returns the saved version."""
    if not isinstance(state, Mapping):
        raise TypeError(f"a state must be a mapping (a dict or np.load's NpzFile), got {type(state).__name__}")
    saved_fmt = as_str(get(state, "format", fmt, version), "format")
    if saved_fmt != fmt:
        raise ValueError(f"not a {fmt} state: format is {saved_fmt!r}, expected {fmt!r}")
    saved_version = as_int(get(state, "version", fmt, version), "version")
    first = version if oldest is None else oldest
    if not first <= saved_version <= version:
        reads = f"version {version}" if first == version else f"versions {first} to {version}"
        raise ValueError(f"state format version {saved_version} is not supported: this fusedopt reads {reads}")
    saved = as_str(get(state, "kind", fmt, version), "kind")
    if saved != kind:
        raise ValueError(f"the state was saved by {saved}, it cannot be loaded into {kind} "
                         f"(load it into a new {saved}(), or train this {kind} from its start)")
    return saved_version


class Format:
    """The typed readers of one state format (its name and version in every error)."""

    def __init__(self, fmt: str, version: int, oldest: Optional[int] = None) -> None:
        self.fmt, self.version, self.oldest = fmt, version, oldest

    def header(self, kind: str) -> dict[str, Any]:
        """The entries that open every state of a `kind` (a class name)."""
        return {"format": self.fmt, "version": self.version, "kind": kind}

    def check_header(self, state: Any, kind: str) -> int:
        return check_header(state, kind, self.fmt, self.version, self.oldest)

    def get(self, state: Mapping[str, Any], key: str) -> Any:
        return get(state, key, self.fmt, self.version)

    def get_str(self, state: Mapping[str, Any], key: str) -> str:
        return as_str(self.get(state, key), key)

    def get_bool(self, state: Mapping[str, Any], key: str) -> bool:
        return as_bool(self.get(state, key), key)

    def get_int(self, state: Mapping[str, Any], key: str) -> int:
        return as_int(self.get(state, key), key)

    def get_float(self, state: Mapping[str, Any], key: str) -> float:
        return as_float(self.get(state, key), key)

    def get_strs(self, state: Mapping[str, Any], key: str, n: Optional[int] = None) -> list[str]:
        return as_strs(self.get(state, key), key, n)
