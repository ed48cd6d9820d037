"""The implementations that bench_step.py runs side by side.

Each implementation is a factory ``make(optimizer, params, grads) -> step``:
``params`` is a tree (one array, or a list of arrays) that the implementation
owns and steps in place, ``grads`` the gradient tree (shared, never written).
``step()`` takes one optimizer step. A factory raises ``Skip`` when it cannot
run here (library missing, variant not offered).

Every implementation uses float32 and the same hyper-parameters (``HYPER``).
The numpy one follows docs/semantics.md operation by operation, so it is also
the bit-exact reference of demo.py. The numexpr, torch and DeepSpeed ones are
speed peers only: their formulas differ in details (torch's bias correction,
eps placement) and nobody compares their bits.
"""
import functools
import inspect
from collections import namedtuple

import numpy as np

EPS = np.float32(2.0 ** -23)
LR = 0.001
# Weights of docs/semantics.md (paysage's defaults).
HYPER = {
    "ADAM": {"mean_weight": 0.9, "mean_square_weight": 0.999},
    "RMSProp": {"mean_square_weight": 0.9},
    "Momentum": {"momentum": 0.9},
    "Gradient": {},
}
OPTIMIZERS = tuple(HYPER)

# Bytes that one in-place step must move per float32 element, the least any
# implementation can do: arrays read + arrays written, 4 bytes each.
#   ADAM: read g, p, m, v; write p, m, v -> 7 * 4
#   RMSProp: read g, p, v; write p, v   -> 5 * 4
#   Momentum: read g, p, m; write p, m  -> 5 * 4
#   Gradient: read g, p; write p        -> 3 * 4
BYTES_PER_ELEMENT = {"ADAM": 28, "RMSProp": 20, "Momentum": 20, "Gradient": 12}


class Skip(Exception):
    """This implementation cannot run here; the message says why."""


Implementation = namedtuple("Implementation", "key label make")


def leaves(tree):
    """The arrays of a benchmark tree: one array, or a list of arrays."""
    return [tree] if isinstance(tree, np.ndarray) else list(tree)


# -- fusedopt --------------------------------------------------------------------

def _fusedopt_optimizer(name):
    from fusedopt import optimizers, schedules
    cls = getattr(optimizers, name)
    return cls(stepsize=schedules.Constant(initial=LR), **HYPER[name])


def make_fusedopt_inplace(name, params, grads):
    """fusedopt's in-place path: p -= lr * direction inside the kernel."""
    return functools.partial(_fusedopt_optimizer(name).update, params, grads)


def make_fusedopt_divider(name, params, grads):
    """fusedopt's in-place path with float32 division by 1 - w and 1 - w2 on the
    divider, as without csrc/paysage/exact_division.h: what the FMA division gains."""
    if name not in ("ADAM", "RMSProp"):
        raise Skip(f"{name} does not divide by 1 - w or 1 - w2")
    from fusedopt import _core
    step = make_fusedopt_inplace(name, params, grads)

    def divider_step():
        _core._set_exact_division(False)
        try:
            step()
        finally:
            _core._set_exact_division(True)
    return divider_step


class ArrayModel:
    """The least a paysage model does with a delta: p = p - delta, in place."""

    def __init__(self, params):
        self.params = leaves(params)

    def parameter_update(self, delta):
        for p, d in zip(self.params, leaves(delta)):
            np.subtract(p, d, out=p)


def make_fusedopt_paysage(name, params, grads):
    """fusedopt's paysage path: the kernel writes a new delta tree and the
    model subtracts it (its time includes the model's subtraction)."""
    return functools.partial(_fusedopt_optimizer(name).update, ArrayModel(params), grads)


# -- plain numpy, docs/semantics.md order ------------------------------------------

