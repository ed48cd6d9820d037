"""fusedopt.torch.LBFGS: torch.optim.LBFGS whose vector passes are
fusedopt's native ones (fusedopt/optim/_lbfgs.py holds the algorithm).

The state is torch's, in ``self.state[first param]``, with torch's names and
types (flat tensors, lists of them, 0-d tensors for ``ro``, ``al``,
``H_diag``), so state dicts interchange with torch.optim.LBFGS both ways. The
tensors are ``torch.from_numpy`` views of the arrays the native passes use; a
bridge remembers which array each tensor is, so a step converts only what is
new.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.optim import Optimizer

from ..optim import _lbfgs

_TENSOR_LISTS = ("old_dirs", "old_stps")
_SCALAR_LISTS = ("ro", "al")


def _scalar(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        return float(value.item())
    return value


class _TorchProblem(_lbfgs.Problem):
    def __init__(self, params: List[torch.Tensor], closure: Callable[[], Any]) -> None:
        dtype = params[0].dtype
        for i, p in enumerate(params):
            if p.device.type != "cpu" or p.layout != torch.strided or p.dtype not in (torch.float32, torch.float64):
                raise TypeError(f"params[{i}]: fusedopt.torch.LBFGS takes dense CPU float32/float64 tensors, "
                                f"got {p.dtype} on {p.device} ({p.layout})")
            if p.dtype != dtype:
                raise TypeError(f"params[{i}]: every parameter must have one dtype ({dtype}), got {p.dtype}")
            if not p.is_contiguous():
                raise ValueError(f"params[{i}]: expected a contiguous tensor")
        self.params = params
        self.arrays = [p.detach().numpy() for p in params]
        _lbfgs.check_disjoint(self.arrays, [f"params[{i}]" for i in range(len(params))])
        self.dtype = self.arrays[0].dtype
        self.sizes = [a.size for a in self.arrays]
        self.n = sum(self.sizes)
        self.closure = torch.enable_grad()(closure)

    def evaluate(self) -> Tuple[Any, float]:
        loss = self.closure()
        return loss, float(loss.detach() if isinstance(loss, torch.Tensor) else loss)

    def flat_grad(self) -> np.ndarray:
        grads: List[Optional[np.ndarray]] = []
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                grads.append(None)
                continue
            if g.is_sparse or g.layout != torch.strided:
                raise TypeError(f"params[{i}].grad: fusedopt.torch.LBFGS does not take sparse gradients")
            if g.dtype != p.dtype or g.shape != p.shape or g.device.type != "cpu":
                raise TypeError(f"params[{i}].grad: expected a CPU {p.dtype} tensor of shape {tuple(p.shape)}, "
                                f"got {g.dtype} of shape {tuple(g.shape)} on {g.device}")
            grads.append(g.detach().contiguous().resolve_conj().resolve_neg().numpy())
        out = np.empty(self.n, self.dtype)
        _lbfgs._core.lbfgs_gather(grads, self.sizes, out)
        return out

    def add(self, t: Any, d: np.ndarray) -> None:
        _lbfgs._core.lbfgs_add(self.arrays, d, float(t))

    def snapshot(self) -> np.ndarray:
        out = np.empty(self.n, self.dtype)
        _lbfgs._core.lbfgs_gather(self.arrays, self.sizes, out)
        return out

    def restore(self, x: np.ndarray) -> None:
        _lbfgs._core.lbfgs_scatter(x, self.arrays)


class _Bridge:
    """Which numpy array or scalar each state tensor is, and back."""

    def __init__(self) -> None:
        self.to_np: Dict[int, Tuple[Any, Any]] = {}
        self.to_torch: Dict[int, Tuple[Any, Any]] = {}

    def array(self, t: Any, dtype: torch.dtype, n: int, key: str) -> np.ndarray:
        hit = self.to_np.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1]
        if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.shape != (n,) or t.device.type != "cpu" \
                or t.layout != torch.strided or not t.is_contiguous():
            raise ValueError(f"state[{key!r}]: expected a contiguous CPU {dtype} tensor of shape ({n},)")
        return t.detach().numpy()

    def value(self, t: Any, cast: Callable[[Any], Any]) -> Any:
        if isinstance(t, torch.Tensor):
            hit = self.to_np.get(id(t))
            return hit[1] if hit is not None and hit[0] is t else cast(t.item())
        return t

    def core(self, state: Dict[str, Any], dtype: torch.dtype, cast: Callable[[Any], Any], n: int) -> Dict[str, Any]:
        out = dict(state)
        for key in ("d", "prev_flat_grad"):
            if out.get(key) is not None:
                out[key] = self.array(out[key], dtype, n, key)
        for key in _TENSOR_LISTS:
            if key in out:
                out[key] = [self.array(v, dtype, n, f"{key}[{i}]") for i, v in enumerate(out[key])]
        for key in _SCALAR_LISTS:
            if key in out:
                out[key] = [None if v is None else self.value(v, cast) for v in out[key]]
        for key in ("H_diag", "t"):
            if key in out:
                out[key] = self.value(out[key], cast)
        return out

    def torch_state(self, core: Dict[str, Any]) -> Dict[str, Any]:
        seen: Dict[int, Tuple[Any, Any]] = {}

        def wrap(v: Any) -> Any:
            if v is None or isinstance(v, (int, float)) and not isinstance(v, np.generic):
                return v
            hit = self.to_torch.get(id(v))
            t = hit[1] if hit is not None and hit[0] is v else (
                torch.from_numpy(v) if isinstance(v, np.ndarray) else torch.tensor(v))
            seen[id(v)] = (v, t)
            return t

        out = dict(core)
        for key in ("d", "prev_flat_grad", "H_diag", "t"):
            if key in out:
                out[key] = wrap(out[key])
        for key in _TENSOR_LISTS + _SCALAR_LISTS:
            if key in out:
                out[key] = [wrap(v) for v in out[key]]
        self.to_torch = seen
        self.to_np = {id(t): (t, v) for v, t in seen.values()}
        return out


class LBFGS(Optimizer):
    """torch.optim.LBFGS (torch 2.13) with fusedopt's native vector passes:
    the same constructor, closure API, single parameter group, state names
    and state dict; the dot products, axpys, the two-loop recursion and the
    flat gradient are native passes over all parameters (docs/torch.md,
    "LBFGS"). Parameters: dense CPU float32 or float64 tensors of one dtype.
    A step that raises leaves the parameters and the state as they were.

    Usage, as torch.optim.LBFGS's::

        opt = fusedopt.torch.LBFGS(model.parameters(), history_size=10, line_search_fn="strong_wolfe")
        def closure():
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            return loss
        opt.step(closure)                # calls closure() up to max_eval times
    """

    def __init__(self, params: Any, lr: Any = 1, max_iter: int = 20, max_eval: Optional[int] = None,
                 tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9, history_size: int = 100,
                 line_search_fn: Optional[str] = None) -> None:
        """The arguments are explained in the class documentation, help(LBFGS)."""
        checked = _lbfgs.check_hyper(dict(lr=_scalar(lr), max_iter=max_iter, max_eval=max_eval,
                                          tolerance_grad=tolerance_grad, tolerance_change=tolerance_change,
                                          history_size=history_size, line_search_fn=line_search_fn))
        defaults = dict(lr=lr, max_iter=max_iter, max_eval=checked["max_eval"], tolerance_grad=tolerance_grad,
                        tolerance_change=tolerance_change, history_size=history_size, line_search_fn=line_search_fn)
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        self._params = self.param_groups[0]["params"]
        self._bridge = _Bridge()

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        self._params = self.param_groups[0]["params"]
        self._bridge = _Bridge()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] = None) -> Any:  # type: ignore[override]
        """One torch.optim.LBFGS step; `closure` (required) re-evaluates the model and returns the loss."""
        if not callable(closure):
            raise TypeError("LBFGS.step(closure): closure must be a callable that re-evaluates the model and "
                            f"returns the loss, got {type(closure).__name__}")
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        group = self.param_groups[0]
        hyper = _lbfgs.check_hyper({k: _scalar(group[k]) if k == "lr" else group[k] for k in _lbfgs.HYPER})
        problem = _TorchProblem(self._params, closure)
        state = self.state[self._params[0]]
        core = self._bridge.core(state, self._params[0].dtype, problem.dtype.type, problem.n)
        loss, new = _lbfgs.step(problem, core, hyper)
        converted = self._bridge.torch_state(new)
        state.clear()
        state.update(converted)
        return loss
