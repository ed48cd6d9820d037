"""fusedopt.optim's rules (docs/optim.md, "Exact operation order") in float32 NumPy.

The NumPy peer of bench_step.py: one in-place ufunc per operation, temporaries
allocated once and reused (``out=``), so the comparison is with NumPy at its
best. Each rule is an entry of ``RULES``: its state slots per leaf, its
temporaries, the scalars of a step (computed in double, as torch computes them
in Python, then rounded to float32) and the per-leaf update. The rules cover the
hyper-parameters that peers_optim.HYPER sets (no L2 weight decay, maximize or
clipping); tests/test_bench_peers.py checks them against fusedopt.optim.
"""
from collections import namedtuple

import numpy as np

f = np.float32
# slots: state arrays per leaf (zeros); temps: dtypes of the reused temporaries
# (None: the leaf's); scalars(h, t, st) -> dict for step t (st: scalar state kept
# across steps); update(p, g, slots, temps, c) steps one leaf in place.
Rule = namedtuple("Rule", "slots temps scalars update")
TWO = (None, None)


def leaves(tree):
    return [tree] if isinstance(tree, np.ndarray) else list(tree)


class NumpyOptim:
    """One optimizer of RULES over a tree of float32 arrays."""

    def __init__(self, kind, hyper, lr):
        self.rule = RULES[kind]
        self.h = dict(hyper, lr=lr)
        self.t = 0
        self.scalar_state = {}
        self.state = None

    def step(self, params, grads):
        ps, gs = leaves(params), leaves(grads)
        if self.state is None:
            self.state = [([np.zeros_like(p) for _ in range(self.rule.slots)],
                           [np.empty(p.shape, dtype or p.dtype) for dtype in self.rule.temps]) for p in ps]
        self.t += 1
        c = self.rule.scalars(self.h, self.t, self.scalar_state)
        for p, g, (slots, temps) in zip(ps, gs, self.state):
            self.rule.update(p, g, slots, temps, c)


# -- operations several rules share ------------------------------------------------

def _lerp(m, g, w, a):
    """m = m + w * (g - m); torch's lerp, whose form for w < 0.5 is the one HYPER uses."""
    assert w < 0.5, "the w >= 0.5 form of lerp is not implemented"
    np.subtract(g, m, out=a)
    np.multiply(w, a, out=a)
    np.add(m, a, out=m)


def _ema_square(v, g, beta, one_minus_beta, a):
    """v = v * beta + ((1 - beta) * g) * g."""
    np.multiply(v, beta, out=v)
    np.multiply(one_minus_beta, g, out=a)
    np.multiply(a, g, out=a)
    np.add(v, a, out=v)


def _add_scaled_ratio(p, scale, x, den, b):
    """p = p + (scale * x) / den."""
    np.multiply(scale, x, out=b)
    np.divide(b, den, out=b)
    np.add(p, b, out=p)


def _sqrt_plus(x, eps, out):
    """out = sqrt(x) + eps."""
    np.sqrt(x, out=out)
    np.add(out, eps, out=out)


def _moment_scalars(h, t):
    """The scalars of the Adam-like rules: w = 1 - beta1, beta2, 1 - beta2, eps, beta1**t, beta2**t."""
    b1, b2 = h["betas"]
    return {"w": f(1 - b1), "b2": f(b2), "omb2": f(1 - b2), "eps": f(h["eps"]), "b1t": b1 ** t, "b2t": b2 ** t}


# -- the rules ----------------------------------------------------------------------

def _adam_scalars(h, t, st):
    c = _moment_scalars(h, t)
    c.update(neg_step=f(-(h["lr"] / (1 - c["b1t"]))), bc2=f((1 - c["b2t"]) ** 0.5),
             decay=f(1 - h["lr"] * h.get("weight_decay", 0.0)))
    return c


def _adam(p, g, slots, temps, c, decoupled=False):
    (m, v), (a, b) = slots, temps
    if decoupled:
        np.multiply(p, c["decay"], out=p)
    _lerp(m, g, c["w"], a)
    _ema_square(v, g, c["b2"], c["omb2"], a)
    np.sqrt(v, out=a)                                   # den = sqrt(v) / bc2 + eps
    np.divide(a, c["bc2"], out=a)
    np.add(a, c["eps"], out=a)
    _add_scaled_ratio(p, c["neg_step"], m, a, b)


def _adamw(p, g, slots, temps, c):
    _adam(p, g, slots, temps, c, decoupled=True)


def _sgd_scalars(h, t, st):
    return {"first": t == 1, "momentum": f(h["momentum"]), "neg_lr": f(-h["lr"])}


