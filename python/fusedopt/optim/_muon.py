"""Muon (torch.optim.Muon, torch 2.13) on numpy trees, and the step that
fusedopt.torch.Muon shares.

Per 2-D parameter (rows x cols), in this order; bf16(x) rounds a float32 to
the nearest bfloat16 (ties to even), as torch's bfloat16 operations round
their float results::

    buf = lerp(buf, g, 1 - momentum)                 native pass, in the parameter's dtype
    u = lerp(g, buf, momentum) if nesterov else buf  (same pass)
    X = bf16(u), transposed if rows > cols           (same pass; also sum X*X in a fixed order)
    X = bf16(X / max(bf16(sqrt(sum)), eps))          native pass
    ns_steps times, with (a, b, c) = ns_coefficients:
        A = bf16(X @ X.T)                            BLAS sgemm, then a native rounding pass
        B = bf16(b * A + c * (A @ A))                BLAS, then a native pass
        X = bf16(a * X + B @ X)                      BLAS, then a native pass
    p = p * (1 - lr * weight_decay)                  native pass, in the parameter's dtype
    p = p + (-adjusted_lr) * O                       (same pass; O = X, transposed back)

Here the products are float32 GEMMs of bfloat16 values through numpy's BLAS;
fusedopt.torch.Muon runs the iterations in torch's bfloat16 GEMMs, which also
sum in float32 and round once. Each product is exact, the sums in the BLAS's
order (it depends on the library, its version, the CPU and its thread count);
everything else is fixed. So both agree with torch to torch's tolerances, not bits.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import _core
from . import _checks as checks
from ._commit import Commit, PendingCommit
from ._given import GivenHyper
from ._tree import float_leaves

DEFAULT_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
Orthogonalise = Callable[[np.ndarray, Tuple[float, float, float], int], np.ndarray]


def _bf16(x: float) -> np.float32:
    a = np.array([x], np.float32)
    _core.muon_round(a)
    return a[0]


def check_hyper(values: Dict[str, Any]) -> Dict[str, Any]:
    """torch's refusals (lr, momentum, weight_decay >= 0; adjust_lr_fn), plus the
    ones torch makes only at the first step (ns_steps < 100, three coefficients)."""
    out = dict(values)
    lr = values["lr"]
    if isinstance(lr, (bool, np.bool_)) or not isinstance(lr, numbers.Real) or not math.isfinite(float(lr)):
        raise TypeError(f"lr must be a finite real number, got {lr!r}")
    if not 0.0 <= float(lr):
        raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
    out["lr"] = float(lr)
    for name in ("momentum", "weight_decay"):
        out[name] = checks.non_negative(name, values[name])
    out["eps"] = checks.non_negative("eps", values["eps"])
    out["nesterov"] = checks.flag("nesterov", values["nesterov"])
    coeffs = values["ns_coefficients"]
    if isinstance(coeffs, (str, bytes)) or not hasattr(coeffs, "__len__") or len(coeffs) != 3:
        raise ValueError("ns_coefficients: Coefficients must be a tuple of exactly 3 values")
    out["ns_coefficients"] = tuple(checks.finite(f"ns_coefficients[{i}]", c) for i, c in enumerate(coeffs))
    steps = values["ns_steps"]
    if isinstance(steps, (bool, np.bool_)) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise TypeError(f"ns_steps must be an int >= 0, got {steps!r}")
    if steps >= 100:
        raise ValueError("ns_steps: Number of steps must be less than 100 for computational efficiency")
    out["ns_steps"] = int(steps)
    if values["adjust_lr_fn"] not in (None, "original", "match_rms_adamw"):
        raise ValueError(f"Adjust learning rate function {values['adjust_lr_fn']} is not supported")
    return out


def adjusted_lr(lr: float, adjust_lr_fn: Optional[str], shape: Tuple[int, ...]) -> float:
    """torch's _adjust_lr."""
    a, b = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        ratio = math.sqrt(max(1, a / b))
    elif adjust_lr_fn == "match_rms_adamw":
        ratio = 0.2 * math.sqrt(max(a, b))
    else:
        ratio = 1.0
    return lr * ratio


