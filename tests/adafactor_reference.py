"""NumPy reference of Adafactor's step in the documented order (docs/optim.md,
"Adafactor"; python/fusedopt/optim/_adafactor.py), the fixed summation order
included: a row (a factored leaf's last dimension, else a run of 2048
elements) sums its double terms into 16 lanes by index mod 16, then the lanes
in order; a leaf's sum is its rows' sums in row order; a column sum adds the
rows of each block of max(64, ceil(2048 / cols)) rows in order, then the
blocks in order. Each value is rounded to the parameter's dtype T where
torch's single-tensor implementation has a tensor of T."""
import math

import numpy as np

CHUNK, LANES = 2048, 16


def lane_sums(rows):
    """Each row of a 2-D float64 array summed in the lane order."""
    acc = np.zeros((rows.shape[0], LANES))
    for k in range(0, rows.shape[1], LANES):
        part = rows[:, k:k + LANES]
        acc[:, :part.shape[1]] += part
    total = np.zeros(rows.shape[0])
    for j in range(LANES):
        total += acc[:, j]
    return total


def in_order(values):
    total = 0.0
    for v in values:
        total += v
    return total


def rows_of(x):
    """The rows a leaf's sums run over, as 2-D float64 arrays (one per run for a vector)."""
    x = np.asarray(x, np.float64)
    if x.ndim >= 2:
        return [x.reshape(-1, x.shape[-1])]
    flat = x.reshape(-1)
    return [flat[c:c + CHUNK].reshape(1, -1) for c in range(0, flat.size, CHUNK)]


def leaf_sum(terms):
    """The sum of a leaf's float64 terms in the fixed order."""
    return in_order(np.concatenate([lane_sums(r) for r in rows_of(terms)]))


def column_sums(sq):
    """sq: (batch, rows, cols) float64 -> (batch, cols), by blocks of rows."""
    batch, rows, cols = sq.shape
    per = max(64, -(-2048 // cols))
    out = np.zeros((batch, cols))
    for b0 in range(0, rows, per):
        part = np.zeros((batch, cols))
        for i in range(b0, min(rows, b0 + per)):
            part += sq[:, i, :]
        out += part
    return out


def lerp(a, b, w):
    w = a.dtype.type(w)
    one = a.dtype.type(1)
    return a + w * (b - a) if abs(w) < 0.5 else b - (b - a) * (one - w)


def step(p, g, state, t, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0, maximize=False,
         eps1_dtype=None):
    """One step of leaf p (a new array returned) at step count t; state: dict of slots (zeros at first)."""
    T = p.dtype.type
    eps1, eps2 = eps
    if eps1 is None:
        eps1 = float(np.finfo(eps1_dtype or p.dtype).eps)
    g = -g if maximize else g
    n = p.size
    w = t ** beta2_decay
    rho = min(lr, 1 / t ** 0.5)
    rms = float(T(math.sqrt(leaf_sum(p.astype(np.float64) ** 2)))) / n ** 0.5
    alpha = max(eps2, rms) * rho
    new = {}
    if p.ndim >= 2:
        rows, cols = p.shape[-2:]
        sq = g.astype(np.float64).reshape(-1, rows, cols) ** 2
        row_mean = (lane_sums(sq.reshape(-1, cols)) / cols).astype(p.dtype).reshape(p.shape[:-1] + (1,))
        col_mean = (column_sums(sq) / rows).astype(p.dtype).reshape(p.shape[:-2] + (1, cols))
        row = lerp(state.get("row_var", np.zeros_like(row_mean)), row_mean, w)
        col = lerp(state.get("col_var", np.zeros_like(col_mean)), col_mean, w)
        r3 = row.reshape(-1, rows)
        rsum = np.zeros(r3.shape[0])
        for i in range(rows):
            rsum += r3[:, i].astype(np.float64)
        mean = (rsum / rows).astype(p.dtype)
        mean = np.where(mean < T(eps1), T(eps1), mean).reshape(p.shape[:-2] + (1, 1))
        v = row * col / mean
        new["row_var"], new["col_var"] = row, col
    else:
        v = lerp(state.get("variance", np.zeros_like(p)), g * g, w)
        new["variance"] = v
    floor = T(eps1 * eps1)
    u = T(1) / np.sqrt(np.where(v < floor, floor, v)) * g
    unorm = float(T(math.sqrt(leaf_sum(u.astype(np.float64) ** 2))))
    denom = max(1.0, unorm / (n ** 0.5 * d))
    q = p * T(1 - lr * weight_decay) if weight_decay != 0 else p
    return (q + T(-alpha / denom) * u).astype(p.dtype), new
