"""Shared helpers of the scripts that tests/test_distributed.py runs under mpiexec.

Every rank runs the same script; checks that fail are collected (not raised, so
that every rank keeps taking part in the collectives) and rank 0 writes them,
with the number of checks, as JSON to the path given on the command line.
"""
import json
import sys
import traceback

import numpy as np
from mpi4py import MPI

COMM = MPI.COMM_WORLD
SIZE, RANK = COMM.Get_size(), COMM.Get_rank()


class Checks:
    def __init__(self):
        self.count = 0
        self.failures = []

    def check(self, ok, what):
        self.count += 1
        if not ok:
            self.failures.append(f"rank {RANK}: {what}")
        return ok

    def equal_trees(self, expected, actual, what):
        exp, act = leaves(expected), leaves(actual)
        if not self.check([p for p, _ in exp] == [p for p, _ in act], f"{what}: structures differ"):
            return
        for (path, a), (_, b) in zip(exp, act):
            same = a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
            self.check(same, f"{what}{path}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}, "
                             f"max |diff| {np.max(np.abs(a - b)) if a.shape == b.shape and a.size else '-'}")

    def same_on_every_rank(self, tree, what):
        digest = [(p, a.dtype.str, a.shape, a.tobytes()) for p, a in leaves(tree)]
        every = COMM.allgather(digest)
        self.check(all(d == every[0] for d in every), f"{what}: ranks disagree")

    def run(self, name, fn, *args):
        """Run one section; an unexpected exception is a failure (and must not desynchronize
        the ranks, so sections only raise where every rank raises)."""
        try:
            fn(self, *args)
        except Exception:
            self.failures.append(f"rank {RANK}: section {name} raised:\n{traceback.format_exc()}")

    def finish(self, path):
        every = COMM.gather((self.count, self.failures), root=0)
        if RANK == 0:
            with open(path, "w") as f:
                json.dump({"size": SIZE, "checks": [c for c, _ in every],
                           "failures": [x for _, fs in every for x in fs]}, f, indent=1)


def leaves(tree, path=""):
    """(path, array) of every leaf of a dict/list/tuple/namedtuple tree."""
    if tree is None:
        return []
    if isinstance(tree, np.ndarray):
        return [(path, tree)]
    if hasattr(tree, "_fields"):
        return [x for name, sub in zip(tree._fields, tree) for x in leaves(sub, f"{path}.{name}")]
    if isinstance(tree, dict):
        return [x for k in tree for x in leaves(tree[k], f"{path}[{k!r}]")]
    if isinstance(tree, (list, tuple)):
        return [x for i, sub in enumerate(tree) for x in leaves(sub, f"{path}[{i}]")]
    raise TypeError(f"unexpected {type(tree).__name__} at {path}")


def map_tree(fn, *trees):
    t = trees[0]
    if isinstance(t, np.ndarray):
        return fn(*trees)
    if hasattr(t, "_fields"):
        return type(t)(*[map_tree(fn, *xs) for xs in zip(*trees)])
    if isinstance(t, dict):
        return {k: map_tree(fn, *[x[k] for x in trees]) for k in t}
    return type(t)(map_tree(fn, *xs) for xs in zip(*trees))


def rank_order_average(grads):
    """The documented average: (((g0 + g1) + g2) + ...) / N, every operation in the leaf's dtype."""
    def average(*xs):
        s = xs[0].copy()  # ufuncs with out=: 0-d arrays stay arrays
        for x in xs[1:]:
            np.add(s, x, out=s)
        return np.divide(s, s.dtype.type(len(xs)), out=s)
    return map_tree(average, *grads)


def threshold(opt):
    """The smallest float64 tolerance at which opt.check_convergence() is True (bisection over
    the ordered bit patterns of [0, 1e6])."""
    lo, hi = 0, int(np.float64(1e6).view(np.int64))
    saved = opt.tolerance
    while lo < hi:
        mid = (lo + hi) // 2
        opt.tolerance = float(np.int64(mid).view(np.float64))
        if opt.check_convergence():
            hi = mid
        else:
            lo = mid + 1
    opt.tolerance = saved
    return float(np.int64(lo).view(np.float64))


def same_state(c, expected, actual, what, loaded=False):
    """Equal states, bit for bit. loaded: `expected` came back from np.load (scalars as 0-d arrays)."""
    c.check(sorted(expected) == sorted(actual), f"{what}: keys differ {sorted(set(expected) ^ set(actual))}")
    for key in expected:
        if key not in actual:
            continue
        a, b = expected[key], actual[key]
        if loaded and isinstance(a, np.ndarray) and a.ndim == 0:
            ok = np.asarray(b).ndim == 0 and a[()] == np.asarray(b)[()] and type(np.asarray(b)[()]) is type(a[()])
        elif isinstance(a, np.ndarray):
            ok = isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
        else:
            ok = type(a) is type(b) and a == b
        c.check(ok, f"{what}[{key!r}]: {a!r} vs {b!r}")


def copy_tree(tree):
    return map_tree(lambda a: a.copy(), tree)


def out_path():
    return sys.argv[1]
