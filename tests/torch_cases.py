"""Shared cases and drivers of the tests of fusedopt.torch (tests/test_torch_*.py).

Imported only after ``pytest.importorskip("torch")``. Nothing here imports
fusedopt: the optimizers under test are passed in by the tests.

* CONFIGS: per optimizer, the option combinations the parity tests run (each
  name is a class of both torch.optim and fusedopt.torch, except Lion);
* make_params / grads_for: a small model of awkward shapes and the gradients
  of step k, with some gradients None (skipped, as torch skips them);
* train: steps an optimizer, optionally with an lr scheduler;
* LionReference: the Lion update of Chen et al. (2023) in torch operations,
  the independent reference for fusedopt.torch.Lion (torch has no Lion).
"""
import math

import numpy as np
import torch

# Leaf shapes: a matrix, a vector with a SIMD tail, a 0-d scalar, a 3-d block,
# one element, and a vector of 2 SIMD widths.
SHAPES = [(7, 13), (37,), (), (3, 4, 5), (1,), (32,)]
# Parameter groups: the first three leaves, the rest.
SPLIT = 3

CONFIGS = {
    "SGD": [
        {},
        {"momentum": 0.9},
        {"momentum": 0.9, "dampening": 0.25, "weight_decay": 1e-2},
        {"momentum": 0.8, "nesterov": True, "weight_decay": 1e-2},
        {"momentum": 0.5, "maximize": True},
    ],
    "Adam": [
        {},
        {"weight_decay": 0.1, "amsgrad": True},
        {"betas": (0.8, 0.95), "eps": 1e-6, "maximize": True},
        {"weight_decay": 0.1, "decoupled_weight_decay": True},
    ],
    "AdamW": [
        {},
        {"weight_decay": 0.5, "amsgrad": True},
        {"maximize": True, "betas": (0.5, 0.9)},
    ],
    "RMSprop": [
        {},
        {"momentum": 0.9},
        {"centered": True, "weight_decay": 0.1},
        {"centered": True, "momentum": 0.5, "maximize": True, "alpha": 0.9},
    ],
    "Adagrad": [
        {},
        {"lr_decay": 0.01, "weight_decay": 0.1, "initial_accumulator_value": 0.1},
        {"maximize": True, "eps": 1e-6},
    ],
    "NAdam": [
        {},
        {"weight_decay": 0.1, "momentum_decay": 0.01},
        {"weight_decay": 0.1, "decoupled_weight_decay": True, "betas": (0.5, 0.9), "maximize": True},
    ],
    "RAdam": [
        {},
        {"weight_decay": 0.1, "betas": (0.6, 0.9)},
        {"weight_decay": 0.1, "decoupled_weight_decay": True, "betas": (0.5, 0.9), "maximize": True},
    ],
    "Adamax": [
        {},
        {"weight_decay": 0.1, "betas": (0.6, 0.9), "eps": 1e-3},
        {"weight_decay": 0.1, "betas": (0.5, 0.99), "maximize": True},
    ],
    "Adadelta": [
        {},
        {"weight_decay": 0.1, "rho": 0.5, "eps": 1e-3},
        {"rho": 0.95, "maximize": True},
    ],
    "ASGD": [
        {},
        {"t0": 2, "lambd": 0.01, "alpha": 0.5, "weight_decay": 0.1},
        {"t0": 0, "lambd": 0.1, "maximize": True},
    ],
    "Rprop": [
        {},
        {"etas": (0.3, 1.5), "step_sizes": (1e-3, 0.02)},
        {"maximize": True, "step_sizes": (0, 1)},
    ],
    "Lion": [
        {},
        {"weight_decay": 0.1, "betas": (0.95, 0.98)},
        {"maximize": True},
    ],
}
TORCH_NAMES = ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "NAdam", "RAdam", "Adamax", "Adadelta", "ASGD", "Rprop")
NAMES = TORCH_NAMES + ("Lion",)

# Moment slots of each optimizer's per-parameter state, torch's names.
SLOTS = {
    "SGD": ("momentum_buffer",),
    "Adam": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    "AdamW": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    "RMSprop": ("square_avg", "momentum_buffer", "grad_avg"),
    "Adagrad": ("sum",),
    "Lion": ("exp_avg",),
    "NAdam": ("exp_avg", "exp_avg_sq"),
    "RAdam": ("exp_avg", "exp_avg_sq"),
    "Adamax": ("exp_avg", "exp_inf"),
    "Adadelta": ("square_avg", "acc_delta"),
    "ASGD": ("ax",),
    "Rprop": ("prev", "step_size"),
}

# Parity tolerances (assert_close's rtol, atol) after STEPS steps. Both sides
# evaluate torch's formulas; a few operations group differently (torch's
# addcdiv divides m by the denominator before scaling by -step_size, fusedopt
# scales first; scalars rounded to the tensor's dtype at other places), which
# moves the last bits. Largest relative differences seen over every case:
# float64 ~7e-16; float32 ~3.5e-7 in parameters (3 ulps) and ~6e-6 in moments
# beyond 1e-6 absolute (RMSprop's momentum buffer sums g/avg terms that cancel).
TOL = {torch.float64: (1e-12, 1e-14), torch.float32: (2e-5, 2e-6)}
# Optimizers with per-parameter scalar state (0-d tensors besides 'step').
SCALAR_STATE = ("NAdam", "ASGD")
STEPS = 30


