"""Adafactor (torch.optim.Adafactor, torch 2.13, its single-tensor
implementation) on numpy trees, and the step that fusedopt.torch.Adafactor
shares. One native call (``_core.adafactor_step``) steps every parameter.

Per parameter p (n elements) with gradient g (-g when maximize) at its step
count t, in this order; every sum is in double, in the fixed order of
docs/optim.md ("Adafactor"); [T] rounds to the parameter's dtype::

    w = t ** beta2_decay;  rho = min(lr, 1 / t ** 0.5)          (double)
    alpha = max(eps2, [T](sqrt(sum p*p)) / n ** 0.5) * rho       (before the decay)
    factored (p.ndim >= 2; rows and columns are the last two dimensions):
        row_var = lerp(row_var, [T](sum_cols g*g / cols), [T]w)
        col_var = lerp(col_var, [T](sum_rows g*g / rows), [T]w)
        mean = max([T](sum_rows row_var / rows), [T]eps1)         per matrix
        v = row_var * col_var / mean                              [T] each operation
    else:
        variance = lerp(variance, g*g, [T]w);  v = variance
    u = 1 / sqrt(max(v, [T](eps1 * eps1))) * g                   [T] each operation
    denom = max(1, [T](sqrt(sum u*u)) / (n ** 0.5 * d))          (double)
    p = p * [T](1 - lr * weight_decay)                           (when weight_decay != 0)
    p = p + [T](-alpha / denom) * u

lerp is torch's (a + w*(b - a) for |w| < 0.5, else b - (b - a)*(1 - w)).
eps1=None is the machine epsilon of the dtype of the group's first
parameter (torch sets it from the first parameter it steps).
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import _core
from . import _checks as checks
from ._adafactor_plan import Slots, StepPlan, tree_plan
from ._commit import Commit, PendingCommit
from ._given import GivenHyper
from ._tree import float_leaves

HYPER = ("lr", "beta2_decay", "eps", "d", "weight_decay", "maximize")
SLOTS = ("row_var", "col_var", "variance")
# One leaf's state: (row_var, col_var, variance), None where absent.
LeafState = Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]


def _at_least(name: str, value: Any, low: float, message: str) -> float:
    out = checks.finite(name, value)
    if not low <= out:
        raise ValueError(f"{message} but is: {value}")
    return out


def check_hyper(values: Dict[str, Any]) -> Dict[str, Any]:
    """torch.optim.Adafactor's refusals, with its messages; the values to use."""
    out = dict(values)
    out["lr"] = _at_least("lr", values["lr"], 0.0, "Learning rate should be >= 0")
    decay = checks.finite("beta2_decay", values["beta2_decay"])
    if not 0.0 >= decay:
        raise ValueError(f"beta2_decay should be <= 0 but is: {values['beta2_decay']}")
    out["beta2_decay"] = decay
    eps = values["eps"]
    if isinstance(eps, (str, bytes)) or not hasattr(eps, "__len__") or len(eps) != 2:
        raise TypeError(f"eps must be a pair (eps1 or None, eps2), got {eps!r}")
    eps1 = None if eps[0] is None else _at_least("eps[0]", eps[0], 0.0, "epsilon1 should be >= 0")
    out["eps"] = (eps1, _at_least("eps[1]", eps[1], 0.0, "epsilon2 should be >= 0"))
    out["d"] = _at_least("d", values["d"], 1.0, "Clipping threshold d should be >= 1")
    out["weight_decay"] = _at_least("weight_decay", values["weight_decay"], 0.0, "weight_decay should be >= 0")
    out["maximize"] = checks.flag("maximize", values["maximize"])
    return out


def hyper_row(hyper: Dict[str, Any], step: int, eps1_dtype: np.dtype) -> List[float]:
    """One leaf's row of adafactor_step's hyper array."""
    eps1, eps2 = hyper["eps"]
    if eps1 is None:
        eps1 = float(np.finfo(eps1_dtype).eps)
    return [float(step), hyper["lr"], hyper["beta2_decay"], eps1, eps2, hyper["d"], hyper["weight_decay"],
            float(hyper["maximize"])]


