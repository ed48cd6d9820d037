"""Versioned state of optimizers and gradient memories (SPEC section 7).

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

Pickling keeps more (the tree structure itself, delta, the convergence sums):
the C++ Plan is not picklable, so the structure travels as a tree of
``_Leaf(shape, dtype)`` placeholders and a Plan is rebuilt from it.
"""
from collections.abc import Mapping
import numbers

import numpy as np

from . import _core, schedules

FORMAT = "fusedopt"
VERSION = 1
PICKLE_VERSION = 1

_DTYPES = ("float32", "float64")


# -- reading scalars that may come back from np.load as 0-d arrays ----------------
def _get(state, key):
    try:
        return state[key]
    except KeyError:
        raise ValueError(f"not a fusedopt state (format {VERSION}): the key {key!r} is missing") from None


def _scalar(value):
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value[()]
    return value


def _get_str(state, key):
    value = _scalar(_get(state, key))
    if not isinstance(value, str):
        raise TypeError(f"state[{key!r}] must be a string, got {type(value).__name__}")
    return str(value)


def _get_bool(state, key):
    value = _scalar(_get(state, key))
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"state[{key!r}] must be a bool, got {type(value).__name__}")
    return bool(value)


def _get_int(state, key):
    value = _scalar(_get(state, key))
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"state[{key!r}] must be an integer, got {type(value).__name__}")
    return int(value)


def _get_float(state, key):
    value = _scalar(_get(state, key))
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"state[{key!r}] must be a real number, got {type(value).__name__}")
    return float(value)


def _get_strs(state, key, n=None):
    value = _get(state, key)
    if isinstance(value, (list, tuple)):
        value = _strs(value)
    if not (isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind == "U"):
        raise TypeError(f"state[{key!r}] must be a 1-d array of strings, got {type(value).__name__}")
    if n is not None and len(value) != n:
        raise ValueError(f"state[{key!r}] has {len(value)} entries, expected {n}")
    return [str(s) for s in value]


def _strs(items):
    """A 1-d str array (np.array([]) alone would be float64)."""
    return np.array(list(items), dtype=str) if items else np.zeros(0, dtype=str)


def _check_header(state, kind):
    if not isinstance(state, Mapping):
        raise TypeError(f"a state must be a mapping (a dict or np.load's NpzFile), got {type(state).__name__}")
    fmt = _get_str(state, "format")
    if fmt != FORMAT:
        raise ValueError(f"not a fusedopt state: format is {fmt!r}, expected {FORMAT!r}")
    version = _get_int(state, "version")
    if version != VERSION:
        raise ValueError(f"state format version {version} is not supported: this fusedopt reads version {VERSION}")
    saved = _get_str(state, "kind")
    if saved != kind:
        raise ValueError(f"the state is of a {saved}, it cannot be loaded into a {kind}")


# -- the moments -----------------------------------------------------------------
def _where(name, path):
    return f"{name} at {path}" if path else name


def _describe(dtype, shape):
    return f"{dtype} of shape {tuple(shape)}"


def _memory_entries(mem):
    """The moments of `mem` as flat per-leaf arrays with their paths."""
    has_m, has_v = mem._m is not None, mem._v is not None
    plan = mem._plan if (has_m or has_v) else None
    paths = plan.paths if plan is not None else []
    state = {
        "mean_weight": float(mem.mean_weight),
        "mean_square_weight": float(mem.mean_square_weight),
        "leaf_paths": _strs(paths),
        "leaf_dtypes": _strs(plan.leaf_dtypes if plan is not None else []),
        "has_mean_gradient": has_m,
        "has_mean_square_gradient": has_v,
    }
    for key, tree in (("mean_gradient", mem._m_tree), ("mean_square_gradient", mem._v_tree)):
        if tree is not None:
            for i, leaf in enumerate(plan.flatten(tree)):
                state[f"{key}.{i}"] = np.array(leaf, copy=True)
    pending = mem._pending
    if pending is not None:  # loaded but not attached yet: hand the same leaves out again
        state["leaf_paths"] = _strs(pending["paths"])
        state["leaf_dtypes"] = _strs(pending["dtypes"])
        for key, name in (("m", "mean_gradient"), ("v", "mean_square_gradient")):
            state[f"has_{name}"] = pending[key] is not None
            for i, leaf in enumerate(pending[key] or ()):
                state[f"{name}.{i}"] = leaf.copy()
    return state


