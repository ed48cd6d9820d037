"""What every rank must hold alike for a data-parallel step to be correct and collective.

A step's agreement (``_agree.agree``) compares one 62-bit hash per rank. It hashes two
tuples: the *static* fields (the optimizer's class, rule and hyper-parameters, its flags,
the schedule's kind), which rarely change and are hashed again only when they do, and the
*dynamic* ones (step count, this step's rate, the schedule's position, whether state
exists), numbers packed as float64 bits, so NaN and -0.0 compare by their bits and nothing
depends on Python's per-process hash seed. On a mismatch every rank describes its fields
by name (``describe``) and ``mismatch_message`` says which differ and on which ranks.
"""
from __future__ import annotations

import hashlib
import numbers
import struct
from typing import Any, Optional

import numpy as np

_MASK = (1 << 62) - 1  # so that a hash and its negation fit an int64 for a MAX allreduce
_NUMBER = (int, float, bool, np.floating, np.integer, np.bool_)

PAYSAGE_STATIC = ("optimizer", "rule", "mean_weight", "mean_square_weight", "ascent", "check_finite",
                  "keep_delta", "tolerance", "stepsize schedule")
TEXTBOOK_STATIC = ("optimizer", "hyper-parameters", "max_grad_norm", "check_finite", "lr kind")
DYNAMIC = ("step_count", "lr", "optimizer state exists", "loaded state waiting")


def schedule_position(schedule: Any) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """(names, values) of a schedule's numeric attributes: where it is and what it will return."""
    items = [(k, v) for k, v in vars(schedule).items() if isinstance(v, _NUMBER)] if hasattr(schedule, "__dict__") else []
    return tuple(k for k, _ in items), tuple(v for _, v in items)


def _rate(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def paysage(opt: Any, pending: bool) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(static, dynamic) fields of a fusedopt.optimizers optimizer. `pending`: the wrapper
    holds moments waiting for a layout."""
    d, mem, schedule = opt.__dict__, getattr(opt, "_memory", None), opt._stepsize
    names, position = schedule_position(schedule)
    static = (type(opt).__name__, opt._rule_code, None if mem is None else mem._w, None if mem is None else mem._w2,
              d.get("ascent"), d.get("check_finite"), d.get("keep_delta"), d.get("tolerance"),
              (type(schedule).__name__, names))
    lr = d.get("lr")
    moments = mem is not None and (mem._m is not None or mem._v is not None or mem._pending is not None)
    dynamic = (d.get("step_count", 0), _rate(lr if lr is not None else getattr(schedule, "value", None)),
               moments, pending, *position)
    return static, dynamic


def textbook(opt: Any, lr: Optional[float], pending: bool) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(static, dynamic) fields of a fusedopt.optim optimizer; `lr`: this step's rate, already
    drawn from its schedule or callable (None outside a step)."""
    schedule = opt.lr
    kind: Any = type(schedule).__name__
    position: tuple[Any, ...] = ()
    if not isinstance(schedule, numbers.Real):
        names, position = schedule_position(schedule)
        kind = (kind, getattr(schedule, "__qualname__", ""), names)
    static = (type(opt).__name__, tuple(opt._hyper_values().items()), opt.max_grad_norm, opt.check_finite, kind)
    rate = _rate(schedule if lr is None and isinstance(schedule, numbers.Real) else lr)
    dynamic = (opt.step_count, rate, bool(opt.state_arrays()), pending, *position)
    return static, dynamic


def static_hash(*parts: Any) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MASK


_FORMATS: dict[int, struct.Struct] = {}


def combined_hash(static: int, dynamic: tuple[Any, ...]) -> int:
    """The hash a step agrees on: the static hash and the dynamic numbers' float64 bits."""
    fmt = _FORMATS.get(len(dynamic))
    if fmt is None:
        fmt = _FORMATS[len(dynamic)] = struct.Struct(f"<q{len(dynamic)}d")
    digest = hashlib.blake2b(fmt.pack(static, *dynamic), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MASK


def describe(static_names: tuple[str, ...], static: tuple[Any, ...], dynamic: tuple[Any, ...]) -> list[tuple[str, str]]:
    """(name, value as text) of every field (the schedule's position as one entry)."""
    out = [(n, repr(v)) for n, v in zip(static_names, static)]
    out += [(n, repr(v)) for n, v in zip(DYNAMIC, dynamic)]
    if len(dynamic) > len(DYNAMIC):
        out.append(("schedule position", repr(tuple(float(x) for x in dynamic[len(DYNAMIC):]))))
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