def step(params: Sequence[np.ndarray], grads: Sequence[np.ndarray], bufs: Sequence[np.ndarray],
         hyper: Dict[str, Any], orthogonalise: Orthogonalise, done: Optional[np.ndarray] = None) -> None:
    """One Muon step of 2-D C-contiguous arrays (params and bufs written in
    place); `orthogonalise(x, coefficients, steps)` runs the Newton-Schulz
    iterations on a scaled float32 array of bfloat16 values and returns the
    result as one (numpy_newton_schulz, or fusedopt.torch's). `done`: set to 1
    by the parameters' native pass once it has written them."""
    transposed, outs = directions(params, grads, bufs, hyper, orthogonalise)
    decay, neg = update_scalars(params, hyper)
    _core.muon_update(list(params), outs, transposed, decay, neg, done)


def update_scalars(params: Sequence[np.ndarray], hyper: Dict[str, Any]) -> Tuple[List[float], List[float]]:
    """Per parameter, the decay and -adjusted_lr of the update pass (p = p * decay + neg * O)."""
    lr = hyper["lr"]
    return [1 - lr * hyper["weight_decay"]] * len(params), [-adjusted_lr(lr, hyper["adjust_lr_fn"], p.shape)
                                                              for p in params]


def directions(params: Sequence[np.ndarray], grads: Sequence[np.ndarray], bufs: Sequence[np.ndarray],
               hyper: Dict[str, Any], orthogonalise: Orthogonalise) -> Tuple[List[bool], List[np.ndarray]]:
    """The step up to the parameters' pass: bufs written in place; returns per
    parameter whether its O is transposed, and O."""
    transposed = [p.shape[0] > p.shape[1] for p in params]
    xs = [np.empty(p.shape[::-1] if tr else p.shape, np.float32) for p, tr in zip(params, transposed)]
    sums = _core.muon_momentum(list(grads), list(bufs), xs, transposed, hyper["momentum"], hyper["nesterov"])
    eps = _bf16(hyper["eps"])
    outs = []
    for x, total in zip(xs, sums):
        _core.muon_scale(x, float(max(_bf16(math.sqrt(total)), eps)))
        outs.append(orthogonalise(x, hyper["ns_coefficients"], hyper["ns_steps"]))
    return transposed, outs


def numpy_newton_schulz(x: np.ndarray, coefficients: Tuple[float, float, float], steps: int) -> np.ndarray:
    """The iterations with numpy's float32 GEMMs, each followed by a native
    pass that adds the float32 term and rounds to bfloat16."""
    a, b, c = coefficients
    for _ in range(steps):
        gram = np.matmul(x, x.T)
        _core.muon_round(gram)
        update = np.matmul(gram, gram)
        _core.muon_combine(update, gram, update, b, c)
        prod = np.matmul(update, x)
        _core.muon_combine(prod, x, prod, a, 1.0)
        x = prod
    return x


