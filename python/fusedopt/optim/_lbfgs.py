"""L-BFGS with torch.optim.LBFGS's semantics (torch 2.13), on one flat vector.

The control flow (the iterations, the strong-Wolfe line search) is torch's,
in Python; every pass over the vector is one native call (``_core.lbfgs_*``,
csrc/optim/lbfgs.h): the dot products are summed in double in a fixed order
and rounded to the parameters' dtype, as torch's 0-d tensors are, and scalars
of that dtype are NumPy scalars, so that float32 arithmetic stays float32.
fusedopt.optim.LBFGS and fusedopt.torch.LBFGS supply the `Problem` (the
parameters, the closure and the gradients) and keep the state.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .. import _core

HYPER = ("lr", "max_iter", "max_eval", "tolerance_grad", "tolerance_change", "history_size", "line_search_fn")


def _count(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return int(value)


def _tolerance(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    out = float(value)
    if not (math.isfinite(out) and out >= 0.0):
        raise ValueError(f"{name} must be a finite real >= 0, got {value!r}")
    return out


def check_hyper(values: Dict[str, Any]) -> Dict[str, Any]:
    """The checked hyper-parameters (max_eval None -> max_iter * 5 // 4, as torch)."""
    out = dict(values)
    lr = values["lr"]
    if isinstance(lr, (bool, np.bool_)) or not isinstance(lr, numbers.Real):
        raise TypeError(f"lr must be a real number, got {type(lr).__name__}")
    if not (math.isfinite(float(lr)) and float(lr) >= 0.0):
        raise ValueError(f"Invalid learning rate: {lr} (lr must be a finite real >= 0)")
    out["max_iter"] = _count("max_iter", values["max_iter"])
    out["max_eval"] = out["max_iter"] * 5 // 4 if values["max_eval"] is None else _count("max_eval", values["max_eval"])
    out["tolerance_grad"] = _tolerance("tolerance_grad", values["tolerance_grad"])
    out["tolerance_change"] = _tolerance("tolerance_change", values["tolerance_change"])
    out["history_size"] = _count("history_size", values["history_size"])
    if values["line_search_fn"] not in (None, "strong_wolfe"):
        raise ValueError(f"line_search_fn must be None or 'strong_wolfe', got {values['line_search_fn']!r}")
    return out


def check_disjoint(arrays: List[np.ndarray], names: List[str]) -> None:
    """Refuses parameters that share memory: a step adds to each once."""
    spans = sorted((a.__array_interface__["data"][0], a.nbytes, name) for a, name in zip(arrays, names) if a.nbytes)
    for (start, size, first), (other, _, second) in zip(spans, spans[1:]):
        if other < start + size:
            raise ValueError(f"{second} shares memory with {first}: every parameter must have its own memory")


class Problem:
    """What an optimizer supplies: the flat size and dtype, and the operations
    on the parameters (each one native call)."""

    dtype: np.dtype
    n: int

    def evaluate(self) -> Tuple[Any, float]:
        """Calls the closure: (what it returned as the loss, that loss as a float)."""
        raise NotImplementedError

    def flat_grad(self) -> np.ndarray:
        """A new flat array of the gradients of the last evaluation."""
        raise NotImplementedError

    def add(self, t: Any, d: np.ndarray) -> None:
        raise NotImplementedError

    def snapshot(self) -> np.ndarray:
        raise NotImplementedError

    def restore(self, x: np.ndarray) -> None:
        raise NotImplementedError


def _cubic_interpolate(x1: Any, f1: Any, g1: Any, x2: Any, f2: Any, g2: Any,
                       bounds: Optional[Tuple[Any, Any]] = None) -> Any:
    if bounds is not None:
        xmin_bound, xmax_bound = bounds
    else:
        xmin_bound, xmax_bound = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1 ** 2 - g1 * g2
    if d2_square >= 0:
        d2 = np.sqrt(d2_square)
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(min_pos, xmin_bound), xmax_bound)
    return (xmin_bound + xmax_bound) / 2.0


def _strong_wolfe(obj_func: Callable[[Any], Tuple[float, np.ndarray]], cast: Callable[[float], Any], t: Any,
                  d: np.ndarray, f: float, g: np.ndarray, gtd: Any, tolerance_change: float, max_ls: int,
                  c1: float = 1e-4, c2: float = 0.9) -> Tuple[float, np.ndarray, Any, int]:
    """torch's _strong_wolfe; gradients are fresh arrays, never written, so no clones."""
    d_norm = cast(_core.lbfgs_abs_max(d))
    f_new, g_new = obj_func(t)
    ls_func_evals = 1
    gtd_new = cast(_core.lbfgs_dot(g_new, d))
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    ls_iter = 0
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f, bracket_g, bracket_gtd = [t_prev, t], [f_prev, f_new], [g_prev, g_new], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f, bracket_g, bracket_gtd = [t_prev, t], [f_prev, f_new], [g_prev, g_new], [gtd_prev, gtd_new]
            break
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        tmp = t
        t = _cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step))
        t_prev, f_prev, g_prev, gtd_prev = tmp, f_new, g_new, gtd_new
        f_new, g_new = obj_func(t)
        ls_func_evals += 1
        gtd_new = cast(_core.lbfgs_dot(g_new, d))
        ls_iter += 1
    if ls_iter == max_ls:
        bracket, bracket_f, bracket_g = [0, t], [f, f_new], [g, g_new]

    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = _cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1])
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                t = max(bracket) - eps if abs(t - max(bracket)) < abs(t - min(bracket)) else min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False
        f_new, g_new = obj_func(t)
        ls_func_evals += 1
        gtd_new = cast(_core.lbfgs_dot(g_new, d))
        ls_iter += 1
        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
            bracket[high_pos], bracket_f[high_pos] = t, f_new
            bracket_g[high_pos], bracket_gtd[high_pos] = g_new, gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                bracket[high_pos], bracket_f[high_pos] = bracket[low_pos], bracket_f[low_pos]
                bracket_g[high_pos], bracket_gtd[high_pos] = bracket_g[low_pos], bracket_gtd[low_pos]
            bracket[low_pos], bracket_f[low_pos] = t, f_new
            bracket_g[low_pos], bracket_gtd[low_pos] = g_new, gtd_new
    return bracket_f[low_pos], bracket_g[low_pos], bracket[low_pos], ls_func_evals


