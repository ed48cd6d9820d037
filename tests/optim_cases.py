"""The optim family's test registry: one entry per fusedopt.optim class, with its
cases and its NumPy reference in the operation order docs/optim.md documents
(every array operation rounded in the leaf's dtype, per-step scalars computed in
Python floats and rounded to that dtype). Every optim test draws from here: the
bits (test_optim_bits), torch parity (test_optim_torch), state (test_optim_state),
hypothesis (test_optim_hypothesis), bad input (test_optim_bad_input) and the MPI
battery (tests/mpi/battery.py). A new optimizer gets all of them from its entry.

An entry's ``step(ref, p, g, st, T, decay)`` steps one leaf in place: ``ref`` is
the optim_reference.Reference (``ref.h``: the hyper-parameters with the class's
defaults, ``ref.lr``, ``ref.t``: the step number, ``ref.scalars``: the rule's
scalar state, advanced once per step by ``begin``), ``st`` the leaf's slots.
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np


def lerp(start, end, weight, T):
    """torch's lerp: the form depends on |weight| < 0.5."""
    w = T(weight)
    if abs(w) < 0.5:
        return start + w * (end - start)
    return end - (end - start) * (T(1) - w)


def l2(ref, p, g, T, decay):
    wd = ref.h["weight_decay"] if decay else 0.0
    return g + T(wd) * p if wd != 0 else g


def decoupled(ref, p, T, decay):
    wd = ref.h["weight_decay"] if decay else 0.0
    if wd != 0:
        p[...] = p * T(1 - ref.lr * wd)


@dataclass(frozen=True)
class Entry:
    """name: the class in fusedopt.optim. cases: hyper-parameter sets that together select
    every rule and decay mode of the class (the first: the defaults). slots(h): the state
    slots of a case, torch's names. step: the reference (module docstring); begin(ref):
    the per-step part, once per step before the leaves. start(slot, h): a slot's start
    value. torch: torch.optim has the class (parity). bad: (hyper-parameters, exception)
    the constructor refuses."""
    name: str
    cases: tuple
    slots: Callable[[dict], list]
    step: Callable
    bad: tuple
    begin: Optional[Callable] = None
    scalars: dict = field(default_factory=dict)
    start: Callable[[str, dict], float] = lambda slot, h: 0.0
    torch: bool = True

    @property
    def rich(self) -> dict:
        """The case with the most options set."""
        return max(self.cases, key=len)


# -- SGD -------------------------------------------------------------------------------------------
def _sgd(ref, p, g, st, T, decay):
    h = ref.h
    g = l2(ref, p, g, T, decay)
    d = g
    if h["momentum"] != 0:
        if ref.t == 1:
            st["momentum_buffer"][...] = g
        else:
            st["momentum_buffer"][...] = st["momentum_buffer"] * T(h["momentum"]) + T(1 - h["dampening"]) * g
        buf = st["momentum_buffer"]
        d = g + T(h["momentum"]) * buf if h["nesterov"] else buf
    p[...] = p + T(-ref.lr) * d


# -- Adam, AdamW -----------------------------------------------------------------------------------
def adam_moments(ref, p, g, st, T, decay, is_decoupled):
    """Weight decay and the two moments, as Adam's family computes them; returns (g, m, v)."""
    b1, b2 = ref.h["betas"]
    if is_decoupled:
        decoupled(ref, p, T, decay)
    else:
        g = l2(ref, p, g, T, decay)
    m, v = st["exp_avg"], st["exp_avg_sq"]
    m[...] = lerp(m, g, 1 - b1, T)
    v[...] = v * T(b2) + (T(1 - b2) * g) * g
    return g, m, v


def _adam(ref, p, g, st, T, decay, is_decoupled=False):
    h = ref.h
    b1, b2 = h["betas"]
    _, m, v = adam_moments(ref, p, g, st, T, decay, is_decoupled)
    step_size = ref.lr / (1 - b1 ** ref.t)
    bc2 = (1 - b2 ** ref.t) ** 0.5
    den = v
    if h["amsgrad"]:
        st["max_exp_avg_sq"][...] = np.maximum(st["max_exp_avg_sq"], v)
        den = st["max_exp_avg_sq"]
    den = np.sqrt(den) / T(bc2) + T(h["eps"])
    p[...] = p + (T(-step_size) * m) / den


def _adam_slots(h):
    return ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if h.get("amsgrad") else [])