def state_shapes(shape: Tuple[int, ...]) -> Dict[str, Tuple[int, ...]]:
    """The state of a parameter of this shape: torch's slots and their shapes."""
    if len(shape) > 1:
        return {"row_var": shape[:-1] + (1,), "col_var": shape[:-2] + (1,) + shape[-1:]}
    return {"variance": shape}


def new_state(params: Sequence[np.ndarray]) -> List[LeafState]:
    """Each leaf's arrays for its new state (uninitialised; the step writes them)."""
    new: List[LeafState] = []
    for p in params:
        shapes = state_shapes(p.shape)
        new.append(tuple(np.empty(shapes[k], p.dtype) if k in shapes else None for k in SLOTS))  # type: ignore
    return new


def step(params: Sequence[np.ndarray], grads: Sequence[np.ndarray], old: Sequence[Optional[LeafState]],
         rows: Sequence[Sequence[float]], copy_grads: bool, new: Optional[Sequence[LeafState]] = None,
         done: Optional[np.ndarray] = None) -> List[LeafState]:
    """One step of C-contiguous arrays (params written in place); returns each
    leaf's new state (`new`'s arrays, or new ones: the caller commits them).
    `done`: set to 1 by the native call once it has written everything."""
    new = new_state(params) if new is None else list(new)
    olds = [(None, None, None) if s is None else s for s in old]
    _core.adafactor_step(list(params), list(grads), [s[0] for s in olds], [s[1] for s in olds],
                         [s[2] for s in olds], [s[0] for s in new], [s[1] for s in new], [s[2] for s in new],
                         np.array(rows, np.float64).reshape(len(params), 8), copy_grads, done)
    return new


def c_order(a: np.ndarray) -> np.ndarray:
    """a, or a C-contiguous aligned copy (0-d stays 0-d, unlike np.ascontiguousarray)."""
    return a if a.flags.c_contiguous and a.flags.aligned else a.copy(order="C")


def _int_step(value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"state_dict: step must be an int >= 0, got {value!r}")
    return int(value)


