"""The optim family (fusedopt.optim) and its peers, for bench_step.py.

Same contract as peers.py: ``make(name, params, grads) -> step`` on float32
trees, ``Skip`` when a peer cannot run. Names are ``optim.<Class>``; every
implementation uses ``HYPER`` (torch.optim's defaults, SGD with momentum 0.9,
AdamW with weight decay 1e-2). The numpy implementation follows docs/optim.md
operation by operation with reused temporaries (numpy at its best); torch and
DeepSpeed are speed peers.
"""
import functools
import inspect

import numpy as np

LR = 1e-3
HYPER = {
    "optim.Adam": {},
    "optim.AdamW": {"weight_decay": 1e-2},
    "optim.SGD": {"momentum": 0.9},
    "optim.RMSprop": {},
    "optim.Adagrad": {},
    "optim.Lion": {},
}
# Least bytes per float32 element of an in-place step (arrays read + written, 4 bytes each):
# Adam(W) reads g, p, m, v and writes p, m, v; the others keep one slot (read g, p, s; write p, s).
BYTES = {"optim.Adam": 28, "optim.AdamW": 28, "optim.SGD": 20, "optim.RMSprop": 20, "optim.Adagrad": 20,
         "optim.Lion": 20}

# After the tables: peers imports this module at its end and reads them, whichever is imported first.
import peers  # noqa: E402
from peers import Implementation, Skip, leaves  # noqa: E402


def _cls(name):
    return name.split(".", 1)[1]


def make_fusedopt(name, params, grads):
    from fusedopt import optim
    opt = getattr(optim, _cls(name))(lr=LR, **HYPER[name])
    return functools.partial(opt.step, params, grads)


class NumpyOptim:
    """docs/optim.md in float32 numpy, one in-place ufunc per operation."""

    def __init__(self, name):
        self.kind = _cls(name)
        self.h = HYPER[name]
        self.t = 0
        self.state = None

    def step(self, params, grads):
        ps, gs = leaves(params), leaves(grads)
        if self.state is None:
            slots = 2 if self.kind in ("Adam", "AdamW") else 1
            self.state = [([np.zeros_like(p) for _ in range(slots)], np.empty_like(p), np.empty_like(p)) for p in ps]
        self.t += 1
        f = np.float32
        for p, g, (s, a, b) in zip(ps, gs, self.state):
            if self.kind in ("Adam", "AdamW"):
                m, v = s
                if self.kind == "AdamW":
                    np.multiply(p, f(1 - LR * self.h["weight_decay"]), out=p)
                np.subtract(g, m, out=a)                 # m = m + (1 - b1) * (g - m)
                np.multiply(f(0.1), a, out=a)
                np.add(m, a, out=m)
                np.multiply(v, f(0.999), out=v)          # v = v * b2 + ((1 - b2) * g) * g
                np.multiply(f(1 - 0.999), g, out=a)
                np.multiply(a, g, out=a)
                np.add(v, a, out=v)
                step_size = LR / (1 - 0.9 ** self.t)
                bc2 = (1 - 0.999 ** self.t) ** 0.5
                np.sqrt(v, out=a)                        # den = sqrt(v) / bc2 + eps
                np.divide(a, f(bc2), out=a)
                np.add(a, f(1e-8), out=a)
                np.multiply(f(-step_size), m, out=b)     # p = p + (-step_size * m) / den
                np.divide(b, a, out=b)
                np.add(p, b, out=p)
            elif self.kind == "SGD":
                buf = s[0]
                if self.t == 1:
                    np.copyto(buf, g)
                else:
                    np.multiply(buf, f(0.9), out=buf)
                    np.add(buf, g, out=buf)              # (1 - dampening) = 1
                np.multiply(f(-LR), buf, out=a)
                np.add(p, a, out=p)
            elif self.kind == "RMSprop":
                v = s[0]
                np.multiply(v, f(0.99), out=v)
                np.multiply(f(1 - 0.99), g, out=a)
                np.multiply(a, g, out=a)
                np.add(v, a, out=v)
                _scaled_step(p, g, v, f(1e-8), a, b)
            elif self.kind == "Adagrad":
                acc = s[0]
                np.multiply(g, g, out=a)
                np.add(acc, a, out=acc)
                _scaled_step(p, g, acc, f(1e-10), a, b)
            else:  # Lion
                m = s[0]
                np.multiply(f(0.9), m, out=a)
                np.multiply(f(0.1), g, out=b)
                np.add(a, b, out=a)
                np.sign(a, out=a)
                np.multiply(f(-LR), a, out=a)
                np.add(p, a, out=p)
                np.multiply(f(0.99), m, out=m)
                np.multiply(f(0.01), g, out=b)
                np.add(m, b, out=m)