# -- RMSprop ---------------------------------------------------------------------------------------
def _rmsprop(ref, p, g, st, T, decay):
    h = ref.h
    alpha, eps, mom = h["alpha"], h["eps"], h["momentum"]
    g = l2(ref, p, g, T, decay)
    v = st["square_avg"]
    v[...] = v * T(alpha) + (T(1 - alpha) * g) * g
    if h["centered"]:
        ga = st["grad_avg"]
        ga[...] = lerp(ga, g, 1 - alpha, T)
        avg = np.sqrt(v - ga * ga) + T(eps)
    else:
        avg = np.sqrt(v) + T(eps)
    if mom > 0:
        buf = st["momentum_buffer"]
        buf[...] = buf * T(mom) + g / avg
        p[...] = p + T(-ref.lr) * buf
    else:
        p[...] = p + (T(-ref.lr) * g) / avg


# -- Adagrad ---------------------------------------------------------------------------------------
def _adagrad(ref, p, g, st, T, decay):
    h = ref.h
    g = l2(ref, p, g, T, decay)
    clr = ref.lr / (1 + (ref.t - 1) * h["lr_decay"])
    s = st["sum"]
    s[...] = s + g * g
    p[...] = p + (T(-clr) * g) / (np.sqrt(s) + T(h["eps"]))


# -- Lion ------------------------------------------------------------------------------------------
def _lion(ref, p, g, st, T, decay):
    b1, b2 = ref.h["betas"]
    decoupled(ref, p, T, decay)
    m = st["exp_avg"]
    u = T(b1) * m + T(1 - b1) * g
    p[...] = p + T(-ref.lr) * np.sign(u)
    m[...] = T(b2) * m + T(1 - b2) * g


# -- NAdam -----------------------------------------------------------------------------------------
def _nadam_begin(ref):
    b1, md, t = ref.h["betas"][0], ref.h["momentum_decay"], ref.t
    ref.mu = b1 * (1.0 - 0.5 * (0.96 ** (t * md)))
    ref.mu_next = b1 * (1.0 - 0.5 * (0.96 ** ((t + 1) * md)))
    if ref.h.get("float32_scalars"):  # torch's 0-d float32 tensor: mu_product *= mu
        ref.scalars["mu_product"] = float(np.float32(ref.scalars["mu_product"] * float(np.float32(ref.mu))))
    else:
        ref.scalars["mu_product"] *= ref.mu


def _nadam(ref, p, g, st, T, decay):
    h = ref.h
    b2 = h["betas"][1]
    g, m, v = adam_moments(ref, p, g, st, T, decay, h["decoupled_weight_decay"])
    den = np.sqrt(v / T(1 - b2 ** ref.t)) + T(h["eps"])
    mu_product = ref.scalars["mu_product"]
    p[...] = p + (T(-ref.lr * (1.0 - ref.mu) / (1.0 - mu_product)) * g) / den
    p[...] = p + (T((-ref.lr * ref.mu_next) / (1.0 - mu_product * ref.mu_next)) * m) / den


# -- RAdam -----------------------------------------------------------------------------------------
def _radam(ref, p, g, st, T, decay):
    h, t = ref.h, ref.t
    b1, b2 = h["betas"]
    _, m, v = adam_moments(ref, p, g, st, T, decay, h["decoupled_weight_decay"])
    bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
    rho_inf = 2 / (1 - b2) - 1
    rho_t = rho_inf - 2 * t * (b2 ** t) / bc2
    u = (m / T(bc1)) * T(ref.lr)
    if rho_t > 5:
        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        adaptive = (T(1) / (np.sqrt(v) + T(h["eps"]))) * T(bc2 ** 0.5)
        p[...] = p - (u * adaptive) * T(rect)
    else:
        p[...] = p - u


# -- Adamax ----------------------------------------------------------------------------------------
def _adamax(ref, p, g, st, T, decay):
    h = ref.h
    b1, b2 = h["betas"]
    g = l2(ref, p, g, T, decay)
    m, u = st["exp_avg"], st["exp_inf"]
    m[...] = lerp(m, g, 1 - b1, T)
    u[...] = np.maximum(u * T(b2), np.abs(g) + T(h["eps"]))
    p[...] = p + (T(-(ref.lr / (1 - b1 ** ref.t))) * m) / u


# -- Adadelta --------------------------------------------------------------------------------------
def _adadelta(ref, p, g, st, T, decay):
    rho, eps = ref.h["rho"], T(ref.h["eps"])
    g = l2(ref, p, g, T, decay)
    v, a = st["square_avg"], st["acc_delta"]
    v[...] = v * T(rho) + (T(1 - rho) * g) * g
    delta = (np.sqrt(a + eps) / np.sqrt(v + eps)) * g
    a[...] = a * T(rho) + (T(1 - rho) * delta) * delta
    p[...] = p + T(-ref.lr) * delta