def step(problem: Problem, state: Dict[str, Any], hyper: Dict[str, Any]) -> Tuple[Any, Dict[str, Any]]:
    """One torch.optim.LBFGS.step: returns (the first loss, the new state).
    `state` is not modified (the caller commits the new one); on an exception
    the parameters are put back as they were."""
    cast = problem.dtype.type
    lr, max_iter, max_eval = float(hyper["lr"]), hyper["max_iter"], hyper["max_eval"]
    tolerance_grad, tolerance_change = hyper["tolerance_grad"], hyper["tolerance_change"]
    history_size, line_search_fn = hyper["history_size"], hyper["line_search_fn"]
    new = dict(state)
    new.setdefault("func_evals", 0)
    new.setdefault("n_iter", 0)
    start = problem.snapshot()
    try:
        orig_loss, loss = problem.evaluate()
        current_evals = 1
        new["func_evals"] += 1
        flat_grad = problem.flat_grad()
        if _core.lbfgs_abs_max(flat_grad) <= tolerance_grad:
            return orig_loss, new
        d, t = new.get("d"), new.get("t")
        old_dirs = list(new.get("old_dirs") or [])
        old_stps = list(new.get("old_stps") or [])
        ro = list(new.get("ro") or [])
        h_diag = new.get("H_diag")
        prev_flat_grad, prev_loss = new.get("prev_flat_grad"), new.get("prev_loss")
        if prev_flat_grad is not None:
            prev_flat_grad = prev_flat_grad.copy()  # written by the pair pass; the old state keeps its own
        al = new.get("al")
        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            new["n_iter"] += 1
            d_new = np.empty(problem.n, problem.dtype)
            if new["n_iter"] == 1:
                old_dirs, old_stps, ro, h_diag = [], [], [], 1
                gtd = cast(_core.lbfgs_two_loop(d_new, flat_grad, [], [], np.empty(0, problem.dtype), 1.0,
                                                np.empty(0, problem.dtype)))
                prev_flat_grad = flat_grad.copy()
            else:
                y, s = np.empty(problem.n, problem.dtype), np.empty(problem.n, problem.dtype)
                ys, yy = _core.lbfgs_new_pair(flat_grad, prev_flat_grad, d, float(t), y, s)
                ys = cast(ys)
                if ys > 1e-10:
                    if len(old_dirs) == history_size:
                        old_dirs.pop(0)
                        old_stps.pop(0)
                        ro.pop(0)
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(cast(1.0 / ys))
                    h_diag = ys / cast(yy)
                al_array = np.zeros(history_size, problem.dtype)
                gtd = cast(_core.lbfgs_two_loop(d_new, flat_grad, old_dirs, old_stps, np.array(ro, problem.dtype),
                                                float(h_diag), al_array))
                al = list(al or [None] * history_size)
                al[:len(old_dirs)] = [cast(v) for v in al_array[:len(old_dirs)]]
            d = d_new
            prev_loss = loss
            if new["n_iter"] == 1:
                t = min(1.0, 1.0 / cast(_core.lbfgs_abs_sum(flat_grad))) * lr
            else:
                t = lr
            if gtd > -tolerance_change:
                break
            ls_func_evals = 0
            if line_search_fn is not None:
                x_init = problem.snapshot()

                def obj_func(step_size: Any) -> Tuple[float, np.ndarray]:
                    problem.add(step_size, d)
                    value = problem.evaluate()[1]
                    g_at = problem.flat_grad()
                    problem.restore(x_init)
                    return value, g_at

                loss, flat_grad, t, ls_func_evals = _strong_wolfe(
                    obj_func, cast, t, d, loss, flat_grad, gtd, tolerance_change, max_eval - current_evals)
                problem.add(t, d)
                opt_cond = _core.lbfgs_abs_max(flat_grad) <= tolerance_grad
            else:
                problem.add(t, d)
                opt_cond = False
                if n_iter != max_iter:
                    loss = problem.evaluate()[1]
                    flat_grad = problem.flat_grad()
                    opt_cond = _core.lbfgs_abs_max(flat_grad) <= tolerance_grad
                    ls_func_evals = 1
            current_evals += ls_func_evals
            new["func_evals"] += ls_func_evals
            if n_iter == max_iter or current_evals >= max_eval or opt_cond:
                break
            if _core.lbfgs_abs_max(d, float(t)) <= tolerance_change:
                break
            if abs(loss - prev_loss) < tolerance_change:
                break
        new.update(d=d, t=t, old_dirs=old_dirs, old_stps=old_stps, ro=ro, H_diag=h_diag,
                   prev_flat_grad=prev_flat_grad, prev_loss=prev_loss)
        if al is not None:
            new["al"] = al
        return orig_loss, new
    except BaseException:
        problem.restore(start)
        raise