class NumpyOptimizer:
    """docs/semantics.md in float32 numpy, one in-place ufunc per operation.

    Temporaries are allocated once and reused (``out=``), so the comparison
    is with numpy at its best, not with numpy allocating on every operation.
    """

    def __init__(self, name, lr=LR, mean_weight=0.9, mean_square_weight=0.999, momentum=0.9):
        self.name = name
        self.lr = np.float32(lr)
        if name == "Momentum":
            mean_weight, mean_square_weight = momentum, 0.0
        elif name == "RMSProp":
            mean_weight = 0.0
        elif name == "Gradient":
            mean_weight = mean_square_weight = 0.0
        self.w = np.float32(mean_weight)
        self.w2 = np.float32(mean_square_weight)
        self.omw = np.float32(1) - self.w
        self.omw2 = np.float32(1) - self.w2
        self.m = self.v = None
        self.tmp = None

    def step(self, params, grads):
        """One in-place step of every leaf (first call: m = g, v = g*g)."""
        ps, gs = leaves(params), leaves(grads)
        if self.tmp is None:
            self.tmp = [(np.empty_like(g), np.empty_like(g)) for g in gs]
        first = self.m is None and self.v is None
        if first:
            self.m = [g.copy() for g in gs] if self.w else None
            self.v = [g * g for g in gs] if self.w2 else None
        for k, (p, g) in enumerate(zip(ps, gs)):
            t, u = self.tmp[k]
            m = self.m[k] if self.m is not None else None
            v = self.v[k] if self.v is not None else None
            if not first:
                self._moments(g, m, v, t)
            d = self._direction(g, m, v, t, u)
            np.multiply(self.lr, d, out=u)   # delta = lr * direction
            np.subtract(p, u, out=p)         # p = p - delta

    def _moments(self, g, m, v, t):
        if m is not None:                    # m = (w * m) + ((1 - w) * g)
            np.multiply(self.w, m, out=m)
            np.multiply(self.omw, g, out=t)
            np.add(m, t, out=m)
        if v is not None:                    # v = (w2 * v) + (((1 - w2) * g) * g)
            np.multiply(self.w2, v, out=v)
            np.multiply(self.omw2, g, out=t)
            np.multiply(t, g, out=t)
            np.add(v, t, out=v)

    def _direction(self, g, m, v, t, u):
        x = m if m is not None else g
        if v is None:
            return x
        np.divide(v, self.omw2, out=t)       # v / (1 - w2)
        np.add(EPS, t, out=t)                # EPS + ...
        np.sqrt(t, out=t)
        if m is not None:
            np.divide(m, self.omw, out=u)    # m / (1 - w)
            x = u
        np.divide(x, t, out=u)
        return u


def make_numpy(name, params, grads):
    return functools.partial(NumpyOptimizer(name, **HYPER[name]).step, params, grads)


# -- numexpr, as paysage's numpy backend evaluates ------------------------------

def make_numexpr(name, params, grads):
    """One numexpr expression per moment and per operation of the step, new
    arrays for the direction and delta, then the model's subtraction: the
    work pattern of paysage's numpy backend (a speed peer, not bit-exact)."""
    try:
        import numexpr as ne
    except ImportError:
        raise Skip("numexpr is not installed (pip install numexpr)") from None
    opt = NumpyOptimizer(name, **HYPER[name])  # only for its float32 scalars
    w, w2, omw, omw2, lr = opt.w, opt.w2, opt.omw, opt.omw2, opt.lr
    ps, gs = leaves(params), leaves(grads)
    ms = [g.copy() if name in ("ADAM", "Momentum") else None for g in gs]
    vs = [g * g if name in ("ADAM", "RMSProp") else None for g in gs]

    def step():
        for p, g, m, v in zip(ps, gs, ms, vs):
            if name in ("ADAM", "Momentum"):
                ne.evaluate("w*x + (1-w)*y", local_dict={"w": w, "x": m, "y": g}, out=m)
            if name in ("ADAM", "RMSProp"):
                ne.evaluate("w*x + (1-w)*y*y", local_dict={"w": w2, "x": v, "y": g}, out=v)
            if name == "ADAM":
                x = ne.evaluate("x / a", local_dict={"x": m, "a": omw})
            elif name == "Momentum":
                x = m
            else:
                x = g
            if name in ("ADAM", "RMSProp"):
                vu = ne.evaluate("x / a", local_dict={"x": v, "a": omw2})
                z = EPS + vu  # paysage's sqrt_div: eps added by numpy, then one expression
                x = ne.evaluate("x / sqrt(z)", local_dict={"x": x, "z": z})
            delta = ne.evaluate("a * x", local_dict={"a": lr, "x": x})
            ne.evaluate("x - y", local_dict={"x": p, "y": delta}, out=p)
    return step


# -- torch.optim -----------------------------------------------------------------

_TORCH_CLASSES = {  # optimizer -> (torch.optim class name, its arguments)
    "ADAM": ("Adam", {"betas": (0.9, 0.999), "eps": float(EPS)}),
    "RMSProp": ("RMSprop", {"alpha": 0.9, "eps": float(EPS)}),
    # buf = momentum * buf + (1 - dampening) * g = 0.9 * buf + 0.1 * g, paysage's running mean
    "Momentum": ("SGD", {"momentum": 0.9, "dampening": 0.9}),
    "Gradient": ("SGD", {}),
}


