"""The versioned state format of optimizers and gradient memories.

This module only reads and writes plain data: it knows the format, not the
classes. Each class says what its state is (``GradientMemory`` its weights and
moments, ``Optimizer`` its scalars, schedule and memory) by building and parsing
these entries itself, and commits a parsed state only once all of it is
checked.

``state_dict()`` is made of plain numpy arrays and Python scalars only, so that
``np.savez`` stores it and ``np.load`` reads it back without pickle. Format
version 1 (every key below; after ``np.load`` scalars come back as 0-d arrays,
which loading accepts):

    format "fusedopt", version 1, kind (class name: "ADAM", ..., "GradientMemory")
    mean_weight, mean_square_weight          float (exact float32 values)
    leaf_paths, leaf_dtypes                  str arrays, one entry per leaf
    has_mean_gradient, has_mean_square_gradient   bool
    mean_gradient.<i>, mean_square_gradient.<i>   the moment of leaf i (its shape)
  optimizers only:
    tolerance float, ascent / check_finite / keep_delta bool,
    lr float and lr_set bool (lr is None before the first update_lr()),
    step_count int,
    schedule (class name), schedule.names, schedule.types (str arrays) and
    schedule.<name> for each attribute; the type tag keeps Python floats apart
    from numpy float32/float64 scalars, whose arithmetic rounds differently.

A plain state has no container types, so the tree structure of the moments is
rebuilt from the gradient: loaded moments are matched by path, shape and
dtype against the current structure when there is one, else against the
gradient of the next step (until then ``mean_gradient`` reads None).

A pickle is that same state plus what a plain state cannot hold: the tree
structure (as a flat list of nodes, see ``structure_of``, so that pickle and
deepcopy never recurse as deep as the tree is nested), the per-leaf sums of the
convergence check, ``delta`` and a schedule of any class.
"""
from __future__ import annotations

from collections.abc import Mapping
import math
import numbers
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np

from .. import _core, _state_fields as _fields, schedules
from . import checks as _checks

FORMAT = "fusedopt"
VERSION = 1
PICKLE_VERSION = 2

_DTYPES = ("float32", "float64")


class Moments(NamedTuple):
    """Moments of a state, per leaf, in the order of ``paths``; m or v is None when absent."""
    paths: list[str]
    dtypes: list[str]
    shapes: list[tuple[int, ...]]
    m: Optional[list[np.ndarray]]
    v: Optional[list[np.ndarray]]

    def ordered(self, order: Sequence[int]) -> tuple[Optional[list[np.ndarray]], Optional[list[np.ndarray]]]:
        """(m, v) with the leaves in `order`."""
        pick = lambda leaves: None if leaves is None else [leaves[i] for i in order]  # noqa: E731
        return pick(self.m), pick(self.v)


# -- reading entries (np.load gives scalars back as 0-d arrays): _state_fields -------
_FORMAT = _fields.Format(FORMAT, VERSION)
_get, _get_str, _get_bool, _get_int, _get_float, _get_strs = (
    _FORMAT.get, _FORMAT.get_str, _FORMAT.get_bool, _FORMAT.get_int, _FORMAT.get_float, _FORMAT.get_strs)
_strs = _fields.strs
_scalar = _fields.scalar


header, check_header = _FORMAT.header, _FORMAT.check_header


# -- the moments -----------------------------------------------------------------
def _where(name: str, path: str) -> str:
    return f"{name} at {path}" if path else name


def _describe(dtype: str, shape: Sequence[int]) -> str:
    return f"{dtype} of shape {tuple(shape)}"


def memory_entries(weights: tuple[Any, Any], moments: Optional[Moments]) -> dict[str, Any]:
    """The entries of a memory with these weights and moments (the leaves are copied)."""
    state: dict[str, Any] = {
        "mean_weight": float(weights[0]),
        "mean_square_weight": float(weights[1]),
        "leaf_paths": _strs(moments.paths if moments else []),
        "leaf_dtypes": _strs(moments.dtypes if moments else []),
        "has_mean_gradient": moments is not None and moments.m is not None,
        "has_mean_square_gradient": moments is not None and moments.v is not None,
    }
    if moments is not None:
        for key, leaves in (("mean_gradient", moments.m), ("mean_square_gradient", moments.v)):
            for i, leaf in enumerate(leaves or ()):
                state[f"{key}.{i}"] = np.array(leaf, copy=True)
    return state


