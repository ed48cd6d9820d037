"""What every rank must hold alike for a data-parallel step to be correct and collective.

A step's agreement (``_agree.agree``) compares one 62-bit hash per rank. It hashes two
tuples: the *static* fields (the optimizer's class, rule and hyper-parameters, its flags,
the schedule's kind), which rarely change and are hashed again only when they do, and the
*dynamic* ones (step count, this step's rate, the schedule's position, whether state
exists), numbers taken as the bits of their float64 values (so NaN and -0.0 compare by their
bits) and hashed as a tuple of ints, whose hash, unlike a string's, is the same in every
process. On a mismatch every rank describes its fields
by name (``describe``) and ``mismatch_message`` says which differ and on which ranks.
"""
from __future__ import annotations

import hashlib
import operator
import struct
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np


MASK = (1 << 62) - 1  # so that a hash and its negation fit an int64 for a MAX allreduce

PAYSAGE_STATIC = ("optimizer", "mean_weight, mean_square_weight", "ascent", "check_finite", "keep_delta",
                  "tolerance", "stepsize schedule")
OPTIM_STATIC = ("optimizer", "hyper-parameters", "max_grad_norm", "check_finite", "lr kind")
DYNAMIC = ("step_count", "lr", "optimizer state exists", "loaded state waiting")