def _scaled_step(p, g, v, eps, a, b):
    """p = p + ((-lr) * g) / (sqrt(v) + eps), with temporaries a and b (RMSprop, Adagrad)."""
    np.sqrt(v, out=a)
    np.add(a, eps, out=a)
    np.multiply(np.float32(-LR), g, out=b)
    np.divide(b, a, out=b)
    np.add(p, b, out=p)


def make_numpy(name, params, grads):
    return functools.partial(NumpyOptim(name).step, params, grads)


def make_torch(variant):
    """torch.optim on CPU with foreach=True or fused=True (fused: Adam, AdamW, SGD, Adagrad)."""
    def make(name, params, grads):
        torch = peers._torch()
        cls = getattr(torch.optim, _cls(name), None)
        if cls is None:
            raise Skip(f"torch.optim has no {_cls(name)} in torch {torch.__version__}")
        if variant not in inspect.signature(cls).parameters:
            raise Skip(f"torch.optim.{_cls(name)} has no {variant}= option in torch {torch.__version__}")
        try:
            opt = cls(peers._torch_tensors(params, grads), lr=LR, **HYPER[name], **{variant: True})
            opt.step()  # fused CPU kernels missing for a class raise here, not inside a timing
        except RuntimeError as e:
            raise Skip(f"torch.optim.{_cls(name)}({variant}=True) fails on CPU: {e}") from None
        return opt.step
    make.__name__ = f"make_torch_{variant}"
    return make


_DEEPSPEED_CLASSES = {  # optimizer -> (module, class, extra arguments)
    "optim.AdamW": ("deepspeed.ops.adam", "DeepSpeedCPUAdam", {"adamw_mode": True, "weight_decay": 1e-2}),
    "optim.Adam": ("deepspeed.ops.adam", "DeepSpeedCPUAdam", {"adamw_mode": False}),
    "optim.Adagrad": ("deepspeed.ops.adagrad", "DeepSpeedCPUAdagrad", {}),
    "optim.Lion": ("deepspeed.ops.lion", "DeepSpeedCPULion", {}),
}


def make_deepspeed(name, params, grads):
    """DeepSpeed's CPU Adam (adamw_mode), Adagrad and Lion, when they import and their ops build."""
    if name not in _DEEPSPEED_CLASSES:
        raise Skip(f"DeepSpeed has no CPU {_cls(name)}")
    peers.deepspeed_adam()  # the shared attempt: a failed build is reported once, as a Skip
    module, cls_name, extra = _DEEPSPEED_CLASSES[name]
    try:
        import importlib
        cls = getattr(importlib.import_module(module), cls_name)
        opt = cls(peers._torch_tensors(params, grads), lr=LR, **extra)
    except Exception as e:
        raise Skip(f"{cls_name} unavailable: {type(e).__name__}: {e}") from None
    return opt.step


def implementations(name):
    """fusedopt.optim first, then its peers."""
    return [
        Implementation("fusedopt_inplace", f"fusedopt {name}", make_fusedopt),
        Implementation("numpy", "numpy float32 (out=)", make_numpy),
        Implementation("torch_foreach", f"torch.optim.{_cls(name)}(foreach=True)", make_torch("foreach")),
        Implementation("torch_fused", f"torch.optim.{_cls(name)}(fused=True)", make_torch("fused")),
        Implementation("deepspeed", f"DeepSpeed CPU {_cls(name)}", make_deepspeed),
    ]
