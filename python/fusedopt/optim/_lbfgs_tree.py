"""fusedopt.optim.LBFGS: torch.optim.LBFGS on a numpy tree (see _lbfgs.py)."""
from __future__ import annotations

import numbers
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .. import _core
from . import _lbfgs
from ._tree import leaves_by_path

_VECTORS = ("d", "prev_flat_grad")
_LISTS = ("old_dirs", "old_stps")


class _TreeProblem(_lbfgs.Problem):
    def __init__(self, params: Any, closure: Callable[[], Tuple[Any, Any]]) -> None:
        by_path = leaves_by_path(params)
        self.paths = list(by_path)
        self.leaves: List[np.ndarray] = list(by_path.values())
        if not self.leaves:
            raise ValueError("params: the tree has no leaves")
        dtype = None
        for path, leaf in by_path.items():
            where = path or "the root"
            if not isinstance(leaf, np.ndarray) or leaf.dtype not in (np.float32, np.float64):
                raise TypeError(f"params at {where}: expected a float32 or float64 numpy array, got "
                                f"{type(leaf).__name__}{'' if not isinstance(leaf, np.ndarray) else ' of ' + str(leaf.dtype)}")
            if dtype is not None and leaf.dtype != dtype:
                raise TypeError(f"params at {where}: every leaf must have one dtype ({dtype}), got {leaf.dtype}")
            dtype = leaf.dtype
            if not (leaf.flags.c_contiguous and leaf.flags.writeable and leaf.flags.aligned):
                raise ValueError(f"params at {where}: expected a writeable C-contiguous array")
        assert dtype is not None
        _lbfgs.check_disjoint(self.leaves, [f"params at {p or 'the root'}" for p in self.paths])
        self.dtype = np.dtype(dtype)
        self.sizes = [leaf.size for leaf in self.leaves]
        self.n = sum(self.sizes)
        if not callable(closure):
            raise TypeError(f"closure must be a callable returning (loss, grads), got {type(closure).__name__}")
        self.closure = closure
        self.grads: List[np.ndarray] = []

    def evaluate(self) -> Tuple[Any, float]:
        out = self.closure()
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(f"closure must return (loss, grads), got {type(out).__name__}")
        loss, grads = out
        if isinstance(loss, (bool, np.bool_)) or not isinstance(loss, (numbers.Real, np.ndarray)):
            raise TypeError(f"closure's loss must be a real number, got {type(loss).__name__}")
        value = float(loss)
        by_path = leaves_by_path(grads)
        if list(by_path) != self.paths:
            raise ValueError(f"closure's grads must have the parameters' structure {self.paths}, got {list(by_path)}")
        checked = []
        for path, g, p in zip(self.paths, by_path.values(), self.leaves):
            if not isinstance(g, np.ndarray) or g.dtype != p.dtype or g.shape != p.shape:
                got = f"{g.dtype} array of shape {g.shape}" if isinstance(g, np.ndarray) else type(g).__name__
                raise TypeError(f"closure's grads at {path or 'the root'}: expected a {p.dtype} array of shape "
                                f"{p.shape}, got {got}")
            checked.append(np.ascontiguousarray(g))
        self.grads = checked
        return loss, value

    def flat_grad(self) -> np.ndarray:
        out = np.empty(self.n, self.dtype)
        _core.lbfgs_gather(self.grads, self.sizes, out)
        return out

    def add(self, t: Any, d: np.ndarray) -> None:
        _core.lbfgs_add(self.leaves, d, float(t))

    def snapshot(self) -> np.ndarray:
        out = np.empty(self.n, self.dtype)
        _core.lbfgs_gather(self.leaves, self.sizes, out)
        return out

    def restore(self, x: np.ndarray) -> None:
        _core.lbfgs_scatter(x, self.leaves)


class _HyperAttr:
    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: Optional[type] = None) -> Any:
        return self if obj is None else obj._hyper[self.name]

    def __set__(self, obj: Any, value: Any) -> None:
        values = dict(obj._given, **{self.name: value})
        obj._hyper = _lbfgs.check_hyper(values)
        obj._given = values