def _rate(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


# Read in one C call per dict, every step (the step's own data has just left the caches, and
# each Python-level attribute read then costs a fraction of a microsecond).
_OPT_FIELDS = operator.itemgetter("ascent", "check_finite", "keep_delta", "tolerance", "_stepsize", "lr", "step_count")
_OPT_NAMES = ("ascent", "check_finite", "keep_delta", "tolerance", "stepsize", "lr", "step_count")
_WEIGHTS = operator.itemgetter("_w32", "_w2_32")


# Values that can change in place: a key holds a new object for them, so that it never matches
# the last step's (their fields are then made again every step).
_MUTABLE = (np.ndarray, list, dict, bytearray)


def _held(value: Any) -> Any:
    return object() if isinstance(value, _MUTABLE) else value


def paysage_key(opt: Any, pending: bool) -> tuple[Any, tuple[Any, ...]]:
    """(step count, a key) of a fusedopt.optimizers optimizer: a step whose key holds the same
    objects (identity) as the last step's has the same fields but the count (see
    paysage_fields). The optimizer's and its memory's change counts (``_version``, bumped by
    every assignment of a setting, the schedule, the memory or a weight) stand for their
    settings; what changes without an assignment is read every step: whether moments exist (the
    step makes them), the schedule's value (``next()`` moves it) and `pending` (the wrapper holds
    moments waiting for a layout). Without the counts: every raw object (_paysage_objects)."""
    d = opt.__dict__
    version = d.get("_version")
    mem = d.get("memory", d.get("_memory"))
    if version is not None and mem is not None:
        md = mem.__dict__
        try:
            count, schedule, mem_version = d["step_count"], d["_stepsize"], md["_version"]
            moments = md["_native"].plan is not None or md.get("_pending") is not None
        except KeyError:  # kept elsewhere (a subclass's own)
            return _paysage_objects(opt, pending)
        value = getattr(schedule, "value", None)
        if isinstance(value, _MUTABLE):  # (_held, inline: this runs every step)
            value = object()
        return count, (opt, version, mem, mem_version, moments, pending, value)
    return _paysage_objects(opt, pending)


def _paysage_objects(opt: Any, pending: bool) -> tuple[Any, tuple[Any, ...]]:
    """(step count, the raw objects every other field is made of) of a fusedopt.optimizers optimizer."""
    d = opt.__dict__
    try:
        ascent, finite, keep, tolerance, schedule, lr, count = _OPT_FIELDS(d)
    except KeyError:  # a subclass that keeps them elsewhere
        ascent, finite, keep, tolerance, schedule, lr, count = (getattr(opt, n, None) for n in _OPT_NAMES)
    mem = d.get("memory", d.get("_memory"))
    if mem is None:
        mem = getattr(opt, "_memory", None)
    # A structure is held from the first step until reset() (with the moments, if the rule has
    # any): read from the native state itself (the memory's property is a Python call more, slow
    # once the step's data has evicted its code from the caches).
    w, w2, moments = None, None, False  # (the weights as two items: the same objects each step)
    if mem is not None:
        md = mem.__dict__
        try:
            w, w2 = _WEIGHTS(md)
            moments = md["_native"].plan is not None or md.get("_pending") is not None
        except KeyError:  # a memory that keeps them elsewhere
            w, w2 = mem.mean_weight, mem.mean_square_weight
            moments = mem._plan is not None or mem._pending is not None
    # Where a schedule is: its current value (fusedopt's schedules return it, or a rate derived
    # from it, next). Only the value: a step's rate is agreed on by itself, and the rest of a
    # schedule's attributes would cost more each step than they tell (a Step schedule's
    # counter shows in its value when it matters).
    value = getattr(schedule, "value", None)
    return count, (type(opt), mem is None, w, w2, ascent, finite, keep, tolerance, schedule, lr, moments, pending,
                   _held(value))


def paysage_fields(count: Any, key: tuple[Any, ...]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(static, dynamic) fields of a fusedopt.optimizers optimizer, from paysage_key's."""
    if not isinstance(key[0], type):  # the change counts' key: (optimizer, ..., pending at 5, ...)
        key = _paysage_objects(key[0], key[5])[1]
    kind, no_memory, w, w2, ascent, finite, keep, tolerance, schedule, lr, moments, pending, value = key
    static = (kind, None if no_memory else (w, w2), ascent, finite, keep, tolerance, type(schedule))
    if type(value) is object:  # (a mutable value's stand-in: read it)
        value = getattr(schedule, "value", None)
    position = () if value is None else (value,)
    return static, (count, lr if lr is not None else _rate(value), moments, pending, *position)


def paysage(opt: Any, pending: bool) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(static, dynamic) fields of a fusedopt.optimizers optimizer."""
    return paysage_fields(*paysage_key(opt, pending))


def optim_key(opt: Any, lr: Optional[float], pending: bool) -> tuple[Any, tuple[Any, ...]]:
    """(step count, a key) of a fusedopt.optim optimizer, as paysage_key's; `lr`: this step's
    rate, already drawn from its schedule or callable (None outside a step). Its settings are
    those in its ``_values`` dict: the dict itself (load_state_dict puts in another) and the
    change count ``_version`` (bumped by every write of an entry) stand for them, or, without a
    count, all their values (a superset of those agreed on: a change of any makes the fields
    again)."""
    schedule = opt._lr
    state = opt._state is not None or opt._pending is not None  # (state_arrays() would build views)
    value = None if type(schedule) is float else getattr(schedule, "value", None)
    if isinstance(value, _MUTABLE):  # (_held, inline)
        value = object()
    # getattr, not opt.__dict__: reading the dict makes CPython 3.11 keep the optimizer's
    # attributes where its step's attribute reads cannot specialize (fusedopt.optim._base._bump).
    version = getattr(opt, "_version", None)
    if version is None:
        return opt.step_count, (type(opt), schedule, lr, state, pending, value, *opt._values.values())
    return opt.step_count, (type(opt), schedule, lr, state, pending, value, opt._values, version)


def optim_fields(count: Any, key: tuple[Any, ...], opt: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(static, dynamic) fields of a fusedopt.optim optimizer, from optim_key's (`opt`: the
    optimizer, for its hyper-parameters by name)."""
    kind, schedule, lr, state, pending, value = key[:6]
    if type(value) is object:  # (a mutable value's stand-in: read it)
        value = getattr(schedule, "value", None)
    name: Any = type(schedule).__name__
    position: tuple[Any, ...] = ()
    if type(schedule) is not float:  # (a constant rate is stored as a float)
        position = () if value is None else (value,)
        name = (name, getattr(schedule, "__qualname__", ""))
    static = (kind.__name__, tuple(opt._hyper_values().items()), opt.max_grad_norm, opt.check_finite, name)
    rate = _rate(schedule if lr is None and type(schedule) is float else lr)
    return static, (count, rate, state, pending, *position)


def optim(opt: Any, lr: Optional[float], pending: bool) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(static, dynamic) fields of a fusedopt.optim optimizer."""
    return optim_fields(*optim_key(opt, lr, pending), opt)


def state_hash(state: Mapping[str, Any]) -> int:
    """A 62-bit hash of a state dict's content, to check that every rank loads the same state.
    Values go through np.asarray, so a state as saved and as np.load gives it back hash alike."""
    h = hashlib.blake2b(digest_size=8)
    for key in sorted(state):
        value = np.asarray(state[key])
        h.update(f"{key!r}{value.dtype.str}{value.shape}".encode())
        h.update(value.tobytes() if value.dtype.kind != "O" else repr(value).encode())
    return int.from_bytes(h.digest(), "little") & MASK


def static_hash(*parts: Any) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & MASK


_FORMATS: dict[int, struct.Struct] = {}


def combined_hash(static: int, dynamic: tuple[Any, ...]) -> int:
    """The static hash and the dynamic numbers' float64 bits (as one int: an int's hash, unlike
    that of bytes, is the same in every process), hashed."""
    fmt = _FORMATS.get(len(dynamic))
    if fmt is None:
        fmt = _FORMATS[len(dynamic)] = struct.Struct(f"<{len(dynamic)}d")
    try:
        bits = int.from_bytes(fmt.pack(*dynamic), "little")
    except (struct.error, TypeError, ValueError, OverflowError):  # a schedule attribute that is no number
        return combined_hash(static, _numbers(dynamic))
    return hash((static, bits)) & MASK


ODD = 0x9E3779B97F4A7C15  # odd: multiplying by it is one-to-one modulo 2**62


def with_count(base: int, count: Any) -> int:
    """The hash a step agrees on: `base` (every other field's) with the step count mixed in,
    one-to-one for a given base (modulo 2**62). A count is taken as the number it is (7 and 7.0
    alike); one that is no integer, by its float64 bits."""
    if type(count) is not int:
        try:
            number = float(count)
        except (TypeError, ValueError, OverflowError):
            number = float("nan")
        if number.is_integer():
            count = int(number)
        else:
            count = (1 << 64) | int.from_bytes(struct.pack("<d", number), "little")
    return (base ^ (count * ODD)) & MASK


def _numbers(values: tuple[Any, ...]) -> tuple[float, ...]:
    """The values as floats: a number as itself, anything else as NaN (its name is in the static fields)."""
    out = []
    for v in values:
        try:
            out.append(float(v))
        except (TypeError, ValueError, OverflowError):
            out.append(float("nan"))
    return tuple(out)


def describe(static_names: tuple[str, ...], static: tuple[Any, ...], dynamic: tuple[Any, ...]) -> list[tuple[str, str]]:
    """(name, value as text) of every field (the schedule's position as one entry)."""
    out = [(n, v.__name__ if isinstance(v, type) else repr(v)) for n, v in zip(static_names, static)]
    out += [(n, repr(v)) for n, v in zip(DYNAMIC, dynamic)]
    if len(dynamic) > len(DYNAMIC):
        out.append(("schedule value", repr(_numbers(dynamic[len(DYNAMIC):]))))
    return out


def _ranks(ranks: list[int]) -> str:
    return f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"


def mismatch_message(every: list[list[tuple[str, str]]], limit: int = 4) -> str:
    """What differs across the ranks' descriptions, naming the ranks of each value (the same
    text on every rank: it is made from the same all-gathered descriptions)."""
    tables = [dict(desc) for desc in every]
    names: list[str] = []
    for desc in every:
        names += [n for n, _ in desc if n not in names]
    parts = []
    for name in names:
        values: dict[str, list[int]] = {}
        for r, table in enumerate(tables):
            values.setdefault(table.get(name, "(nothing)"), []).append(r)
        if len(values) > 1:
            parts.append(f"{name}: " + "; ".join(f"{v} on {_ranks(rs)}" for v, rs in values.items()))
    if not parts:
        return "the ranks' steps differ (a layout changed on some ranks but not on others)"
    more = f" (and {len(parts) - limit} more)" if len(parts) > limit else ""
    return "; ".join(parts[:limit]) + more