def torch_label(name, variant):
    cls, kw = _TORCH_CLASSES[name]
    extra = "momentum=0.9, " if "momentum" in kw else ""
    return f"torch.optim.{cls}({extra}{variant}=True)"


def _torch():
    try:
        import torch
    except ImportError:
        raise Skip("torch is not installed (pip install torch==2.13.0)") from None
    return torch


def _torch_tensors(params, grads):
    torch = _torch()
    tensors = [torch.from_numpy(p) for p in leaves(params)]  # shares the numpy memory
    for t, g in zip(tensors, leaves(grads)):
        t.grad = torch.from_numpy(g)
    return tensors


def make_torch(variant):
    """torch.optim on CPU with foreach=True or fused=True."""
    def make(name, params, grads):
        torch = _torch()
        cls_name, kwargs = _TORCH_CLASSES[name]
        cls = getattr(torch.optim, cls_name)
        if variant not in inspect.signature(cls).parameters:
            raise Skip(f"torch.optim.{cls_name} has no {variant}= option in torch {torch.__version__}")
        opt = cls(_torch_tensors(params, grads), lr=LR, **kwargs, **{variant: True})
        return opt.step
    make.__name__ = f"make_torch_{variant}"
    return make


def make_deepspeed(name, params, grads):
    """DeepSpeed's AVX-512 CPU Adam (ADAM only), when it imports and its op builds."""
    if name != "ADAM":
        raise Skip("DeepSpeed's CPU optimizer is Adam only")
    opt = deepspeed_adam()(_torch_tensors(params, grads), lr=LR, betas=(0.9, 0.999), eps=float(EPS),
                           weight_decay=0.0, adamw_mode=False)
    return opt.step


_DEEPSPEED = []  # [class] or [Skip]: the outcome of the first attempt, kept (a failed build is slow)


def deepspeed_adam():
    """DeepSpeedCPUAdam with its C++ op built and loaded (the first build takes
    minutes, then it is cached on disk); raises Skip when either fails."""
    if not _DEEPSPEED:
        try:
            _DEEPSPEED.append(_load_deepspeed_adam())
        except Skip as e:
            _DEEPSPEED.append(e)
    if isinstance(_DEEPSPEED[0], Skip):
        raise _DEEPSPEED[0]
    return _DEEPSPEED[0]


def _load_deepspeed_adam():
    torch = _torch()
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
    except ImportError as e:
        raise Skip(f"deepspeed is not installed or does not import (pip install deepspeed): {e}") from None
    try:
        t = torch.zeros(16)
        t.grad = torch.zeros(16)
        DeepSpeedCPUAdam([t], lr=LR)  # builds or loads the op now, not inside a timing
    except Exception as e:
        raise Skip(f"DeepSpeedCPUAdam unavailable: {type(e).__name__}: {e}") from None
    return DeepSpeedCPUAdam


def implementations(name):
    """The implementations run for optimizer `name`, fusedopt in-place first."""
    if name in peers_optim.HYPER:
        return peers_optim.implementations(name)
    impls = [
        Implementation("fusedopt_inplace", "fusedopt in-place", make_fusedopt_inplace),
        Implementation("fusedopt_divider", "fusedopt in-place, divider only", make_fusedopt_divider),
        Implementation("fusedopt_paysage", "fusedopt paysage path*", make_fusedopt_paysage),
        Implementation("numpy", "numpy float32 (out=)", make_numpy),
        Implementation("numexpr", "numexpr, paysage style", make_numexpr),
        Implementation("torch_foreach", torch_label(name, "foreach"), make_torch("foreach")),
        Implementation("torch_fused", torch_label(name, "fused"), make_torch("fused")),
    ]
    if name == "ADAM":
        impls.append(Implementation("deepspeed", "DeepSpeedCPUAdam", make_deepspeed))
    return impls


# The optim family (fusedopt.optim), benchmarked in the same run. Imported
# last: peers_optim uses Skip and the torch helpers above.
import peers_optim  # noqa: E402

OPTIMIZERS = OPTIMIZERS + tuple(peers_optim.HYPER)
BYTES_PER_ELEMENT.update(peers_optim.BYTES)