# -- ASGD ------------------------------------------------------------------------------------------
def _asgd_begin(ref):
    h, t, sc = ref.h, ref.t, ref.scalars
    rounded = (lambda x: float(np.float32(x))) if h.get("float32_scalars") else (lambda x: x)
    if sc["eta"] < 0:  # not made yet: the first step's lr
        sc["eta"] = rounded(ref.lr)
    ref.eta, ref.mu = sc["eta"], sc["mu"]
    sc["eta"] = rounded(ref.lr / ((1 + h["lambd"] * ref.lr * t) ** h["alpha"]))
    sc["mu"] = rounded(1 / max(1, t - h["t0"]))


def _asgd(ref, p, g, st, T, decay):
    g = l2(ref, p, g, T, decay)
    p[...] = p * T(1 - ref.h["lambd"] * ref.eta)
    p[...] = p + T(-ref.eta) * g
    ax = st["ax"]
    ax[...] = ax + (p - ax) * T(ref.mu) if ref.mu != 1 else p


# -- Rprop -----------------------------------------------------------------------------------------
def torch_sign(x, T):
    """torch.sign on CPU: (0 < x) - (x < 0), so 0 for NaN (np.sign gives NaN)."""
    return np.where(x > 0, T(1), np.where(x < 0, T(-1), T(0)))


def _rprop(ref, p, g, st, T, decay):
    h = ref.h
    etaminus, etaplus = h["etas"]
    lo, hi = h["step_sizes"]
    size, prev = st["step_size"], st["prev"]
    if ref.t == 1:
        size[...] = T(ref.lr)
    s = torch_sign(g * prev, T)
    f = np.where(s > 0, T(etaplus), np.where(s < 0, T(etaminus), T(1)))
    size[...] = np.minimum(np.maximum(size * f, T(lo)), T(hi))
    g = np.where(s < 0, T(0), g)
    p[...] = p - torch_sign(g, T) * size
    prev[...] = g


_COMMON_BAD = (({"lr": -1.0}, ValueError), ({"lr": "0.1"}, TypeError), ({"lr": float("nan")}, ValueError),
               ({"max_grad_norm": 0.0}, ValueError), ({"max_grad_norm": -1.0}, ValueError),
               ({"check_finite": 1}, TypeError), ({"weight_decay": -0.01}, ValueError),
               ({"weight_decay": float("inf")}, ValueError), ({"maximize": 1}, TypeError))
_BETAS_BAD = (({"betas": (0.9, 1.0)}, ValueError), ({"betas": (-0.1, 0.9)}, ValueError),
              ({"betas": 0.9}, TypeError), ({"betas": (0.9, 0.99, 0.5)}, TypeError))