def _parse_moments(state):
    """Validated copies of the saved moments: dict(paths, dtypes, shapes, m, v) or None."""
    paths = _get_strs(state, "leaf_paths")
    dtypes = _get_strs(state, "leaf_dtypes", len(paths))
    flags = {name: _get_bool(state, f"has_{name}") for name in ("mean_gradient", "mean_square_gradient")}
    for path, dtype in zip(paths, dtypes):
        if dtype not in _DTYPES:
            raise ValueError(f"state: leaf {path or 'at the root'} has dtype {dtype!r}, expected float32 or float64")
    moments = {}
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
            leaves.append(np.array(leaf, dtype=dtype, order="C", copy=True))
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
    shapes = [leaf.shape for leaf in (m if m is not None else v)]
    return {"paths": paths, "dtypes": dtypes, "shapes": shapes, "m": m, "v": v}


def _match(plan, saved, name):
    """Which saved leaf goes to each leaf of `plan`, matched by path (dict entries may come
    in another order); raises ValueError naming the first leaf that does not fit."""
    index = {path: i for i, path in enumerate(saved["paths"])}
    if len(index) != len(saved["paths"]):
        raise ValueError("state: leaf_paths has duplicate entries")
    order = []
    for path, dtype, shape in zip(plan.paths, plan.leaf_dtypes, plan.shapes):
        i = index.get(path)
        if i is None:
            raise ValueError(f"{_where(name, path)}: the loaded state has no leaf there "
                             f"(its leaves: {', '.join(saved['paths'][:4])}{', ...' if len(index) > 4 else ''})")
        want, got = _describe(saved["dtypes"][i], saved["shapes"][i]), _describe(dtype, shape)
        if want != got:
            raise ValueError(f"{_where(name, path)}: the loaded state has {want}, got {got}")
        order.append(i)
    if len(order) != len(index):
        missing = next(p for p in saved["paths"] if p not in set(plan.paths))
        raise ValueError(f"{name} has {len(order)} leaves, the loaded state {len(index)} "
                         f"(it also has {missing or 'a leaf at the root'})")
    return order


def _ordered(leaves, order):
    return None if leaves is None else [leaves[i] for i in order]


def _arenas_from(plan, leaves):
    if leaves is None:
        return None, None
    n32, n64 = plan.arena_sizes
    arenas = (_core.aligned_empty(n32, "float32"), _core.aligned_empty(n64, "float64"))
    views = plan.views(*arenas)
    for dst, src in zip(plan.flatten(views), leaves):
        dst[...] = src
    return arenas, views


def _install(mem, plan, m, v, sumsq=None):
    """Attach moments (lists of leaves, or None) to `mem` under `plan`; cannot fail half-way."""
    m_arenas, m_tree = _arenas_from(plan, m)
    v_arenas, v_tree = _arenas_from(plan, v)
    mem._plan = plan
    mem._sumsq = np.zeros(plan.num_leaves) if sumsq is None else np.array(sumsq, dtype=np.float64)
    mem._m, mem._m_tree, mem._v, mem._v_tree = m_arenas, m_tree, v_arenas, v_tree
    mem._pending = None
    mem._token = object()  # invalidates the optimizers' cached kernel call


def bind_pending(mem, tree):
    """Attach moments loaded without a structure, taking it from `tree` (a gradient)."""
    saved = mem._pending
    plan = _core.Plan(tree, "grad")
    order = _match(plan, saved, "grad")
    _install(mem, plan, _ordered(saved["m"], order), _ordered(saved["v"], order))


def settle_pending(mem, tree, which):
    """A moment is assigned while loaded moments wait: attach them to its structure,
    or forget the pending one of that name when None is assigned."""
    if tree is not None:
        bind_pending(mem, tree)
        return
    pending = dict(mem._pending, **{which: None})
    mem._pending = pending if (pending["m"] is not None or pending["v"] is not None) else None


def _memory_plan(mem, saved):
    """How loaded moments attach to `mem`: (plan, leaf order) to install under now, or None
    to wait for the next gradient."""
    plan = mem._plan
    if saved is None or plan is None:
        return None
    if mem._m is not None or mem._v is not None:  # a fixed structure (reset() frees it)
        return plan, _match(plan, saved, "the optimizer's current gradient structure")
    try:
        return plan, _match(plan, saved, "")
    except ValueError:
        return None  # a memoryless structure may change: wait for the next gradient