def lr_of(name):
    """A learning rate that moves parameters visibly in STEPS steps."""
    return {"SGD": 0.05, "Adam": 0.01, "AdamW": 0.01, "RMSprop": 0.005, "Adagrad": 0.05, "Lion": 0.003, "NAdam": 0.01, "RAdam": 0.01, "Adamax": 0.01, "Adadelta": 0.5, "ASGD": 0.02, "Rprop": 0.01}[name]


def make_params(dtype, seed=0, shapes=SHAPES):
    """Leaf parameters of SHAPES, normally distributed, of `dtype`."""
    rng = np.random.default_rng(seed)
    return [torch.nn.Parameter(torch.from_numpy(rng.standard_normal(s)).to(dtype)) for s in shapes]


def clone_params(params):
    """Parameters with the same values and strides, new memory."""
    out = []
    for p in params:
        q = torch.empty_strided(p.shape, p.stride(), dtype=p.dtype)
        q.copy_(p.detach())
        out.append(torch.nn.Parameter(q))
    return out


def groups(params, name, config, split=SPLIT):
    """Two parameter groups: the first `split` leaves with `config` and the
    optimizer's lr, the rest with twice that lr and other per-group values."""
    lr = lr_of(name)
    second = {"lr": 2 * lr}
    if name in ("Adam", "AdamW", "Lion", "Adagrad", "SGD", "RMSprop", "NAdam", "RAdam", "Adamax", "Adadelta", "ASGD"):
        second["weight_decay"] = 0.05
    if name == "RMSprop":
        second["alpha"] = 0.95
    if name in ("Adam", "AdamW"):
        second["betas"] = (0.85, 0.99)
    return [{"params": params[:split], "lr": lr}, {"params": params[split:], **second}]


def none_at(i, k):
    """Whether leaf i gets no gradient at step k: leaf 2 for the first 4 steps,
    and every leaf now and then, so step counts of a group drift apart."""
    return (i == 2 and k < 4) or (3 * i + k) % 7 == 0


def none_once(i, k):
    """Leaf 1 gets no gradient at step 3 only: from then on its group's step
    counts differ (two native calls) and nothing else changes, so the steps
    reuse their plan (the path of a steady training loop)."""
    return i == 1 and k == 3


def grads_for(params, k, seed=1, none=none_at):
    """The gradients of step k: None where `none(i, k)`, else random of the
    leaf's dtype with a scale that changes from step to step."""
    rng = np.random.default_rng([seed, k])
    out = []
    for i, p in enumerate(params):
        g = rng.standard_normal(p.shape) * (0.5 + (k % 5))
        out.append(None if none(i, k) else torch.from_numpy(np.asarray(g)).to(p.dtype))
    return out


def set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.clone()


def scheduler(opt):
    """An lr schedule that changes every step and differs per group (base lrs differ)."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (1.0 + 0.1 * k) * (1.0 + 0.5 * math.cos(k)))


def train(opt, params, steps, start=0, sched=None, none=none_at):
    """`steps` steps of `opt` from step `start`: set the gradients of each
    step, step, then step the scheduler if any."""
    for k in range(start, start + steps):
        set_grads(params, grads_for(params, k, none=none))
        opt.step()
        if sched is not None:
            sched.step()


def state_equal(a, b):
    """Whether two optimizer states (opt.state, keyed by position) hold equal
    values: the same slots, tensors equal bit for bit, steps equal."""
    if set(a) != set(b):
        return False
    for k in a:
        if set(a[k]) != set(b[k]):
            return False
        for slot in a[k]:
            x, y = a[k][slot], b[k][slot]
            if torch.is_tensor(x) != torch.is_tensor(y):
                return False
            if torch.is_tensor(x) and not (x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y)):
                return False
            if not torch.is_tensor(x) and x != y:
                return False
    return True


def snapshot(opt, params):
    """Deep copies of the parameters and of the state (keyed by position), to
    prove that a failed call changed nothing."""
    state = {}
    for i, p in enumerate(params):
        if p in opt.state:
            state[i] = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[p].items()}
    groups_ = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return [p.detach().clone() for p in params], state, groups_


def unchanged(before, after):
    (p0, s0, g0), (p1, s1, g1) = before, after
    return all(torch.equal(a, b) for a, b in zip(p0, p1)) and state_equal(s0, s1) and g0 == g1


class LionReference(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"),
    the paper's update with decoupled weight decay, one tensor at a time:

        p = p * (1 - lr * wd)
        p = p - lr * sign(b1 * m + (1 - b1) * g)
        m = b2 * m + (1 - b2) * g

    with g negated when maximizing and m starting at zero. Its per-parameter
    state mirrors fusedopt.torch.Lion's: 'step' and 'exp_avg'."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay, "maximize": maximize})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = -p.grad if group["maximize"] else p.grad
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                state["step"] += 1
                m = state["exp_avg"]
                p.mul_(1 - lr * wd)
                p.add_(torch.sign(b1 * m + (1 - b1) * g), alpha=-lr)
                m.copy_(b2 * m + (1 - b2) * g)


def reference_class(name):
    """torch.optim's class of that name (foreach=False), or LionReference."""
    if name == "Lion":
        return LionReference
    cls = getattr(torch.optim, name)

    def make(params, **kw):
        return cls(params, foreach=False, **kw)
    return make
