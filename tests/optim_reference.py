"""Independent NumPy references of fusedopt.optim's rules, in the operation order
docs/optim.md documents: every array operation rounded in the leaf's dtype,
per-step scalars computed in Python floats and rounded to that dtype.

``Reference(kind, **hyper)`` keeps its own state; ``step(params, grads, lr,
norm)`` steps a list of arrays in place (``norm``: the global gradient norm
to clip with, or None).
"""
import math

import numpy as np


def _lerp(start, end, weight, T):
    w = T(weight)
    if abs(w) < 0.5:
        return start + w * (end - start)
    return end - (end - start) * (T(1) - w)


class Reference:
    def __init__(self, kind, lr=1e-3, max_grad_norm=None, mask=None, **hyper):
        self.kind, self.lr, self.max_grad_norm, self.mask = kind, lr, max_grad_norm, mask
        self.h = hyper
        self.t = 0
        self.state = None

    def _init(self, params):
        h = self.h
        fill = h.get("initial_accumulator_value", 0.0) if self.kind == "Adagrad" else 0.0
        self.state = [dict() for _ in params]
        for st, p in zip(self.state, params):
            for name in self.slot_names():
                st[name] = np.full(p.shape, fill, dtype=p.dtype)

    def slot_names(self):
        h, k = self.h, self.kind
        if k == "SGD":
            return ["momentum_buffer"] if h.get("momentum", 0) else []
        if k in ("Adam", "AdamW"):
            return ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if h.get("amsgrad") else [])
        if k == "RMSprop":
            return (["square_avg"] + (["grad_avg"] if h.get("centered") else [])
                    + (["momentum_buffer"] if h.get("momentum", 0) > 0 else []))
        return ["sum"] if k == "Adagrad" else ["exp_avg"]

    def step(self, params, grads, norm=None):
        if self.state is None:
            self._init(params)
        self.t += 1
        clip = 1.0
        if self.max_grad_norm is not None:
            clip = min(self.max_grad_norm / (norm + 1e-6), 1.0)
        sign = -1.0 if self.h.get("maximize") else 1.0
        for i, (p, g, st) in enumerate(zip(params, grads, self.state)):
            decay = self.mask is None or self.mask[i]
            T = p.dtype.type
            g = g * T(sign * clip)
            getattr(self, "_" + self.kind.lower())(p, g, st, T, decay)

    def _wd(self, decay):
        default = 1e-2 if self.kind == "AdamW" else 0.0  # AdamW's default decay
        return self.h.get("weight_decay", default) if decay else 0.0

    def _sgd(self, p, g, st, T, decay):
        h, wd = self.h, self._wd(decay)
        mom = h.get("momentum", 0.0)
        if wd != 0:
            g = g + T(wd) * p
        d = g
        if mom != 0:
            if self.t == 1:
                st["momentum_buffer"][...] = g
            else:
                st["momentum_buffer"][...] = st["momentum_buffer"] * T(mom) + T(1 - h.get("dampening", 0.0)) * g
            buf = st["momentum_buffer"]
            d = g + T(mom) * buf if h.get("nesterov") else buf
        p[...] = p + T(-self.lr) * d

    def _adam(self, p, g, st, T, decay, decoupled=False):
        h, wd = self.h, self._wd(decay)
        b1, b2 = h.get("betas", (0.9, 0.999))
        if wd != 0:
            if decoupled:
                p[...] = p * T(1 - self.lr * wd)
            else:
                g = g + T(wd) * p
        m, v = st["exp_avg"], st["exp_avg_sq"]
        m[...] = _lerp(m, g, 1 - b1, T)
        v[...] = v * T(b2) + (T(1 - b2) * g) * g
        step_size = self.lr / (1 - b1 ** self.t)
        bc2 = (1 - b2 ** self.t) ** 0.5
        den = v
        if h.get("amsgrad"):
            st["max_exp_avg_sq"][...] = np.maximum(st["max_exp_avg_sq"], v)
            den = st["max_exp_avg_sq"]
        den = np.sqrt(den) / T(bc2) + T(h.get("eps", 1e-8))
        p[...] = p + (T(-step_size) * m) / den

    def _adamw(self, p, g, st, T, decay):
        self._adam(p, g, st, T, decay, decoupled=True)

    def _rmsprop(self, p, g, st, T, decay):
        h, wd = self.h, self._wd(decay)
        alpha, eps, mom = h.get("alpha", 0.99), h.get("eps", 1e-8), h.get("momentum", 0.0)
        if wd != 0:
            g = g + T(wd) * p
        v = st["square_avg"]
        v[...] = v * T(alpha) + (T(1 - alpha) * g) * g
        if h.get("centered"):
            ga = st["grad_avg"]
            ga[...] = _lerp(ga, g, 1 - alpha, T)
            avg = np.sqrt(v - ga * ga) + T(eps)
        else:
            avg = np.sqrt(v) + T(eps)
        if mom > 0:
            buf = st["momentum_buffer"]
            buf[...] = buf * T(mom) + g / avg
            p[...] = p + T(-self.lr) * buf
        else:
            p[...] = p + (T(-self.lr) * g) / avg

    def _adagrad(self, p, g, st, T, decay):
        h, wd = self.h, self._wd(decay)
        if wd != 0:
            g = g + T(wd) * p
        clr = self.lr / (1 + (self.t - 1) * h.get("lr_decay", 0.0))
        s = st["sum"]
        s[...] = s + g * g
        p[...] = p + (T(-clr) * g) / (np.sqrt(s) + T(h.get("eps", 1e-10)))

    def _lion(self, p, g, st, T, decay):
        h, wd = self.h, self._wd(decay)
        b1, b2 = h.get("betas", (0.9, 0.99))
        if wd != 0:
            p[...] = p * T(1 - self.lr * wd)
        m = st["exp_avg"]
        u = T(b1) * m + T(1 - b1) * g
        p[...] = p + T(-self.lr) * np.sign(u)
        m[...] = T(b2) * m + T(1 - b2) * g


def lion_paper_f64(p, g, m, lr, b1, b2, wd):
    """Chen et al. 2023, Algorithm 2 with decoupled decay, in float64 (returns new p, m)."""
    update = np.sign(b1 * m + (1 - b1) * g)
    p = p * (1 - lr * wd) - lr * update
    return p, b2 * m + (1 - b2) * g


def global_norm(grads):
    return math.sqrt(sum(float(np.sum(np.asarray(g, dtype=np.float64) ** 2)) for g in grads))