class LBFGS:
    """L-BFGS (torch.optim.LBFGS, torch 2.13) on a numpy tree, with torch's
    closure API and its strong-Wolfe line search::

        opt = optim.LBFGS(lr=1, history_size=10, line_search_fn="strong_wolfe")
        def closure():                 # evaluates at the current params
            return loss(params), grads(params)
        opt.step(params, closure)      # params stepped in place; returns the first loss

    All leaves have one dtype (float32 or float64); they are the flat vector
    end to end, in tree order. Every pass over that vector is one native call
    whose sums have a fixed order (docs/optim.md, "LBFGS"). ``opt.state`` holds
    torch's state names (``d``, ``t``, ``old_dirs``, ``old_stps``, ``ro``,
    ``H_diag``, ``prev_flat_grad``, ``prev_loss``, ``al``, ``func_evals``,
    ``n_iter``) with flat numpy arrays. A step that raises (in the closure or
    on bad input) leaves the parameters and the state as they were.
    """

    lr = _HyperAttr()
    max_iter = _HyperAttr()
    max_eval = _HyperAttr()
    tolerance_grad = _HyperAttr()
    tolerance_change = _HyperAttr()
    history_size = _HyperAttr()
    line_search_fn = _HyperAttr()

    def __init__(self, lr: float = 1, max_iter: int = 20, max_eval: Optional[int] = None,
                 tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9, history_size: int = 100,
                 line_search_fn: Optional[str] = None) -> None:
        """The arguments are explained in the class documentation, help(LBFGS)."""
        given = dict(lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
                     tolerance_change=tolerance_change, history_size=history_size, line_search_fn=line_search_fn)
        self._hyper = _lbfgs.check_hyper(given)
        self._given = given
        self._state: Dict[str, Any] = {}
        self._layout: Optional[Tuple[List[str], List[int], np.dtype]] = None

    @property
    def state(self) -> Dict[str, Any]:
        """torch's state entries (a copy of the dict; the arrays are the state's own)."""
        return dict(self._state)

    def step(self, params: Any, closure: Callable[[], Tuple[Any, Any]]) -> Any:
        problem = _TreeProblem(params, closure)
        layout = (problem.paths, problem.sizes, problem.dtype)
        if self._layout is not None and self._state and layout != self._layout:
            raise ValueError("params: the tree's structure, sizes or dtype differ from the state's "
                             "(reset() forgets the state)")
        loss, new = _lbfgs.step(problem, self._state, self._hyper)
        self._state, self._layout = new, layout
        return loss

    def reset(self) -> None:
        self._state, self._layout = {}, None

    def state_dict(self) -> Dict[str, Any]:
        state = {}
        for key, value in self._state.items():
            if key in _VECTORS:
                value = value.copy()
            elif key in _LISTS:
                value = [v.copy() for v in value]
            elif key in ("ro", "al"):
                value = list(value)
            state[key] = value
        layout = None if self._layout is None else {"paths": list(self._layout[0]), "sizes": list(self._layout[1]),
                                                    "dtype": str(self._layout[2])}
        return {"version": 1, "class": "LBFGS", "hyper": dict(self._given), "state": state, "layout": layout}

    def load_state_dict(self, saved: Dict[str, Any]) -> None:
        if not isinstance(saved, dict) or saved.get("class") != "LBFGS" or saved.get("version") != 1:
            raise ValueError("state_dict: expected a version 1 LBFGS state dict")
        hyper = _lbfgs.check_hyper(saved["hyper"])
        layout = saved["layout"]
        state = dict(saved["state"])
        if layout is not None:
            dtype, n = np.dtype(layout["dtype"]), sum(layout["sizes"])
            for key in _VECTORS:
                if key in state:
                    state[key] = _vector(state[key], dtype, n, key)
            for key in _LISTS:
                if key in state:
                    state[key] = [_vector(v, dtype, n, f"{key}[{i}]") for i, v in enumerate(state[key])]
            for key in ("ro",):
                if key in state:
                    state[key] = [dtype.type(v) for v in state[key]]
            layout = (list(layout["paths"]), list(layout["sizes"]), dtype)
        self._hyper, self._given = hyper, dict(saved["hyper"])
        self._state, self._layout = state, layout

    def __repr__(self) -> str:
        return f"LBFGS({', '.join(f'{k}={v!r}' for k, v in self._given.items())})"


def _vector(value: Any, dtype: np.dtype, n: int, key: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype != dtype or value.shape != (n,):
        raise ValueError(f"state_dict: state[{key!r}] must be a {dtype} array of shape ({n},)")
    return np.array(value, copy=True)