def _sgd(p, g, slots, temps, c):
    buf, a = slots[0], temps[0]
    if c["first"]:
        np.copyto(buf, g)
    else:
        np.multiply(buf, c["momentum"], out=buf)
        np.add(buf, g, out=buf)                         # (1 - dampening) * g with dampening 0
    np.multiply(c["neg_lr"], buf, out=a)
    np.add(p, a, out=p)


def _rmsprop_scalars(h, t, st):
    return {"alpha": f(h["alpha"]), "oma": f(1 - h["alpha"]), "eps": f(h["eps"]), "neg_lr": f(-h["lr"])}


def _rmsprop(p, g, slots, temps, c):
    v, (a, b) = slots[0], temps
    _ema_square(v, g, c["alpha"], c["oma"], a)
    _sqrt_plus(v, c["eps"], a)
    _add_scaled_ratio(p, c["neg_lr"], g, a, b)


def _adagrad_scalars(h, t, st):
    return {"eps": f(h["eps"]), "neg_lr": f(-h["lr"])}   # clr = lr with lr_decay 0


def _adagrad(p, g, slots, temps, c):
    acc, (a, b) = slots[0], temps
    np.multiply(g, g, out=a)
    np.add(acc, a, out=acc)
    _sqrt_plus(acc, c["eps"], a)
    _add_scaled_ratio(p, c["neg_lr"], g, a, b)


def _lion_scalars(h, t, st):
    b1, b2 = h["betas"]
    return {"b1": f(b1), "omb1": f(1 - b1), "b2": f(b2), "omb2": f(1 - b2), "neg_lr": f(-h["lr"])}


def _lion(p, g, slots, temps, c):
    m, (a, b) = slots[0], temps
    np.multiply(c["b1"], m, out=a)                      # u = beta1 * m + (1 - beta1) * g
    np.multiply(c["omb1"], g, out=b)
    np.add(a, b, out=a)
    np.sign(a, out=a)
    np.multiply(c["neg_lr"], a, out=a)                  # p = p - lr * sign(u)
    np.add(p, a, out=p)
    np.multiply(c["b2"], m, out=m)
    np.multiply(c["omb2"], g, out=b)
    np.add(m, b, out=m)


def _nadam_scalars(h, t, st):
    c = _moment_scalars(h, t)
    b1, lr, psi = h["betas"][0], h["lr"], h["momentum_decay"]
    mu = b1 * (1 - 0.5 * 0.96 ** (t * psi))
    mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
    st["mu_product"] = st.get("mu_product", 1.0) * mu  # kept in double
    prod = st["mu_product"]
    c.update(c_g=f(-lr * (1 - mu) / (1 - prod)), c_m=f(-lr * mu_next / (1 - prod * mu_next)),
             bc2=f(1 - c["b2t"]))
    return c


def _nadam(p, g, slots, temps, c):
    (m, v), (a, b) = slots, temps
    _lerp(m, g, c["w"], a)
    _ema_square(v, g, c["b2"], c["omb2"], a)
    np.divide(v, c["bc2"], out=a)                       # den = sqrt(v / bc2) + eps
    _sqrt_plus(a, c["eps"], a)
    _add_scaled_ratio(p, c["c_g"], g, a, b)
    _add_scaled_ratio(p, c["c_m"], m, a, b)


