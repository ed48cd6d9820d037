"""The optim family (fusedopt.optim) and its peers, for bench_step.py.

Same contract as peers.py: ``make(name, params, grads) -> step`` on float32
trees, ``Skip`` when a peer cannot run. Names are ``optim.<Class>``; every
implementation uses ``HYPER`` (torch.optim's defaults, SGD with momentum 0.9,
AdamW with weight decay 1e-2). The numpy implementation (numpy_optim.py)
follows docs/optim.md operation by operation with reused temporaries (numpy at
its best); torch and DeepSpeed are speed peers. torch 2.13 has fused CPU kernels
for Adam, AdamW, SGD and Adagrad only, and DeepSpeed CPU optimizers for Adam(W),
Adagrad and Lion only: the other classes' rows say so (Skip with the reason).
"""
import functools
import inspect

LR = 1e-3
ADAM_LIKE = {"betas": (0.9, 0.999), "eps": 1e-8}
HYPER = {  # written out, so that the NumPy rules (numpy_optim.py) read the same values
    "optim.Adam": ADAM_LIKE,
    "optim.AdamW": {**ADAM_LIKE, "weight_decay": 1e-2},
    "optim.SGD": {"momentum": 0.9},
    "optim.RMSprop": {"alpha": 0.99, "eps": 1e-8},
    "optim.Adagrad": {"eps": 1e-10},
    "optim.Lion": {"betas": (0.9, 0.99)},
    "optim.NAdam": {**ADAM_LIKE, "momentum_decay": 4e-3},
    "optim.RAdam": ADAM_LIKE,
    "optim.Adamax": ADAM_LIKE,
    "optim.Adadelta": {"rho": 0.9, "eps": 1e-6},
    "optim.ASGD": {"lambd": 1e-4, "alpha": 0.75, "t0": 1e6},
    "optim.Rprop": {"etas": (0.5, 1.2), "step_sizes": (1e-6, 50)},
    "optim.Adafactor": {"beta2_decay": -0.8, "eps": (None, 1e-3), "d": 1.0},
}
# Least bytes per float32 element of an in-place step (arrays read + written, 4 bytes each):
# - 28 (7 arrays): read g, p and two state arrays, write p and both: Adam(W), NAdam, RAdam
#   (m, v), Adamax (m, exp_inf), Adadelta (square_avg, acc_delta), Rprop (step_size, prev);
# - 20 (5 arrays): read g, p, one state array, write p and it: SGD, RMSprop, Adagrad, Lion;
# - 16 (4 arrays): ASGD at HYPER's t0 (mu = 1 until step t0): read g, p, write p and ax = p
#   (ax is read too once mu != 1: 20);
# - 40: Adafactor on vectors (the cases here), three passes as docs/optim.md gives them: g, p and
#   variance read, variance written (16); g and variance read (8); g, p, variance read, p written (16).
BYTES = {"optim.Adam": 28, "optim.AdamW": 28, "optim.SGD": 20, "optim.RMSprop": 20, "optim.Adagrad": 20,
         "optim.Lion": 20, "optim.NAdam": 28, "optim.RAdam": 28, "optim.Adamax": 28, "optim.Adadelta": 28,
         "optim.ASGD": 16, "optim.Rprop": 28, "optim.Adafactor": 40}

# After the tables: peers imports this module at its end and reads them, whichever is imported first.
import peers  # noqa: E402
from numpy_optim import RULES, NumpyOptim  # noqa: E402
from peers import Implementation, Skip  # noqa: E402


def _cls(name):
    return name.split(".", 1)[1]


def make_fusedopt(name, params, grads):
    from fusedopt import optim
    opt = getattr(optim, _cls(name))(lr=LR, **HYPER[name])
    return functools.partial(opt.step, params, grads)


def make_numpy(name, params, grads):
    if _cls(name) not in RULES:
        raise Skip(f"numpy_optim.py has element-wise rules only, not {_cls(name)}'s factored step")
    return functools.partial(NumpyOptim(_cls(name), HYPER[name], LR).step, params, grads)


def make_torch(variant):
    """torch.optim on CPU with foreach=True or fused=True (fused: Adam, AdamW, SGD, Adagrad), or
    its single-tensor implementation ("single": foreach=False; on CPU it can beat foreach)."""
    option, value = ("foreach", False) if variant == "single" else (variant, True)

    def make(name, params, grads):
        torch = peers._torch()
        cls = getattr(torch.optim, _cls(name), None)
        if cls is None:
            raise Skip(f"torch.optim has no {_cls(name)} in torch {torch.__version__}")
        if option not in inspect.signature(cls).parameters:
            raise Skip(f"torch.optim.{_cls(name)} has no {option}= option in torch {torch.__version__}")
        try:
            opt = cls(peers._torch_tensors(params, grads), lr=LR, **HYPER[name], **{option: value})
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
        Implementation("torch_single", f"torch.optim.{_cls(name)}(foreach=False)", make_torch("single")),
        Implementation("torch_fused", f"torch.optim.{_cls(name)}(fused=True)", make_torch("fused")),
        Implementation("deepspeed", f"DeepSpeed CPU {_cls(name)}", make_deepspeed),
    ]