OPTIM = (
    Entry("SGD", ({}, {"weight_decay": 0.01}, {"momentum": 0.9}, {"momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01},
                  {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01, "maximize": True}),
          lambda h: ["momentum_buffer"] if h.get("momentum", 0) else [], _sgd,
          _COMMON_BAD + (({"momentum": -0.1}, ValueError), ({"nesterov": True}, ValueError),
                         ({"momentum": 0.9, "nesterov": True, "dampening": 0.1}, ValueError),
                         ({"dampening": float("nan")}, ValueError))),
    Entry("Adam", ({}, {"weight_decay": 0.1, "amsgrad": True},
                   {"amsgrad": True, "betas": (0.8, 0.99), "eps": 1e-6},
                   {"betas": (0.3, 0.9), "eps": 1e-3, "maximize": True}),  # lerp weight >= 0.5: the other form
          _adam_slots, _adam,
          _COMMON_BAD + _BETAS_BAD + (({"eps": -1e-8}, ValueError), ({"amsgrad": "yes"}, TypeError))),
    Entry("AdamW", ({}, {"amsgrad": True, "maximize": True}, {"amsgrad": True, "weight_decay": 0.1}),
          _adam_slots, lambda *a: _adam(*a, is_decoupled=True), _COMMON_BAD + _BETAS_BAD),
    Entry("RMSprop", ({}, {"centered": True, "weight_decay": 0.1}, {"momentum": 0.5, "weight_decay": 0.1},
                      {"alpha": 0.9, "weight_decay": 0.1}, {"centered": True, "momentum": 0.5, "weight_decay": 0.1},
                      {"centered": True, "momentum": 0.5, "alpha": 0.3, "maximize": True}),
          lambda h: (["square_avg"] + (["grad_avg"] if h.get("centered") else [])
                     + (["momentum_buffer"] if h.get("momentum", 0) > 0 else [])), _rmsprop,
          _COMMON_BAD + (({"alpha": 1.5}, ValueError), ({"centered": None}, TypeError), ({"eps": -1.0}, ValueError))),
    Entry("Adagrad", ({}, {"lr_decay": 0.01, "initial_accumulator_value": 0.1, "weight_decay": 0.1},
                      {"weight_decay": 0.1, "eps": 1e-3}),
          lambda h: ["sum"], _adagrad,
          _COMMON_BAD + (({"lr_decay": -1.0}, ValueError), ({"initial_accumulator_value": -1.0}, ValueError)),
          start=lambda slot, h: h["initial_accumulator_value"]),
    Entry("Lion", ({}, {"weight_decay": 0.5, "betas": (0.8, 0.95)}), lambda h: ["exp_avg"], _lion,
          _COMMON_BAD + _BETAS_BAD, torch=False),
    Entry("NAdam", ({}, {"weight_decay": 0.1, "momentum_decay": 0.01},
                    {"weight_decay": 0.1, "decoupled_weight_decay": True, "betas": (0.3, 0.9), "maximize": True},
                    {"momentum_decay": 0.01, "float32_scalars": True}),
          lambda h: ["exp_avg", "exp_avg_sq"], _nadam,
          _COMMON_BAD + _BETAS_BAD + (({"momentum_decay": -1e-3}, ValueError), ({"eps": -1.0}, ValueError),
                                      ({"decoupled_weight_decay": 1}, TypeError), ({"float32_scalars": 1}, TypeError)),
          begin=_nadam_begin, scalars={"mu_product": 1.0}),
    Entry("RAdam", ({}, {"weight_decay": 0.1, "betas": (0.6, 0.9)},
                    {"weight_decay": 0.1, "decoupled_weight_decay": True, "betas": (0.5, 0.9), "maximize": True}),
          lambda h: ["exp_avg", "exp_avg_sq"], _radam,
          _COMMON_BAD + _BETAS_BAD + (({"eps": -1.0}, ValueError), ({"decoupled_weight_decay": 1}, TypeError))),
    Entry("Adamax", ({}, {"weight_decay": 0.1, "betas": (0.6, 0.9), "eps": 1e-3},
                     {"weight_decay": 0.1, "betas": (0.5, 0.99), "maximize": True}),
          lambda h: ["exp_avg", "exp_inf"], _adamax, _COMMON_BAD + _BETAS_BAD + (({"eps": -1.0}, ValueError),)),
    Entry("ASGD", ({}, {"t0": 2, "lambd": 0.01, "alpha": 0.5, "weight_decay": 0.1},
                   {"t0": 0, "lambd": 0.1, "maximize": True}, {"t0": 3, "alpha": 1.5, "float32_scalars": True}),
          lambda h: ["ax"], _asgd,
          _COMMON_BAD + (({"lambd": -1.0}, ValueError), ({"alpha": float("nan")}, ValueError),
                         ({"t0": "1"}, TypeError), ({"float32_scalars": 1}, TypeError)),
          begin=_asgd_begin, scalars={"eta": -1.0, "mu": 1.0}),
    Entry("Rprop", ({}, {"etas": (0.3, 1.5), "step_sizes": (1e-3, 0.02)}, {"maximize": True, "step_sizes": (0, 1)}),
          lambda h: ["step_size", "prev"], _rprop,
          (({"lr": -1.0}, ValueError), ({"lr": "0.1"}, TypeError), ({"max_grad_norm": 0.0}, ValueError),
           ({"check_finite": 1}, TypeError), ({"etas": (1.0, 1.2)}, ValueError), ({"etas": (0.5, 1.0)}, ValueError),
           ({"etas": (0.0, 1.2)}, ValueError), ({"etas": 0.5}, TypeError), ({"step_sizes": (-1.0, 1.0)}, ValueError),
           ({"step_sizes": (0.0, float("inf"))}, ValueError), ({"maximize": 1}, TypeError))),
    Entry("Adadelta", ({}, {"weight_decay": 0.1, "rho": 0.5, "eps": 1e-3}, {"rho": 1.0, "maximize": True},
                       {"rho": 0.0, "weight_decay": 0.2}),
          lambda h: ["square_avg", "acc_delta"], _adadelta,
          _COMMON_BAD + (({"rho": 1.5}, ValueError), ({"rho": -0.1}, ValueError), ({"eps": -1.0}, ValueError))),
)

ENTRIES = {e.name: e for e in OPTIM}
# (class name, hyper-parameters): every case of every entry.
CASES = [(e.name, h) for e in OPTIM for h in e.cases]
CASE_IDS = [f"{e.name}-{i}" for e in OPTIM for i in range(len(e.cases))]
# The richest case of each class (state, the MPI battery).
RICH = [(e.name, e.rich) for e in OPTIM]
# Options of fusedopt.optim that torch.optim's classes lack (float32_scalars: the
# rounding torch applies under its default dtype float32; test_optim_torch runs it so).
FUSEDOPT_ONLY = ("float32_scalars",)
TORCH_CASES = [(e.name, h) for e in OPTIM if e.torch for h in e.cases if not set(h) & set(FUSEDOPT_ONLY)]