def _radam_scalars(h, t, st):
    c = _moment_scalars(h, t)
    b2 = h["betas"][1]
    bc2 = 1 - c["b2t"]
    rho_inf = 2 / (1 - b2) - 1
    rho_t = rho_inf - 2 * t * c["b2t"] / bc2
    rect = None
    if rho_t > 5:
        rect = f(((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5)
    c.update(bc1=f(1 - c["b1t"]), lr=f(h["lr"]), sqrt_bc2=f(bc2 ** 0.5), rect=rect)
    return c


def _radam(p, g, slots, temps, c):
    (m, v), (a, b) = slots, temps
    _lerp(m, g, c["w"], a)
    _ema_square(v, g, c["b2"], c["omb2"], a)
    np.divide(m, c["bc1"], out=a)                       # u = (m / bc1) * lr
    np.multiply(a, c["lr"], out=a)
    if c["rect"] is not None:                           # u = (u * ((1 / (sqrt(v) + eps)) * bc2**0.5)) * rect
        _sqrt_plus(v, c["eps"], b)
        np.divide(f(1), b, out=b)
        np.multiply(b, c["sqrt_bc2"], out=b)
        np.multiply(a, b, out=a)
        np.multiply(a, c["rect"], out=a)
    np.subtract(p, a, out=p)


def _adamax_scalars(h, t, st):
    c = _moment_scalars(h, t)
    c["neg_clr"] = f(-(h["lr"] / (1 - c["b1t"])))
    return c


def _adamax(p, g, slots, temps, c):
    (m, u), (a,) = slots, temps
    _lerp(m, g, c["w"], a)
    np.multiply(u, c["b2"], out=u)                      # u = maximum(u * beta2, abs(g) + eps)
    np.abs(g, out=a)
    np.add(a, c["eps"], out=a)
    np.maximum(u, a, out=u)
    _add_scaled_ratio(p, c["neg_clr"], m, u, a)


def _adadelta_scalars(h, t, st):
    return {"rho": f(h["rho"]), "omr": f(1 - h["rho"]), "eps": f(h["eps"]), "neg_lr": f(-h["lr"])}


def _adadelta(p, g, slots, temps, c):
    (v, acc), (a, b) = slots, temps
    _ema_square(v, g, c["rho"], c["omr"], a)
    np.add(acc, c["eps"], out=a)                        # delta = (sqrt(acc + eps) / sqrt(v + eps)) * g
    np.sqrt(a, out=a)
    np.add(v, c["eps"], out=b)
    np.sqrt(b, out=b)
    np.divide(a, b, out=a)
    np.multiply(a, g, out=a)
    _ema_square(acc, a, c["rho"], c["omr"], b)          # acc = acc * rho + ((1 - rho) * delta) * delta
    np.multiply(c["neg_lr"], a, out=a)
    np.add(p, a, out=p)


def _asgd_scalars(h, t, st):
    eta, mu = st.get("eta", h["lr"]), st.get("mu", 1.0)  # this step's: made by the step before
    st["eta"] = h["lr"] / (1 + h["lambd"] * h["lr"] * t) ** h["alpha"]
    st["mu"] = 1 / max(1, t - h["t0"])
    return {"decay": f(1 - h["lambd"] * eta), "neg_eta": f(-eta), "mu": None if mu == 1 else f(mu)}


def _asgd(p, g, slots, temps, c):
    ax, a = slots[0], temps[0]
    np.multiply(p, c["decay"], out=p)
    np.multiply(c["neg_eta"], g, out=a)
    np.add(p, a, out=p)
    if c["mu"] is None:
        np.copyto(ax, p)
    else:                                               # ax = ax + (p - ax) * mu
        np.subtract(p, ax, out=a)
        np.multiply(a, c["mu"], out=a)
        np.add(ax, a, out=ax)


def _rprop_scalars(h, t, st):
    (em, ep), (lo, hi) = h["etas"], h["step_sizes"]
    return {"first": t == 1, "lr": f(h["lr"]), "em": f(em), "ep": f(ep), "lo": f(lo), "hi": f(hi)}


def _rprop(p, g, slots, temps, c):
    (size, prev), (s, fac, mask) = slots, temps
    if c["first"]:
        size.fill(c["lr"])
    np.multiply(g, prev, out=s)                         # s = sign(g * prev)
    np.sign(s, out=s)
    fac.fill(f(1))                                      # f = etaplus, etaminus or 1
    np.greater(s, 0, out=mask)
    np.copyto(fac, c["ep"], where=mask)
    np.less(s, 0, out=mask)
    np.copyto(fac, c["em"], where=mask)
    np.multiply(size, fac, out=size)                    # clamp, NaN-propagating
    np.maximum(size, c["lo"], out=size)
    np.minimum(size, c["hi"], out=size)
    np.copyto(prev, g)                                  # prev = g, 0 where s < 0
    np.copyto(prev, f(0), where=mask)
    np.sign(prev, out=s)                                # p = p - sign(g) * step_size
    np.multiply(s, size, out=s)
    np.subtract(p, s, out=p)


RULES = {
    "Adam": Rule(2, TWO, _adam_scalars, _adam),
    "AdamW": Rule(2, TWO, _adam_scalars, _adamw),
    "SGD": Rule(1, (None,), _sgd_scalars, _sgd),
    "RMSprop": Rule(1, TWO, _rmsprop_scalars, _rmsprop),
    "Adagrad": Rule(1, TWO, _adagrad_scalars, _adagrad),
    "Lion": Rule(1, TWO, _lion_scalars, _lion),
    "NAdam": Rule(2, TWO, _nadam_scalars, _nadam),
    "RAdam": Rule(2, TWO, _radam_scalars, _radam),
    "Adamax": Rule(2, (None,), _adamax_scalars, _adamax),
    "Adadelta": Rule(2, TWO, _adadelta_scalars, _adadelta),
    "ASGD": Rule(1, (None,), _asgd_scalars, _asgd),
    "Rprop": Rule(2, (None, None, bool), _rprop_scalars, _rprop),
}