class Adafactor(PendingCommit, GivenHyper):
    """Adafactor (torch.optim.Adafactor, torch 2.13) on a numpy tree of
    float32 or float64 arrays: the factored second moment (``row_var``,
    ``col_var``) for arrays of 2 or more dimensions (over the last two), the
    full one (``variance``) for vectors and scalars; relative step sizes,
    update clipping by ``d`` and decoupled weight decay by ``lr``. The whole
    step is one native call; the operation order is in docs/optim.md
    ("Adafactor")::

        opt = optim.Adafactor(lr=1e-2)
        opt.step(params, grads)        # params stepped in place

    State: ``step_count`` and the slots per leaf (``state_arrays()``),
    created at the first step. Bad input raises before anything is written;
    a KeyboardInterrupt leaves the step all done or not begun.
    """

    _check_hyper = staticmethod(check_hyper)
    # The checked step's record for the next steps of the same tree (None: the next step checks).
    _plan: Optional[StepPlan] = None

    def __init__(self, lr: float = 1e-2, beta2_decay: float = -0.8,
                 eps: Tuple[Optional[float], float] = (None, 1e-3), d: float = 1.0, weight_decay: float = 0.0,
                 *, maximize: bool = False) -> None:
        """The arguments are explained in the class documentation, help(Adafactor)."""
        self._given = dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay,
                           maximize=maximize)
        self._hyper = check_hyper(self._given)
        self._count = 0
        # The state: the leaves' paths and, per slot, each leaf's array (None before the first step).
        self._paths: List[str] = []
        self._slots: Optional[Slots] = None

    @property
    def step_count(self) -> int:
        """Steps taken (torch's per-parameter ``step``; one count for the tree)."""
        self._finish()
        return self._count

    def _leaves(self, params: Any, grads: Any) -> Tuple[List[str], List[np.ndarray], List[np.ndarray]]:
        ps, gs = float_leaves(params, grads)
        for path, p in ps.items():
            where = path or "the root"
            if not (p.flags.c_contiguous and p.flags.writeable and p.flags.aligned):
                raise ValueError(f"params at {where}: expected a writeable C-contiguous array")
            if p.size == 0:
                raise ValueError(f"params at {where}: Adafactor needs at least one element (torch divides by "
                                 "the element count)")
            g = gs[path]
            if not isinstance(g, np.ndarray) or g.dtype != p.dtype or g.shape != p.shape:
                got = f"{g.dtype} of shape {g.shape}" if isinstance(g, np.ndarray) else type(g).__name__
                raise TypeError(f"grads at {where}: expected a {p.dtype} array of shape {p.shape}, got {got}")
        if self._slots is not None:
            if self._paths != list(ps):
                raise ValueError(f"params: the tree {list(ps)} differs from the state's {self._paths} "
                                 "(reset() forgets the state)")
            for i, (path, p) in enumerate(ps.items()):
                _check_leaf_state(f"params at {path or 'the root'}", p.shape, p.dtype, _leaf(self._slots, i))
        return list(ps), list(ps.values()), [c_order(g) for g in gs.values()]

    def step(self, params: Any, grads: Any) -> None:
        """One step: params (a tree of arrays) stepped in place by grads (the same tree)."""
        self._finish()
        plan, old = self._plan, self._slots
        leaves = None if plan is None else plan.leaves(params, grads)
        if plan is not None and leaves is not None and old is not None and plan.spare is not None:
            count = self._count + 1
            rows = plan.hyper_rows(self._hyper, count, self._row)
            try:
                self._native(leaves[0], leaves[1], old, plan.spare, rows, count, plan, old)
                return
            except (TypeError, ValueError):
                pass  # refused before anything was written: the checked path names the leaf
        self._checked_step(params, grads)

    def _row(self, hyper: Dict[str, Any], count: int) -> List[float]:
        return hyper_row(hyper, count, _first(self._slots).dtype)

    def _checked_step(self, params: Any, grads: Any) -> None:
        """A step with every leaf checked in Python; it leaves a plan for the next steps."""
        paths, ps, gs = self._leaves(params, grads)
        if not ps:
            return
        count = self._count + 1
        row = hyper_row(self._hyper, count, ps[0].dtype)
        old = self._slots
        kept = self._plan if self._plan is not None and self._plan.paths == paths else None
        new = kept.spare if kept is not None and kept.spare is not None else new_slots(ps)
        plan = StepPlan(tree_plan(params), paths, self._hyper, [row] * len(ps))
        spare = old if old is not None else new_slots(ps)  # the loaded or the last state: now free
        none: List[Optional[np.ndarray]] = [None] * len(ps)
        self._native(ps, gs, (none, none, none) if old is None else old, new, plan.rows, count, plan, spare)

    def _native(self, ps: List[Any], gs: List[Any], old: Slots, new: Slots, rows: np.ndarray, count: int,
                plan: StepPlan, spare: Slots) -> None:
        paths = plan.paths

        def show() -> None:
            self._paths, self._slots, self._count, self._plan = paths, new, count, plan
            plan.spare = spare

        self._commit(Commit(show), lambda done: _core.adafactor_step(ps, gs, *old, *new, rows, True, done))

    def reset(self) -> None:
        """Forget the state (the next step is a first step)."""
        self._pending = None
        self._paths, self._slots, self._count, self._plan = [], None, 0, None

    def state_arrays(self) -> Dict[str, Dict[str, np.ndarray]]:
        """``{slot: {path: array}}`` (the state's own arrays, which the second step after
        this one writes again); ``{}`` before the first step."""
        self._finish()
        out: Dict[str, Dict[str, np.ndarray]] = {}
        for slot, arrays in zip(SLOTS, self._slots or ()):
            for path, a in zip(self._paths, arrays):
                if a is not None:
                    out.setdefault(slot, {})[path] = a
        return out

    def state_dict(self) -> Dict[str, Any]:
        """A versioned dict of plain values and array copies; load_state_dict resumes exactly."""
        self._finish()
        slots = self._slots
        state = None if slots is None else {
            k: {slot: a.copy() for slot, a in zip(SLOTS, _leaf(slots, i)) if a is not None}
            for i, k in enumerate(self._paths)}
        return {"version": 1, "class": "Adafactor", "hyper": dict(self._given), "step": self._count,
                "state": state}

    def load_state_dict(self, saved: Dict[str, Any]) -> None:
        """Restore a state_dict(); checked whole before anything changes."""
        self._finish()
        if not isinstance(saved, dict) or saved.get("class") != "Adafactor" or saved.get("version") != 1:
            raise ValueError("state_dict: expected a version 1 Adafactor state dict")
        hyper = check_hyper(saved["hyper"])
        count = _int_step(saved["step"])
        state = saved["state"]
        paths: List[str] = []
        slots: Optional[Slots] = None
        if state is not None:
            if not isinstance(state, dict):
                raise ValueError("state_dict: state must be a dict of leaf paths")
            leaves = [_leaf_state_from(f"state_dict: state at {path}", entry) for path, entry in state.items()]
            paths = list(state)
            slots = ([s[0] for s in leaves], [s[1] for s in leaves], [s[2] for s in leaves])
        self._given, self._hyper, self._count, self._paths, self._slots, self._plan = \
            dict(saved["hyper"]), hyper, count, paths, slots, None

    def __getstate__(self) -> Dict[str, Any]:
        self._finish()
        return {k: v for k, v in self.__dict__.items() if k not in ("_plan", "_pending")}

    def __repr__(self) -> str:
        return f"Adafactor({', '.join(f'{k}={v!r}' for k, v in self._given.items())})"