def parse_weights(state: Mapping[str, Any], fixed_zero: Sequence[str] = ()) -> tuple[np.float32, np.float32]:
    """The two weights of a state; those named in `fixed_zero` must be 0 (a moment the class has not)."""
    weights = []
    for name in ("mean_weight", "mean_square_weight"):
        w = _checks.weight(f"state[{name!r}]", _get_float(state, name))
        if name in fixed_zero and w != 0:
            raise ValueError(f"state[{name!r}] is {float(w)!r}, but this optimizer has no such moment (0 expected)")
        weights.append(w)
    return weights[0], weights[1]


def parse_moments(state: Mapping[str, Any]) -> Optional[Moments]:
    """Validated copies of the saved moments, or None when the state has none."""
    paths = _get_strs(state, "leaf_paths")
    dtypes = _get_strs(state, "leaf_dtypes", len(paths))
    flags = {name: _get_bool(state, f"has_{name}") for name in ("mean_gradient", "mean_square_gradient")}
    for path, dtype in zip(paths, dtypes):
        if dtype not in _DTYPES:
            raise ValueError(f"state: leaf {path or 'at the root'} has dtype {dtype!r}, expected float32 or float64")
    moments: dict[str, Optional[list[np.ndarray]]] = {}
    for name, present in flags.items():
        if not present:
            moments[name] = None
            continue
        leaves = []
        for i, (path, dtype) in enumerate(zip(paths, dtypes)):
            leaf = _get(state, f"{name}.{i}")
            if not isinstance(leaf, np.ndarray):
                raise TypeError(f"state: {_where(name, path)} must be a numpy array, got {type(leaf).__name__}")
            if leaf.dtype != np.dtype(dtype):
                raise ValueError(f"state: {_where(name, path)} has dtype {leaf.dtype}, the state says {dtype}")
            leaves.append(_fields.snapshot(leaf, dtype))
        moments[name] = leaves
    m, v = moments["mean_gradient"], moments["mean_square_gradient"]
    if m is not None and v is not None:
        for path, a, b in zip(paths, m, v):
            if a.shape != b.shape:
                raise ValueError(f"state: at {path or 'the root'} the mean has shape {a.shape} "
                                 f"but the mean square {b.shape}")
    if m is None and v is None:
        if paths:
            raise ValueError("state: leaf_paths are given but neither moment is")
        return None
    shapes = [leaf.shape for leaf in (m if m is not None else v)]  # type: ignore[union-attr]
    return Moments(paths, dtypes, shapes, m, v)


def match(plan: _core.Plan, saved: Moments, name: str) -> list[int]:
    """Which saved leaf goes to each leaf of `plan`, matched by path (dict entries may come
    in another order); raises ValueError naming the first leaf that does not fit."""
    index = {path: i for i, path in enumerate(saved.paths)}
    if len(index) != len(saved.paths):
        raise ValueError("state: leaf_paths has duplicate entries")
    order = []
    for path, dtype, shape in zip(plan.paths, plan.leaf_dtypes, plan.shapes):
        i = index.get(path)
        if i is None:
            raise ValueError(f"{_where(name, path)}: the loaded state has no leaf there "
                             f"(its leaves: {', '.join(saved.paths[:4])}{', ...' if len(index) > 4 else ''})")
        want, got = _describe(saved.dtypes[i], saved.shapes[i]), _describe(dtype, shape)
        if want != got:
            raise ValueError(f"{_where(name, path)}: the loaded state has {want}, got {got}")
        order.append(i)
    if len(order) != len(index):
        missing = next(p for p in saved.paths if p not in set(plan.paths))
        raise ValueError(f"{name} has {len(order)} leaves, the loaded state {len(index)} "
                         f"(it also has {missing or 'a leaf at the root'})")
    return order


