"""The independent NumPy reference of fusedopt.optim: ``Reference(kind, **hyper)``
keeps its own state and steps a list of arrays in place with the reference math
of the class's registry entry (tests/optim_cases.py); ``step(params, grads,
norm)``: ``norm`` is the global gradient norm to clip with, or None.
"""
import inspect
import math

import numpy as np

from fusedopt import optim
from optim_cases import ENTRIES


class Reference:
    def __init__(self, kind, lr=1e-3, max_grad_norm=None, mask=None, **hyper):
        self.entry = ENTRIES[kind]
        self.kind, self.lr, self.max_grad_norm, self.mask = kind, lr, max_grad_norm, mask
        # The class's documented defaults (its signature), then the case's values.
        params = inspect.signature(getattr(optim, kind)).parameters.values()
        self.h = {p.name: p.default for p in params if p.kind == p.POSITIONAL_OR_KEYWORD and p.name != "lr"}
        self.h.update(hyper)
        self.t = 0
        self.state = None
        self.scalars = dict(self.entry.scalars)

    def slot_names(self):
        return self.entry.slots(self.h)

    def step(self, params, grads, norm=None):
        if self.state is None:
            self.state = [{name: np.full(p.shape, self.entry.start(name, self.h), dtype=p.dtype)
                           for name in self.slot_names()} for p in params]
        self.t += 1
        if self.entry.begin is not None:
            self.entry.begin(self)
        clip = 1.0
        if self.max_grad_norm is not None:
            clip = min(self.max_grad_norm / (norm + 1e-6), 1.0)
        sign = -1.0 if self.h.get("maximize") else 1.0
        for i, (p, g, st) in enumerate(zip(params, grads, self.state)):
            decay = self.mask is None or self.mask[i]
            T = p.dtype.type
            self.entry.step(self, p, g * T(sign * clip), st, T, decay)


def lion_paper_f64(p, g, m, lr, b1, b2, wd):
    """Chen et al. 2023, Algorithm 2 with decoupled decay, in float64 (returns new p, m)."""
    update = np.sign(b1 * m + (1 - b1) * g)
    p = p * (1 - lr * wd) - lr * update
    return p, b2 * m + (1 - b2) * g


def global_norm(grads):
    return math.sqrt(sum(float(np.sum(np.asarray(g, dtype=np.float64) ** 2)) for g in grads))