def _apply_memory(mem, weights, saved, attach):
    mem.mean_weight, mem.mean_square_weight = weights
    if saved is None:
        mem.reset()
    elif attach is not None:
        plan, order = attach
        _install(mem, plan, _ordered(saved["m"], order), _ordered(saved["v"], order))
    else:
        mem.reset()
        mem._pending = saved


def _parse_weights(state, fixed_zero=()):
    from .optimizers import _check_weight
    weights = []
    for name in ("mean_weight", "mean_square_weight"):
        w = _check_weight(f"state[{name!r}]", _get_float(state, name))
        if name in fixed_zero and w != 0:
            raise ValueError(f"state[{name!r}] is {float(w)!r}, but this optimizer has no such moment (0 expected)")
        weights.append(w)
    return tuple(weights)


# -- GradientMemory ------------------------------------------------------------------
def memory_state_dict(mem):
    state = {"format": FORMAT, "version": VERSION, "kind": "GradientMemory"}
    state.update(_memory_entries(mem))
    return state


def load_memory_state_dict(mem, state):
    _check_header(state, "GradientMemory")
    weights = _parse_weights(state)
    saved = _parse_moments(state)
    plan = _memory_plan(mem, saved)
    _apply_memory(mem, weights, saved, plan)


# -- schedules -------------------------------------------------------------------------
def _encode(name, value):
    """(type tag, storable value) of a schedule attribute."""
    if value is None:
        return "none", 0
    if type(value) in (bool, int, float):
        return type(value).__name__, value
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.dtype.name, np.asarray(value)
    raise TypeError(f"schedule attribute {name!r} of type {type(value).__name__} cannot be saved")


def _decode(name, tag, value):
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


def _schedule_entries(schedule):
    kind = type(schedule).__name__
    if not (isinstance(schedule, schedules.Schedule) and getattr(schedules, kind, None) is type(schedule)):
        raise TypeError(f"state_dict() saves fusedopt.schedules schedules only, not {kind}; "
                        "pickle the optimizer to keep another schedule")
    _, attrs = schedule.get_config()
    names = sorted(attrs)
    state = {"schedule": kind,
             "schedule.names": _strs(names)}
    tags = []
    for name in names:
        tag, value = _encode(name, attrs[name])
        tags.append(tag)
        state[f"schedule.{name}"] = value
    state["schedule.types"] = _strs(tags)
    return state


def _parse_schedule(state):
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


# -- optimizers ------------------------------------------------------------------------
def _fixed_zero_weights(opt):
    from .optimizers import Gradient, Momentum, RMSProp
    if isinstance(opt, Gradient):
        return ("mean_weight", "mean_square_weight")
    if isinstance(opt, Momentum):
        return ("mean_square_weight",)
    if isinstance(opt, RMSProp):
        return ("mean_weight",)
    return ()


def optimizer_state_dict(opt):
    state = {"format": FORMAT, "version": VERSION, "kind": type(opt).__name__,
             "tolerance": float(opt.tolerance), "ascent": bool(opt.ascent),
             "check_finite": bool(opt.check_finite), "keep_delta": bool(opt.keep_delta),
             "lr": 0.0 if opt.lr is None else float(opt.lr), "lr_set": opt.lr is not None,
             "step_count": int(opt.step_count)}
    state.update(_schedule_entries(opt.stepsize))
    state.update(_memory_entries(opt._memory))
    return state


def load_optimizer_state_dict(opt, state):
    _check_header(state, type(opt).__name__)
    # Everything is read and checked first; the optimizer changes only below.
    tolerance = _get_float(state, "tolerance")
    if not tolerance >= 0:
        raise ValueError(f"state['tolerance'] must be >= 0, got {tolerance!r}")
    flags = {key: _get_bool(state, key) for key in ("ascent", "check_finite", "keep_delta", "lr_set")}
    lr = _get_float(state, "lr")
    step_count = _get_int(state, "step_count")
    if step_count < 0:
        raise ValueError(f"state['step_count'] must be >= 0, got {step_count}")
    schedule = _parse_schedule(state)
    weights = _parse_weights(state, _fixed_zero_weights(opt))
    saved = _parse_moments(state)
    mem = opt._memory
    plan = _memory_plan(mem, saved)

    _apply_memory(mem, weights, saved, plan)
    opt.stepsize = schedule
    opt.tolerance = tolerance
    opt.ascent, opt.check_finite, opt.keep_delta = flags["ascent"], flags["check_finite"], flags["keep_delta"]
    opt.lr = np.float32(lr) if flags["lr_set"] else None
    opt.step_count = step_count
    opt.delta = None
    opt._conv_n = None  # check_convergence() is False until the next update
    opt._fast = None


