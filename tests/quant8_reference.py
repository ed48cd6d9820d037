"""NumPy reference of Adam8bit/AdamW8bit and Lion8bit (docs/lowbit.md): the maps from their
definition, the nearest code by exhaustive search over all 256 codes, and the
step in the documented order in float32."""
from __future__ import annotations

import numpy as np


def map_values(signed: bool) -> np.ndarray:
    """Value of every code, by code: magnitudes 0, binades k = K-1 .. 0 (2^bits(k) codes
    2^-(k+1) * (1 + r / 2^bits(k)) each, bits(k) = max(0, M - k // 4)), then 1.0."""
    M = 4 if signed else 5
    mags = [0.0]
    for k in range(4 * M + 6 - 1, -1, -1):
        bits = max(0, M - k // 4)
        mags += [2.0 ** -(k + 1) * (1 + r / 2 ** bits) for r in range(2 ** bits)]
    mags.append(1.0)
    mags = np.array(mags, dtype=np.float32)
    if not signed:
        return mags
    neg = -mags
    neg[0] = 0.0  # code 0x80: never written, decodes to 0
    return np.concatenate([mags, neg])


def nearest_codes(x: np.ndarray, signed: bool) -> np.ndarray:
    """The code nearest each x (float32, |x| <= 1), by exhaustive search: the least
    distance (exact in float64), then the smaller magnitude, then the lower code."""
    values = map_values(signed).astype(np.float64)
    out = np.empty(x.size, np.uint8)
    flat = x.ravel().astype(np.float64)
    for s in range(0, flat.size, 4096):
        d = np.abs(flat[s:s + 4096, None] - values[None, :])
        best = d == d.min(axis=1, keepdims=True)
        score = np.where(best, np.abs(values)[None, :], np.inf)
        out[s:s + 4096] = np.argmin(score, axis=1)
    return out.reshape(x.shape)


def block_index(n: int, block: int) -> np.ndarray:
    return np.arange(n) // block


def quantize(x: np.ndarray, signed: bool, block: int):
    flat = x.ravel()
    starts = np.arange(0, flat.size, block)
    absmax = np.maximum.reduceat(np.abs(flat), starts).astype(np.float32) if flat.size else np.zeros(0, np.float32)
    # multiplied by the float32 reciprocal of the block's absmax (1 where it is not > 0),
    # divided by the absmax where that reciprocal overflows
    a = np.where(absmax > 0, absmax, np.float32(1))
    at = block_index(flat.size, block)
    with np.errstate(over="ignore", invalid="ignore"):  # the products of the divided blocks are discarded
        inv = np.float32(1) / a
        q = np.where(np.isinf(inv)[at], flat / a[at], flat * inv[at])
    return nearest_codes(q, signed).reshape(x.shape), absmax


def dequantize(codes: np.ndarray, absmax: np.ndarray, signed: bool, block: int) -> np.ndarray:
    values = map_values(signed)
    return (values[codes.ravel()] * absmax[block_index(codes.size, block)]).reshape(codes.shape)


def scalars(lr, betas, eps, weight_decay, t):
    b1, b2 = betas
    f = np.float32
    lerp_w = f(1.0 - b1)
    return dict(neg_lr=f(-(lr / (1.0 - b1 ** t))), bc2=f((1.0 - b2 ** t) ** 0.5), decay=f(1.0 - lr * weight_decay),
                wd=f(weight_decay), b2=f(b2), omb2=f(1.0 - b2), lerp_w=lerp_w, lerp_omw=f(1) - lerp_w,
                small=abs(lerp_w) < 0.5, eps=f(eps))


def adam_math(p, g, slots, c, decay, maximize):
    """Adam/AdamW in torch's order (fusedopt.optim.Adam's docstring), float32."""
    m, v = slots
    if maximize:
        g = g * np.float32(-1)
    if decay == "l2":
        g = g + c["wd"] * p
    elif decay == "decoupled":
        p = p * c["decay"]
    diff = g - m
    m = m + c["lerp_w"] * diff if c["small"] else g - diff * c["lerp_omw"]
    v = (v * c["b2"]) + ((c["omb2"] * g) * g)
    den = (np.sqrt(v) / c["bc2"]) + c["eps"]
    return p + (c["neg_lr"] * m) / den, [m, v]


def lion_scalars(lr, betas, eps, weight_decay, t):
    b1, b2 = betas
    f = np.float32
    return dict(neg_lr=f(-lr), decay=f(1.0 - lr * weight_decay), b1=f(b1), omb1=f(1.0 - b1), b2=f(b2),
                omb2=f(1.0 - b2))


def lion_math(p, g, slots, c, decay, maximize):
    """Lion in fusedopt.optim.Lion's order (its docstring, docs/optim.md), float32;
    weight decay is always decoupled."""
    (m,) = slots
    if maximize:
        g = g * np.float32(-1)
    if decay != "none":
        p = p * c["decay"]
    u = (c["b1"] * m) + (c["omb1"] * g)
    p = p + c["neg_lr"] * np.sign(u)  # sign(0) = 0, sign(NaN) = NaN
    m = (c["b2"] * m) + (c["omb2"] * g)
    return p, [m]


# Per rule: its slots with their map (signed or not), its per-step scalars and its element math.
RULES = {"adam": ((("exp_avg", True), ("exp_avg_sq", False)), scalars, adam_math),
         "lion": ((("exp_avg", True),), lion_scalars, lion_math)}


class Reference:
    """The 8-bit optimizer of `rule` on a list of float32 arrays; quantized leaves hold codes."""

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=True,
                 maximize=False, block=256, least=4096, rule="adam"):
        self.lr, self.betas, self.eps, self.wd = lr, betas, eps, weight_decay
        self.decoupled, self.maximize, self.block, self.least, self.t = decoupled, maximize, block, least, 0
        self.slots, self.scalars, self.math = RULES[rule]
        self.state = []
        for p in params:
            quantized = p.size >= least
            st = {}
            for name, _ in self.slots:
                st[name] = np.zeros(p.shape, np.uint8 if quantized else np.float32)
                st[f"{name}_absmax"] = np.zeros(-(-p.size // block) if quantized else 0, np.float32)
            self.state.append(st)

    def step(self, params, grads):
        self.t += 1
        c = self.scalars(self.lr, self.betas, self.eps, self.wd, self.t)
        decay = "none" if self.wd == 0 else "decoupled" if self.decoupled else "l2"
        for i, (p, g) in enumerate(zip(params, grads)):
            st = self.state[i]
            quantized = st["exp_avg"].dtype == np.uint8
            if quantized:
                values = [dequantize(st[name], st[f"{name}_absmax"], signed, self.block) for name, signed in self.slots]
            else:
                values = [st[name] for name, _ in self.slots]
            p[...], values = self.math(p, g, values, c, decay, self.maximize)
            for (name, signed), x in zip(self.slots, values):
                if quantized:
                    st[name], st[f"{name}_absmax"] = quantize(x, signed, self.block)
                else:
                    st[name] = x