def new_slots(params: Sequence[np.ndarray]) -> Slots:
    """new_state's arrays, per slot."""
    leaves = new_state(params)
    return [s[0] for s in leaves], [s[1] for s in leaves], [s[2] for s in leaves]


def _leaf(slots: Slots, i: int) -> LeafState:
    return slots[0][i], slots[1][i], slots[2][i]


def _first(slots: Optional[Slots]) -> np.ndarray:
    """The first leaf's first state array (its dtype is the first parameter's)."""
    assert slots is not None
    return next(a for a in _leaf(slots, 0) if a is not None)


def _leaf_state_from(where: str, entry: Any) -> LeafState:
    """A saved leaf's slots as new C-contiguous arrays (shapes checked against the parameters at the step)."""
    if not isinstance(entry, dict) or set(entry) not in ({"row_var", "col_var"}, {"variance"}):
        raise ValueError(f"{where}: expected {{'row_var', 'col_var'}} or {{'variance'}} arrays")
    out = []
    for slot in SLOTS:
        a = entry.get(slot)
        if a is not None:
            if not isinstance(a, np.ndarray) or a.dtype not in (np.float32, np.float64):
                raise ValueError(f"{where} ({slot}): expected a float32 or float64 array")
            a = np.array(a, copy=True, order="C")
        out.append(a)
    return tuple(out)  # type: ignore[return-value]


def _check_leaf_state(where: str, shape: Tuple[int, ...], dtype: np.dtype, leaf: LeafState) -> None:
    want = state_shapes(shape)
    for slot, a in zip(SLOTS, leaf):
        if (a is None) != (slot not in want) or a is not None and (a.shape != want[slot] or a.dtype != dtype):
            got = "none" if a is None else f"{a.dtype} of shape {a.shape}"
            exp = f"{dtype} of shape {want[slot]}" if slot in want else "none"
            raise ValueError(f"{where}: the state's {slot} is {got}, expected {exp} (reset() forgets the state)")