class Muon(PendingCommit, GivenHyper):
    """Muon (torch.optim.Muon, torch 2.13) on a numpy tree of 2-D float32 or
    float64 arrays: momentum, then Newton-Schulz orthogonalisation in
    bfloat16 through numpy's BLAS, then decoupled weight decay and the update
    (the operation order is in docs/optim.md, "Muon")::

        opt = optim.Muon(lr=0.02)
        opt.step(params, grads)        # params stepped in place

    State: ``momentum_buffer`` per leaf (``state_arrays()``), created at the
    first step. Bad input raises before anything is written; a
    KeyboardInterrupt leaves the step all done or not begun.
    """

    _check_hyper = staticmethod(check_hyper)

    def __init__(self, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95, nesterov: bool = True,
                 ns_coefficients: Tuple[float, float, float] = DEFAULT_NS_COEFFICIENTS, eps: float = 1e-7,
                 ns_steps: int = 5, adjust_lr_fn: Optional[str] = None) -> None:
        """The arguments are explained in the class documentation, help(Muon)."""
        self._given = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                           ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        self._hyper = check_hyper(self._given)
        self._bufs: Optional[Dict[str, np.ndarray]] = None

    def _leaves(self, params: Any, grads: Any) -> Tuple[List[str], List[np.ndarray], List[np.ndarray]]:
        ps, gs = float_leaves(params, grads)
        for path, p in ps.items():
            where = path or "the root"
            if p.ndim != 2:
                raise ValueError(f"params at {where}: Muon only supports 2D parameters whereas we found a "
                                 f"parameter with size: {p.shape}")
            if not (p.flags.c_contiguous and p.flags.writeable):
                raise ValueError(f"params at {where}: expected a writeable C-contiguous array")
            g = gs[path]
            if not isinstance(g, np.ndarray) or g.dtype != p.dtype or g.shape != p.shape:
                raise TypeError(f"grads at {where}: expected a {p.dtype} array of shape {p.shape}")
        if self._bufs is not None:
            shapes = {k: (v.shape, v.dtype) for k, v in self._bufs.items()}
            if shapes != {k: (p.shape, p.dtype) for k, p in ps.items()}:
                raise ValueError("params: the tree differs from the state's (reset() forgets the state)")
        return list(ps), list(ps.values()), [np.ascontiguousarray(g) for g in gs.values()]

    def step(self, params: Any, grads: Any) -> None:
        self._finish()
        paths, ps, gs = self._leaves(params, grads)
        # New buffers, committed after the parameters' pass: an exception before leaves the state as it was.
        old = self._bufs
        bufs = {k: np.zeros_like(p) if old is None else old[k].copy() for k, p in zip(paths, ps)}
        hyper = self._hyper

        def show() -> None:
            self._bufs = bufs

        self._commit(Commit(show), lambda done: step(ps, gs, [bufs[k] for k in paths], hyper, numpy_newton_schulz,
                                                     done))

    def reset(self) -> None:
        self._pending = None
        self._bufs = None

    def state_arrays(self) -> Dict[str, Dict[str, np.ndarray]]:
        """``{"momentum_buffer": {path: array}}`` (the state's own arrays); ``{}`` before the first step."""
        self._finish()
        return {} if self._bufs is None else {"momentum_buffer": dict(self._bufs)}

    def state_dict(self) -> Dict[str, Any]:
        self._finish()
        bufs = None if self._bufs is None else {k: v.copy() for k, v in self._bufs.items()}
        return {"version": 1, "class": "Muon", "hyper": dict(self._given), "momentum_buffer": bufs}

    def load_state_dict(self, saved: Dict[str, Any]) -> None:
        self._finish()
        if not isinstance(saved, dict) or saved.get("class") != "Muon" or saved.get("version") != 1:
            raise ValueError("state_dict: expected a version 1 Muon state dict")
        hyper = check_hyper(saved["hyper"])
        bufs = saved["momentum_buffer"]
        if bufs is not None:
            for k, v in bufs.items():
                if not isinstance(v, np.ndarray) or v.ndim != 2 or v.dtype not in (np.float32, np.float64):
                    raise ValueError(f"state_dict: momentum_buffer at {k}: expected a 2-D float array")
            bufs = {k: np.array(v, copy=True, order="C") for k, v in bufs.items()}
        self._given, self._hyper, self._bufs = dict(saved["hyper"]), hyper, bufs

    def __getstate__(self) -> Dict[str, Any]:
        self._finish()
        return {k: v for k, v in self.__dict__.items() if k != "_pending"}

    def __repr__(self) -> str:
        return f"Muon({', '.join(f'{k}={v!r}' for k, v in self._given.items())})"