def match_in_order(plan: _core.Plan, saved: Moments) -> list[int]:
    """The identity order, after checking that the saved leaves are the plan's own (a pickle
    saves its moments in its structure's order, so paths need not be unique there)."""
    if len(saved.shapes) != plan.num_leaves or any(
            _describe(d, s) != _describe(pd, ps)
            for d, s, pd, ps in zip(saved.dtypes, saved.shapes, plan.leaf_dtypes, plan.shapes)):
        raise ValueError("corrupt fusedopt pickle: the moments do not fit the saved tree structure")
    return list(range(plan.num_leaves))


# -- schedules -------------------------------------------------------------------------
def _encode(name: str, value: Any) -> tuple[str, Any]:
    """(type tag, storable value) of a schedule attribute."""
    if value is None:
        return "none", 0
    if type(value) in (bool, int, float):
        return type(value).__name__, value
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.dtype.name, np.asarray(value)
    raise TypeError(f"schedule attribute {name!r} of type {type(value).__name__} cannot be saved")


def _decode(name: str, tag: str, value: Any) -> Any:
    value = _scalar(value)
    python = {"bool": bool, "int": int, "float": float}
    if tag == "none":
        return None
    if tag in python:
        if not isinstance(value, (bool, numbers.Real, np.bool_)):
            raise TypeError(f"state['schedule.{name}'] must be a number, got {type(value).__name__}")
        return python[tag](value)
    try:
        dtype = np.dtype(tag)
    except TypeError:
        raise ValueError(f"state['schedule.types'] has an unknown type {tag!r} for {name!r}") from None
    if dtype.kind not in "biuf" or not isinstance(value, np.generic) or value.dtype != dtype:
        raise ValueError(f"state['schedule.{name}'] must be a {tag} scalar, got {type(value).__name__}")
    return value


def schedule_entries(schedule: Any) -> dict[str, Any]:
    """The entries of a schedule of fusedopt.schedules (its class name and attributes)."""
    kind = type(schedule).__name__
    if not schedules.is_schedule_class(type(schedule)):
        raise TypeError(f"state_dict() saves fusedopt.schedules schedules only, not {kind}; "
                        "pickle the optimizer to keep another schedule")
    _, attrs = schedule.get_config()
    names = sorted(attrs)
    state: dict[str, Any] = {"schedule": kind, "schedule.names": _strs(names)}
    tags = []
    for name in names:
        tag, value = _encode(name, attrs[name])
        tags.append(tag)
        state[f"schedule.{name}"] = value
    state["schedule.types"] = _strs(tags)
    return state


def parse_schedule(state: Mapping[str, Any]) -> schedules.Schedule:
    """A new schedule built from the entries (nothing else changes)."""
    kind = _get_str(state, "schedule")
    names = _get_strs(state, "schedule.names")
    tags = _get_strs(state, "schedule.types", len(names))
    attrs = {name: _decode(name, tag, _get(state, f"schedule.{name}")) for name, tag in zip(names, tags)}
    try:
        schedule = schedules.schedule_from_config([kind, attrs])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"state: the schedule {kind} cannot be rebuilt: {exc}") from None
    if schedule.get_config()[1].keys() != attrs.keys():
        raise ValueError(f"state: the schedule {kind} has attributes {sorted(schedule.get_config()[1])}, "
                         f"the state {names}")
    return schedule


# -- the optimizers' own scalars -------------------------------------------------------
class OptimizerFields(NamedTuple):
    """The scalars of an optimizer's state (lr None: update_lr() not called yet)."""
    tolerance: float
    ascent: bool
    check_finite: bool
    keep_delta: bool
    lr: Optional[np.float32]
    step_count: int


def optimizer_entries(fields: OptimizerFields) -> dict[str, Any]:
    """The entries of an optimizer's scalars."""
    return {"tolerance": float(fields.tolerance), "ascent": bool(fields.ascent),
            "check_finite": bool(fields.check_finite), "keep_delta": bool(fields.keep_delta),
            "lr": 0.0 if fields.lr is None else float(fields.lr), "lr_set": fields.lr is not None,
            "step_count": int(fields.step_count)}