# -- pickling ------------------------------------------------------------------------------
class _Leaf:
    """Stands for an array of a tree's structure in a pickle (shape and dtype only)."""

    __slots__ = ("shape", "dtype")

    def __init__(self, shape, dtype):
        self.shape, self.dtype = tuple(shape), str(dtype)

    def __reduce__(self):
        return _Leaf, (self.shape, self.dtype)

    def template(self):
        # Zero strides: a Plan reads only the shape and dtype, no memory is allocated.
        return np.broadcast_to(np.zeros((), dtype=self.dtype), self.shape)


def _materialize(node):
    """The placeholder tree with arrays in place of the _Leaf entries (as Plan.unflatten builds it)."""
    if isinstance(node, _Leaf):
        return node.template()
    kind = type(node)
    if isinstance(node, tuple):
        items = [_materialize(x) for x in node]
        if hasattr(node, "_fields"):
            return kind(*items)
        return tuple(items) if kind is tuple else kind(items)
    if isinstance(node, list):
        items = [_materialize(x) for x in node]
        return items if kind is list else kind(items)
    if isinstance(node, dict):
        items = {k: _materialize(x) for k, x in node.items()}
        return items if kind is dict else kind(items)
    raise TypeError(f"corrupt fusedopt pickle: unexpected {kind.__name__} in a tree structure")


def memory_getstate(mem):
    plan = mem._plan
    state = {"pickle_version": PICKLE_VERSION, "mean_weight": mem.mean_weight,
             "mean_square_weight": mem.mean_square_weight, "pending": mem._pending,
             "structure": None, "m": None, "v": None, "sumsq": None}
    if plan is not None:
        state["structure"] = plan.unflatten([_Leaf(s, d) for s, d in zip(plan.shapes, plan.leaf_dtypes)])
        state["m"] = None if mem._m_tree is None else list(plan.flatten(mem._m_tree))
        state["v"] = None if mem._v_tree is None else list(plan.flatten(mem._v_tree))
        state["sumsq"] = mem._sumsq
    return state


def memory_setstate(mem, state):
    version = state.get("pickle_version")
    if version != PICKLE_VERSION:
        raise ValueError(f"GradientMemory pickle version {version!r} is not supported (this fusedopt reads "
                         f"{PICKLE_VERSION})")
    from .optimizers import GradientMemory
    GradientMemory.__init__(mem, state["mean_weight"], state["mean_square_weight"])
    mem._pending = state["pending"]
    if state["structure"] is not None:
        plan = _core.Plan(_materialize(state["structure"]), "grad")
        _install(mem, plan, state["m"], state["v"], state["sumsq"])


def optimizer_getstate(opt):
    state = dict(opt.__dict__)
    state.pop("_model_types", None)  # caches (model classes, the last kernel call): rebuilt on use
    state.pop("_fast", None)
    state.pop("_unset_lr_cache", None)
    conv = state.pop("_conv_n", None)
    # The Plan in _conv_n is the memory's (rebuilt on unpickling); a stale one is recomputed anyway.
    state["_conv_count"] = conv[1] if conv is not None and conv[0] is opt._memory._plan else None
    state["pickle_version"] = PICKLE_VERSION
    return state


def optimizer_setstate(opt, state):
    state = dict(state)
    version = state.pop("pickle_version", None)
    if version != PICKLE_VERSION:
        raise ValueError(f"optimizer pickle version {version!r} is not supported (this fusedopt reads "
                         f"{PICKLE_VERSION})")
    count = state.pop("_conv_count")
    opt.__dict__.update(state)
    opt._model_types = {}
    opt._fast = None
    plan = opt._memory._plan
    opt._conv_n = (plan, count) if count is not None and plan is not None else None