def parse_optimizer(state: Mapping[str, Any]) -> OptimizerFields:
    """The optimizer's scalars, checked (lr must be a float32 value: inf and nan are, 1e39 is not)."""
    tolerance = _checks.tolerance("state['tolerance']", _get_float(state, "tolerance"))
    flags = {key: _get_bool(state, key) for key in ("ascent", "check_finite", "keep_delta", "lr_set")}
    lr = _get_float(state, "lr")
    if math.isfinite(lr) and abs(lr) > float(np.finfo(np.float32).max):  # np.float32() would overflow (warn)
        raise ValueError(f"state['lr'] must be a float32 value, got {lr!r} (beyond float32's range)")
    step_count = _get_int(state, "step_count")
    if step_count < 0:
        raise ValueError(f"state['step_count'] must be >= 0, got {step_count}")
    return OptimizerFields(tolerance, flags["ascent"], flags["check_finite"], flags["keep_delta"],
                           np.float32(lr) if flags["lr_set"] else None, step_count)


# -- tree structures in pickles --------------------------------------------------------
# A structure is a flat preorder list of nodes, so that pickling and deep-copying it
# never recurse (a tree may be nested 1000 levels deep, deeper than pickle recurses):
#   ("leaf", shape, dtype) | ("tuple" | "list" | "namedtuple", type, n) | ("dict", type, keys)
class _Leaf:
    """Stands for a leaf while a structure is read off a Plan."""

    __slots__ = ("entry",)

    def __init__(self, entry: tuple[str, tuple[int, ...], str]) -> None:
        self.entry = entry


def structure_of(plan: _core.Plan) -> list[tuple[Any, ...]]:
    """The flat structure of `plan`'s trees."""
    root = plan.unflatten([_Leaf(("leaf", tuple(s), str(d))) for s, d in zip(plan.shapes, plan.leaf_dtypes)])
    out: list[tuple[Any, ...]] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, _Leaf):
            out.append(node.entry)
        elif isinstance(node, dict):
            out.append(("dict", type(node), tuple(node)))
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, tuple):
            out.append(("namedtuple" if hasattr(node, "_fields") else "tuple", type(node), len(node)))
            stack.extend(reversed(node))
        elif isinstance(node, list):
            out.append(("list", type(node), len(node)))
            stack.extend(reversed(node))
        else:
            raise TypeError(f"unexpected {type(node).__name__} in a tree structure")
    return out


def _container(kind: str, cls: type, key: Any, items: list[Any]) -> Any:
    if kind == "dict":
        d = dict(zip(key, items))
        return d if cls is dict else cls(d)
    if kind == "namedtuple":
        return cls(*items)
    if kind == "tuple":
        return tuple(items) if cls is tuple else cls(items)
    return items if cls is list else cls(items)


def plan_from_structure(structure: Sequence[tuple[Any, ...]]) -> _core.Plan:
    """The Plan of a flat structure (its leaves are zero-stride templates: nothing is allocated)."""
    frames: list[tuple[str, Any, Any, int, list[Any]]] = []  # (kind, type, keys, remaining, items)
    result: list[Any] = []
    for node in structure:
        if not (isinstance(node, tuple) and node and node[0] in ("leaf", "tuple", "list", "namedtuple", "dict")):
            raise TypeError(f"corrupt fusedopt pickle: unexpected {node!r:.60} in a tree structure")
        if node[0] == "leaf":
            value = np.broadcast_to(np.zeros((), dtype=node[2]), node[1])
        else:
            n = len(node[2]) if node[0] == "dict" else node[2]
            frames.append((node[0], node[1], node[2], n, []))
            if n:
                continue
            value = None
        while True:
            if value is None:  # a container is complete
                kind, cls, key, _, items = frames.pop()
                value = _container(kind, cls, key, items)
            if not frames:
                result.append(value)
                break
            frames[-1][4].append(value)
            if len(frames[-1][4]) < frames[-1][3]:
                break
            value = None
    if len(result) != 1 or frames:
        raise ValueError("corrupt fusedopt pickle: the tree structure is incomplete")
    return _core.Plan(result[0], "grad")


def check_pickle_version(state: Any, what: str) -> None:
    """Refuse a pickle of another layout (version 1 pickled the objects' private fields)."""
    version = state.get("pickle_version") if isinstance(state, dict) else None
    if version != PICKLE_VERSION:
        raise ValueError(f"{what} pickle version {version!r} is not supported (this fusedopt reads "
                         f"{PICKLE_VERSION}); a state_dict() saved with np.savez loads across versions")
