"""Run under mpiexec -n N: DataParallel against a single-process reference, bit for bit.

    python battery.py RESULT.json [--save STATE.npz] [--load STATE.npz] [--only-resume] [--skip-errors]

--save writes the state and parameters after three ADAM steps at this N; --load resumes one
saved at another N (the file says which) and checks it against a single-process replay.

Every rank computes every rank's gradient (a seeded function of step and rank), so the
single-process reference (a plain fusedopt optimizer stepped with the NumPy rank-order
average) runs on every rank next to the data-parallel one. On 2 and 3 ranks it also runs
failpoints.py: one rank failing at each point of a step after the agreement.
"""
import argparse
import collections
import gc
import os
import sys
import weakref

import numpy as np
from harness import (COMM, RANK, SIZE, Checks, copy_tree, leaves, map_tree, out_path, rank_order_average,
                     same_state, threshold)

from fusedopt import distributed, optim, optimizers, schedules

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from optim_cases import OPTIM  # noqa: E402

P = collections.namedtuple("P", "loc")
W = collections.namedtuple("W", "matrix")
G = collections.namedtuple("G", "layers weights")

# name -> (shape, dtype) leaves built into a tree. "mixed" has odd sizes, an empty and a 0-d leaf,
# float32 then float64 leaves whose flat bytes cut across rank shards; "tiny" has fewer elements
# than ranks; "paysage" is shaped like paysage's Gradient; "big" runs the threaded chunk loops.
TREES = {
    "mixed": lambda mk: {"w": mk((33, 17), "float32"), "b": mk((7,), "float64"), "s": mk((1,), "float32"),
                         "e": mk((0,), "float32"), "z": mk((), "float64"),
                         "l": [mk((5, 3), "float32"), mk((129,), "float64")]},
    "tiny": lambda mk: [mk((1,), "float32")],
    "paysage": lambda mk: G([P(mk((24,), "float32")), P(mk((10,), "float32"))], [W(mk((24, 10), "float32"))]),
    "big": lambda mk: [mk((40001,), "float32"), mk((3,), "float64")],
    "wide64": lambda mk: [mk((5,), "float32"), mk((301,), "float64")],  # a float64 leaf across shards
    # One leaf, the whole flat layout: exchanged from, stepped in and gathered into the caller's
    # arrays (no copies). Sizes not a multiple of 16 (the last shard ends before the padding),
    # a bare array as the tree, and fewer elements than ranks.
    "one32": lambda mk: mk((1001,), "float32"),
    "one64": lambda mk: {"w": mk((37, 3), "float64")},
    "pair64": lambda mk: [mk((2,), "float64")],
    # 6144 bytes: equal shards at N = 1, 2 and 3, so the all-gather is MPI's Allgather.
    "even32": lambda mk: mk((1536,), "float32"),
    "even-mixed": lambda mk: {"a": mk((512,), "float64"), "b": mk((32, 16), "float32")},
}

OPTIMIZERS = {
    "Gradient": lambda: optimizers.Gradient(stepsize=schedules.ExponentialDecay(initial=0.05, coefficient=0.7)),
    "Momentum": lambda: optimizers.Momentum(stepsize=0.02, momentum=0.8),
    "RMSProp": lambda: optimizers.RMSProp(stepsize=schedules.PowerLawDecay(initial=0.01, coefficient=40.0),
                                          mean_square_weight=0.85),
    "ADAM": lambda: optimizers.ADAM(stepsize=schedules.Linear(initial=0.01, delta=0.004, minval=0.001)),
    "ADAM-no-mean": lambda: optimizers.ADAM(stepsize=0.01, mean_weight=0.0),
    "ADAM-ascent-keep": lambda: optimizers.ADAM(stepsize=0.003, ascent=True, keep_delta=True),
}


# fusedopt.optim, wrapped with replicated moments: every entry of the optim test registry
# (tests/optim_cases.py) with its richest case, and in turn an option that needs the whole tree.
_OPTIM_OPTIONS = (lambda: {"lr": 1e-3},
                  lambda: {"lr": schedules.ExponentialDecay(initial=0.01, coefficient=0.8), "max_grad_norm": 0.5},
                  lambda: {"lr": 3e-3, "weight_decay_mask": lambda path, a: a.ndim > 1})
OPTIM_BUILDERS = {f"{e.name}-{i % len(_OPTIM_OPTIONS)}":
                  (lambda e=e, i=i: getattr(optim, e.name)(**e.rich, **_OPTIM_OPTIONS[i % len(_OPTIM_OPTIONS)]()))
                  for i, e in enumerate(OPTIM)}


def grad(tree, step, rank, seed=0):
    rng = np.random.default_rng([seed, step, rank])
    return TREES[tree](lambda shape, dtype: np.asarray(rng.standard_normal(shape) * (1 + rank)).astype(dtype))


def params0(tree):
    rng = np.random.default_rng(99)
    return TREES[tree](lambda shape, dtype: np.asarray(rng.standard_normal(shape)).astype(dtype))


def average(tree, step, n=SIZE, seed=0):
    return rank_order_average([grad(tree, step, r, seed) for r in range(n)])


class Model:
    """A model of the paysage path: subtracts the delta it is handed (as paysage's models do)."""

    def __init__(self, params):
        self.params = params
        self.deltas = []

    def parameter_update(self, delta):
        for (_, p), (_, d) in zip(leaves(self.params), leaves(delta)):
            p -= d
        self.deltas.append(delta)


def moment_bytes(opt):
    mem = getattr(opt, "memory", None)
    if mem is None:
        return 0
    return sum(a.nbytes for t in (mem.mean_gradient, mem.mean_square_gradient) for _, a in leaves(t))


def equivalence(c, kind, tree, path, shard, det, steps=4):
    what = f"{kind}/{tree}/{path}/shard={shard}/det={det}"
    ref, dp = OPTIMIZERS[kind](), distributed.DataParallel(OPTIMIZERS[kind](), shard_state=shard, deterministic=det)
    if tree.startswith("even"):
        dp.update_lr()
        dp.update(params0(tree) if path == "inplace" else Model(params0(tree)), grad(tree, 0, RANK))
        c.check(dp._layout.data == SIZE * dp._layout.block, f"{what}: shards of equal size expected")
        dp = distributed.DataParallel(OPTIMIZERS[kind](), shard_state=shard, deterministic=det)
    ref_p, dp_p = params0(tree), params0(tree)
    kept, ref_deltas = Model(dp_p), []  # a model that keeps every delta it is handed
    for step in range(steps):
        if step % 2 == 0:
            ref.update_lr()
            dp.update_lr()
        avg = average(tree, step)
        if path == "inplace":
            ref.update(ref_p, avg)
            dp.update(dp_p, grad(tree, step, RANK))
        else:
            ref.update(Model(ref_p), avg)
            ref_deltas.append(copy_tree(ref.delta))
            dp.update(kept if step % 2 else Model(dp_p), grad(tree, step, RANK))
        c.same_on_every_rank(dp_p, f"{what} step {step} params")
        if det:
            c.equal_trees(ref_p, dp_p, f"{what} step {step} params")
            if path == "paysage" or ref.keep_delta:
                c.equal_trees(ref.delta, dp.delta, f"{what} step {step} delta")
                c.check(type(dp.delta) is type(ref.delta), f"{what}: delta container {type(dp.delta).__name__}")
        else:
            for (p, a), (_, b) in zip(leaves(ref_p), leaves(dp_p)):
                c.check(np.allclose(a, b, rtol=1e-4, atol=1e-6), f"{what} step {step} params{p} not close")
    for step, d in zip(range(1, steps, 2), kept.deltas):
        if det:
            c.equal_trees(ref_deltas[step], d, f"{what}: the delta of step {step}, kept by the model")
    state = dp.state_dict()
    c.same_on_every_rank([v for _, v in sorted(state.items()) if isinstance(v, np.ndarray)], f"{what} state")
    full = moment_bytes(ref)
    nbytes = COMM.allgather(dp.state_nbytes)
    c.check(sum(nbytes) == full * (SIZE if not shard else 1), f"{what}: state bytes {nbytes} of {full}")
    if shard:
        c.check(max(nbytes) <= full / SIZE + 64 * SIZE, f"{what}: state bytes {nbytes} of {full} at N={SIZE}")
    if not det:
        return
    same_state(c, ref.state_dict(), state, f"{what} state_dict")
    # The convergence sums are bit-identical: the reference's exact threshold flips both the same way.
    t = threshold(ref)
    for tol in (t, float(np.nextafter(t, 0.0))):
        dp.optimizer.tolerance = tol
        ref.tolerance = tol
        c.check(dp.check_convergence() == ref.check_convergence(), f"{what}: check_convergence at {tol!r}")
    ref.tolerance = t
    c.check(ref.check_convergence() and t > 0.0, f"{what}: the threshold {t!r} converges")
    # The single process's state loads into a DataParallel, which steps on as the single process.
    resumed = distributed.DataParallel(OPTIMIZERS[kind](), shard_state=shard)
    resumed.load_state_dict(ref.state_dict())
    res_p = copy_tree(ref_p)
    if path == "inplace":
        ref.update(ref_p, average(tree, steps))
        resumed.update(res_p, grad(tree, steps, RANK))
    else:
        ref.update(Model(ref_p), average(tree, steps))
        resumed.update(Model(res_p), grad(tree, steps, RANK))
    c.equal_trees(ref_p, res_p, f"{what} resumed from the single process's state")
    same_state(c, ref.state_dict(), resumed.state_dict(), f"{what} resumed state_dict")


def random_tree(seed):
    """A tree of 1..7 leaves of random sizes (0..300, any of them empty or tiny) and dtypes, in
    random containers: one per seed, the same on every rank."""
    rng = np.random.default_rng([7, seed])
    specs = [((int(rng.integers(0, 301)),) if rng.random() < 0.7 else
              tuple(int(x) for x in rng.integers(0, 9, rng.integers(0, 3))), str(rng.choice(["float32", "float64"])))
             for _ in range(rng.integers(1, 8))]

    def build(mk):
        leaves_ = [mk(shape, dtype) for shape, dtype in specs]
        if seed % 3 == 0:
            return {f"k{i}": a for i, a in enumerate(leaves_)}
        if seed % 3 == 1:
            return [tuple(leaves_[:2]), leaves_[2:]]
        return leaves_
    return build


def equivalence_all(c):
    for seed in range(8):
        TREES[f"random{seed}"] = random_tree(seed)
        kind = list(OPTIMIZERS)[seed % len(OPTIMIZERS)]
        for path in ("inplace", "paysage"):
            for shard in (True, False):
                equivalence(c, kind, f"random{seed}", path, shard, True, steps=3)
    for kind in OPTIMIZERS:
        for tree in ("mixed", "tiny", "paysage"):
            for path in ("inplace", "paysage"):
                for shard in (True, False):
                    equivalence(c, kind, tree, path, shard, True)
    for kind in OPTIMIZERS:
        for tree in ("one32", "one64", "pair64", "even32", "even-mixed"):
            for path in ("inplace", "paysage"):
                for shard in (True, False):
                    equivalence(c, kind, tree, path, shard, True)
    for shard in (True, False):
        for path in ("inplace", "paysage"):
            equivalence(c, "ADAM", "one32", path, shard, False)
            equivalence(c, "ADAM", "big", path, shard, True, steps=2)
            equivalence(c, "RMSProp", "wide64", path, shard, True)
            equivalence(c, "ADAM", "mixed", path, shard, False)


def optim_case(c, kind, tree, shard, det, steps=4):
    what = f"optim.{kind}/{tree}/shard={shard}/det={det}"
    ref = OPTIM_BUILDERS[kind]()
    if shard and ref.max_grad_norm is not None:
        try:
            distributed.DataParallel(OPTIM_BUILDERS[kind](), shard_state=True)
            c.check(False, f"{what}: clipping accepted with sharded state")
        except TypeError as exc:
            c.check("shard_state=False" in str(exc), f"{what}: {exc}")
        return
    dp = distributed.DataParallel(OPTIM_BUILDERS[kind](), shard_state=shard, deterministic=det)
    ref_p, dp_p = params0(tree), params0(tree)
    for step in range(steps):
        ref.step(ref_p, average(tree, step))
        dp.step(dp_p, grad(tree, step, RANK))
        c.same_on_every_rank(dp_p, f"{what} step {step} params")
        if det:
            c.equal_trees(ref_p, dp_p, f"{what} step {step} params")
        else:
            for (p, a), (_, b) in zip(leaves(ref_p), leaves(dp_p)):
                c.check(np.allclose(a, b, rtol=1e-4, atol=1e-6), f"{what} step {step} params{p} not close")
    full = sum(a.nbytes for t in ref.state_arrays().values() for _, a in leaves(t))
    nbytes = COMM.allgather(dp.state_nbytes)
    c.check(sum(nbytes) == full * (1 if shard else SIZE), f"{what}: state bytes {nbytes} of {full}")
    slots = len(ref.state_arrays())
    c.check(max(nbytes) <= (full / SIZE + 64 * slots if shard else full), f"{what}: state bytes {nbytes} of {full}")
    if not det:
        return
    state = dp.state_dict()
    same_state(c, ref.state_dict(), state, f"{what} state_dict")
    # The single process's state resumes in a fresh DataParallel (loaded before its first step).
    resumed = distributed.DataParallel(OPTIM_BUILDERS[kind](), shard_state=shard)
    resumed.load_state_dict(ref.state_dict())
    same_state(c, ref.state_dict(), resumed.state_dict(), f"{what} loaded state before a step")
    res_p = copy_tree(ref_p)
    ref.step(ref_p, average(tree, steps))
    resumed.step(res_p, grad(tree, steps, RANK))
    c.equal_trees(ref_p, res_p, f"{what} resumed from the single process's state")
    same_state(c, ref.state_dict(), resumed.state_dict(), f"{what} resumed state_dict")
    # And into this one, whose layout is known: cut to the shards at once.
    dp.load_state_dict(ref.state_dict())
    same_state(c, ref.state_dict(), dp.state_dict(), f"{what} reloaded state before a step")
    ref.step(ref_p, average(tree, steps + 1))
    dp.step(res_p, grad(tree, steps + 1, RANK))
    c.equal_trees(ref_p, res_p, f"{what} reloaded, one more step")
    if ref.weight_decay_mask is not None:  # a mask assigned between steps applies to the whole tree's leaves
        mask = lambda path, a: a.size > 10  # noqa: E731
        ref.weight_decay_mask = dp.optimizer.weight_decay_mask = mask
        ref.step(ref_p, average(tree, steps + 2))
        dp.step(res_p, grad(tree, steps + 2, RANK))
        c.equal_trees(ref_p, res_p, f"{what} a new mask")
        same_state(c, ref.state_dict(), dp.state_dict(), f"{what} a new mask: state")
    try:
        dp.update(dp_p, grad(tree, 0, RANK))  # fusedopt.optimizers' API: refused locally, before any collective
        c.check(False, f"{what}: update() accepted")
    except TypeError:
        c.check(True, "")


def optim_all(c):
    for kind in OPTIM_BUILDERS:
        for shard in (True, False):
            for tree in ("mixed", "tiny", "one32"):
                optim_case(c, kind, tree, shard, True)
            optim_case(c, kind, "mixed", shard, False)


# -- errors: raised on every rank, nothing modified, no hang ------------------------------------
def raised_everywhere(c, what, expected, fn):
    try:
        fn()
        got = None
    except Exception as exc:  # noqa: BLE001 - the type is what is checked
        got = exc
    every = COMM.allgather(type(got).__name__ if got is not None else None)
    c.check(all(e is not None for e in every), f"{what}: raised on {every}")
    c.check(isinstance(got, expected), f"{what}: expected {expected}, got {got!r}")


def errors(c, shard):
    last = SIZE - 1
    tag = f"errors/shard={shard}"

    def fresh():
        return distributed.DataParallel(optimizers.ADAM(stepsize=0.01), shard_state=shard)

    def bad_dtype():
        g = grad("mixed", 0, RANK)
        if RANK == last:
            g["b"] = g["b"].astype(np.int32)
        return g

    def extra_leaf():
        g = grad("mixed", 0, RANK)
        if RANK == last:
            g["x"] = np.zeros(3, np.float32)
        return g

    def other_shape(step):
        g = grad("mixed", step, RANK)
        if RANK == last:
            g["w"] = np.zeros((17, 33), np.float32)
        return g

    # A fresh optimizer: bad dtype / an extra leaf on the last rank.
    for name, make in (("int leaf", bad_dtype), ("extra leaf", extra_leaf)):
        dp, p = fresh(), params0("mixed")
        raised_everywhere(c, f"{tag} {name}", (TypeError, ValueError), lambda: dp.update(p, make()))
        c.equal_trees(params0("mixed"), p, f"{tag} {name}: params untouched")
        c.check(dp.step_count == 0, f"{tag} {name}: step_count {dp.step_count}")

    # After two steps: the same faults, read-only params, mixed path kinds, a NaN with
    # check_finite; after each, a good step still matches the reference.
    dp, ref = fresh(), optimizers.ADAM(stepsize=0.01)
    dp.optimizer.check_finite = ref.check_finite = True
    p, ref_p = params0("mixed"), params0("mixed")
    step = 0

    def good_step():
        nonlocal step
        dp.update(p, grad("mixed", step, RANK))
        ref.update(ref_p, average("mixed", step))
        step += 1

    good_step()
    good_step()

    def read_only():
        q = copy_tree(p)
        if RANK == 0:
            q["l"][1].flags.writeable = False
        dp.update(q, grad("mixed", step, RANK))

    def mixed_kinds():
        dp.update(Model(p) if RANK == 0 else p, grad("mixed", step, RANK))

    def nan_gradient():
        g = grad("mixed", step, RANK)
        if RANK == last:
            g["l"][0][2, 1] = np.nan
        dp.update(p, g)

    faults = [("int leaf", TypeError, lambda: dp.update(p, bad_dtype())),
              ("extra leaf", ValueError, lambda: dp.update(p, extra_leaf())),
              ("other shape", ValueError, lambda: dp.update(p, other_shape(step))),
              ("read-only params", ValueError, read_only),
              ("nan gradient", FloatingPointError, nan_gradient)]
    if SIZE > 1:
        faults.append(("mixed path kinds", ValueError, mixed_kinds))
    for name, kind, fn in faults:
        raised_everywhere(c, f"{tag} {name} after steps", kind, fn)
        c.equal_trees(ref_p, p, f"{tag} {name} after steps: params untouched")
        good_step()
        c.equal_trees(ref_p, p, f"{tag} {name}: the next good step")
    same_state(c, ref.state_dict(), dp.state_dict(), f"{tag} state after the faults")

    # Every rank changes layout while moments exist: refused like the single process; after
    # reset() the new layout trains.
    def reshaped():
        g = grad("mixed", step, RANK)
        g["w"] = g["w"].reshape(17, 33)
        return g
    raised_everywhere(c, f"{tag} new layout with moments", ValueError, lambda: dp.update(p, reshaped()))
    dp.reset()
    q = copy_tree(p)
    q["w"] = q["w"].reshape(17, 33)
    dp.update(q, reshaped())
    c.check(dp.step_count == step + 1, f"{tag}: a step after reset")

    # load_state_dict: a state only one rank has wrong, or states that differ across ranks.
    state = dp.state_dict()
    broken = dict(state)
    if RANK == 0:
        del broken["step_count"]
    raised_everywhere(c, f"{tag} load of a broken state", ValueError, lambda: dp.load_state_dict(broken))
    other = dict(state, step_count=state["step_count"] + RANK)
    if SIZE > 1:
        raised_everywhere(c, f"{tag} load of differing states", ValueError, lambda: dp.load_state_dict(other))
    same_state(c, state, dp.state_dict(), f"{tag} state untouched by failed loads")

    # A state loaded before any step waits for the first gradient, which must fit it.
    waiting = fresh()
    waiting.load_state_dict(state)
    tiny_p = params0("tiny")
    raised_everywhere(c, f"{tag} first step unlike the loaded state", ValueError,
                      lambda: waiting.update(tiny_p, grad("tiny", 0, RANK)))
    c.equal_trees(params0("tiny"), tiny_p, f"{tag} first step unlike the loaded state: params untouched")
    same_state(c, state, waiting.state_dict(), f"{tag} the loaded state still waits")


class Sub(np.ndarray):
    """A subclass of ndarray: stepped through the wrapper's flat copy, never in place."""


def direct_path(c, tree, shard):
    """A tree of one leaf: the caller's own arrays are used (nothing packed, the parameter array
    itself gathered into), and the bits equal the copying path's (a strided gradient and
    parameters of an ndarray subclass go through it) and the single process's, step by step."""
    what = f"direct/{tree}/shard={shard}"
    ref = OPTIMIZERS["ADAM"]()
    fast, slow = (distributed.DataParallel(OPTIMIZERS["ADAM"](), shard_state=shard) for _ in range(2))
    ref_p, fast_p, slow_p = params0(tree), params0(tree), params0(tree)
    slow_sub = map_tree(lambda a: a.view(Sub), slow_p)  # the same memory as slow_p
    for step in range(4):
        if step % 2 == 0:
            for o in (ref, fast, slow):
                o.update_lr()
        ref.update(ref_p, average(tree, step))
        g = grad(tree, step, RANK)
        [(_, g_leaf)] = leaves(g)
        if step == 1:
            g_leaf.flags.writeable = False  # a read-only gradient is only read: still no copy
        fast.update(fast_p, g)
        strided = map_tree(lambda a: np.repeat(a[..., None], 2, axis=-1)[..., 0], g)  # not contiguous
        slow.update(slow_sub if shard else slow_p, strided)
        c.equal_trees(ref_p, fast_p, f"{what} step {step}: direct params vs the single process")
        c.equal_trees(slow_p, fast_p, f"{what} step {step}: direct params vs the copying path")
        c.check(not fast._layout.send.any(), f"{what} step {step}: the gradient was packed")
        c.check(slow._layout.send.any() or not g_leaf.any(), f"{what} step {step}: the strided gradient was not packed")
        if shard:
            [(_, fast_leaf)] = leaves(fast_p)
            c.check(fast._direct is not None and fast._direct[0] is fast_leaf,
                    f"{what} step {step}: the parameter array was not stepped directly")
            c.check(slow._direct is None, f"{what} step {step}: a subclass was stepped directly")
    same_state(c, ref.state_dict(), fast.state_dict(), f"{what} state_dict")

    # A bad input on one rank: raised on every rank, the caller's arrays untouched everywhere.
    last = SIZE - 1
    before = copy_tree(fast_p)
    fast.optimizer.check_finite = ref.check_finite = True
    [(_, fast_leaf)] = leaves(fast_p)

    def bad(kind):
        g = grad(tree, 9, RANK)
        if RANK != last:
            return g
        if kind == "nan":
            leaves(g)[0][1].reshape(-1)[-1] = np.nan  # the last element, in the last shard with data
            return g
        if kind == "shape":
            return map_tree(lambda a: a.reshape(-1)[:-1].copy(), g)
        return map_tree(lambda a: a.astype(np.float16), g)

    def read_only_params():
        fast_leaf.flags.writeable = RANK != 0
        try:
            fast.update(fast_p, grad(tree, 9, RANK))
        finally:
            fast_leaf.flags.writeable = True

    for kind, exc in (("nan", FloatingPointError), ("shape", ValueError), ("dtype", TypeError)):
        raised_everywhere(c, f"{what} bad {kind} on rank {last}", exc, lambda: fast.update(fast_p, bad(kind)))
        c.equal_trees(before, fast_p, f"{what} bad {kind}: params untouched")
    raised_everywhere(c, f"{what} read-only params on rank 0", ValueError, read_only_params)
    c.equal_trees(before, fast_p, f"{what} read-only params: params untouched")
    same_state(c, ref.state_dict(), fast.state_dict(), f"{what} state after the faults")
    ref.update(ref_p, average(tree, 4))
    fast.update(fast_p, grad(tree, 4, RANK))
    c.equal_trees(ref_p, fast_p, f"{what}: a good step after the faults")

    # The caller's gradient is used in place but not kept after a step, nor after a failed one.
    for kind in ("good", "nan"):
        g = bad(kind) if kind == "nan" else grad(tree, 5, RANK)
        alive = weakref.ref(leaves(g)[0][1])
        try:
            fast.update(fast_p, g)
        except FloatingPointError:
            pass
        del g
        gc.collect()  # an exception's traceback and its frames may form a cycle
        c.check(alive() is None, f"{what}: the gradient of a {kind} step is still referenced")


def direct_all(c):
    for tree in ("one32", "one64", "pair64"):
        for shard in (True, False):
            direct_path(c, tree, shard)


def aliased(c, shard, det, shift):
    """A one-leaf gradient that is a view of the parameter array's own buffer shifted by
    `shift` elements: the fused average (the kernel reading the rows) must not read what the
    step writes, so the step is the single process's on the average of the values the ranks
    passed."""
    what = f"aliased/shift={shift}/shard={shard}/det={det}"
    n = 4099
    ref, dp = OPTIMIZERS["ADAM"](), distributed.DataParallel(OPTIMIZERS["ADAM"](), shard_state=shard, deterministic=det)
    ref.update_lr()
    dp.update_lr()
    buf = np.zeros(n + 1, np.float32)
    params = buf[1:] if shift < 0 else buf[:-1]
    params[:] = np.linspace(-1, 1, n, dtype=np.float32)
    ref_p = params.copy()
    for step in range(3):
        edge = 0 if shift < 0 else n  # the element of buf that is not a parameter
        buf[edge] = np.float32(step + 0.5)
        g = buf[:-1] if shift < 0 else buf[1:]
        values = [g.copy() for _ in range(SIZE)]  # every rank passes the same bits
        ref.update(ref_p, rank_order_average(values))
        dp.update(params, g)
        c.equal_trees(ref_p, params, f"{what} step {step}: params vs the single process")
        if shard and det:  # the kernel averaged the rows itself: the average buffer was never written
            c.check(not dp._bufs.avg.any(), f"{what} step {step}: the average was not fused into the step")


def aliased_all(c):
    for shard, det in ((True, True), (False, False), (True, False)):
        for shift in (-1, 1):
            aliased(c, shard, det, shift)


class OwnUpdate(optimizers.Gradient):
    """A subclass with its own update that reads the gradient in Python (as paysage's own
    optimizers do): the wrapper must hand it the average itself, never rows to average."""

    def update(self, model, grad):
        self.delta = map_tree(lambda g: np.multiply(g, g.dtype.type(self.lr), out=np.empty_like(g)), grad)
        model.parameter_update(self.delta)


class ArrayValue:
    """A schedule whose value is a 0-d array (which can change in place, with no assignment)."""

    def __init__(self, value):
        self.value = np.array(float(value))

    def __next__(self):
        return float(self.value)


# -- every optimizer, one setting unlike on the last rank: refused on every rank -----------------
def _paysage_changes(opt):
    """(field named in the message, what sets it otherwise on an optimizer like `opt`)."""
    mem = getattr(opt, "memory", None)
    changes = [("ascent", lambda o: setattr(o, "ascent", not o.ascent)),
               ("tolerance", lambda o: setattr(o, "tolerance", o.tolerance * 2)),
               ("check_finite", lambda o: setattr(o, "check_finite", not o.check_finite)),
               ("keep_delta", lambda o: setattr(o, "keep_delta", not o.keep_delta)),
               ("lr", lambda o: setattr(o, "lr", o.lr * 0.5))]
    for name in ("mean_weight", "mean_square_weight"):
        if mem is not None and getattr(mem, name, None) is not None:
            changes.append(("mean_weight, mean_square_weight",
                            lambda o, name=name: setattr(o.memory, name, getattr(o.memory, name) * 0.5 or 0.5)))
    return changes


def _optim_changes(entry):
    """(hyper-parameter, constructor keywords with it otherwise) of a fusedopt.optim entry's richest
    case, for every hyper-parameter some other valid value can be found for."""
    base = dict(entry.rich)
    for name, value in getattr(optim, entry.name)(**base)._hyper_values().items():
        if isinstance(value, bool):
            candidates = [not value]
        elif isinstance(value, (int, float)):
            candidates = [value * 0.5, value + 0.01, 0.0]
        elif isinstance(value, tuple):
            candidates = [(value[0] * 0.5, *value[1:])]
        else:
            continue
        for other in candidates:
            if other == value:
                continue
            try:
                getattr(optim, entry.name)(**{**base, name: other})
            except (TypeError, ValueError):
                continue
            yield name, {**base, name: other}
            break


def refused(c, what, fn, p, words):
    """fn() raises the same ValueError on every rank, naming each of `words`; `p` unchanged."""
    before = copy_tree(p)
    try:
        fn()
        got = None
    except ValueError as exc:
        got = str(exc)
    every = COMM.allgather(got)
    c.check(all(e is not None for e in every) and len(set(every)) == 1, f"{what}: raised {every}")
    for word in words:
        c.check(got is not None and word in got, f"{what}: {word!r} not in {got}")
    c.equal_trees(before, p, f"{what}: params changed")


def unlike(c, shard):
    """Every fusedopt.optimizers optimizer with each setting, and every fusedopt.optim one with each
    hyper-parameter, unlike on the last rank: the same ValueError on every rank, naming it and the
    rank, and nothing changed."""
    last = SIZE - 1
    for kind, make in OPTIMIZERS.items():
        for field, change in _paysage_changes(make()):
            opt = make()
            opt.update_lr()
            if RANK == last:
                change(opt)
            dp, p = distributed.DataParallel(opt, shard_state=shard), params0("mixed")
            refused(c, f"unlike {kind} {field} shard={shard}", lambda: dp.update(p, grad("mixed", 0, RANK)), p,
                    [field, f"rank {last}"])
    for entry in OPTIM:
        for name, kwargs in _optim_changes(entry):
            opt = getattr(optim, entry.name)(**(kwargs if RANK == last else entry.rich))
            dp, p = distributed.DataParallel(opt, shard_state=shard), params0("mixed")
            refused(c, f"unlike {entry.name} {name} shard={shard}", lambda: dp.step(p, grad("mixed", 0, RANK)), p,
                    ["hyper-parameters", f"'{name}'", f"rank {last}"])


def unlike_later(c, shard):
    """A setting changed on the last rank after steps the ranks agreed on (the wrapper hashes
    the fields again only when an object they are made of changes): refused on every rank,
    naming it, and nothing changed; a float's sign and the step count included."""
    last = SIZE - 1

    def negative_zero(o):  # 0.0 on the other ranks: equal as floats, not as bits
        o.lr = -0.0 if RANK == last else 0.0

    def array_value(o):  # a schedule's value changed in place (no assignment: read every step)
        o.stepsize.value[...] = 0.25

    paysage_changes = [*_paysage_changes(OPTIMIZERS["ADAM-no-mean"]()),
                       ("step_count", lambda o: setattr(o, "step_count", o.step_count + 1)), ("lr", negative_zero),
                       ("stepsize schedule", lambda o: setattr(o, "stepsize", ArrayValue(o.stepsize.value))),
                       ("mean_weight, mean_square_weight",
                        lambda o: setattr(o, "memory", type(o.memory)(mean_weight=0.5, mean_square_weight=0.9))),
                       ("lr", array_value)]
    for field, change in paysage_changes:
        opt = OPTIMIZERS["ADAM-no-mean"]()
        if change is array_value:  # steps at stepsize.value: no update_lr()
            opt.stepsize = ArrayValue(0.5)
        dp, p = distributed.DataParallel(opt, shard_state=shard), params0("mixed")
        if change is not array_value:
            dp.update_lr()
        for step in range(2):
            dp.update(p, grad("mixed", step, RANK))
        if RANK == last or change is negative_zero:
            change(dp.optimizer)
        refused(c, f"unlike later ADAM {field} shard={shard}", lambda: dp.update(p, grad("mixed", 2, RANK)), p,
                [field, f"rank {last}"])
    optim_changes = [("lr", "lr", 5e-4), ("hyper-parameters", "betas", (0.8, 0.999)),
                     ("hyper-parameters", "weight_decay", 0.5), ("check_finite", "check_finite", True),
                     *([] if shard else [("max_grad_norm", "max_grad_norm", 1.0)])]
    for field, name, value in optim_changes:
        dp, p = distributed.DataParallel(optim.Adam(lr=1e-3), shard_state=shard), params0("mixed")
        for step in range(2):
            dp.step(p, grad("mixed", step, RANK))
        if RANK == last:
            setattr(dp.optimizer, name, value)
        refused(c, f"unlike later Adam {name} shard={shard}", lambda: dp.step(p, grad("mixed", 2, RANK)), p,
                [field, f"rank {last}"])


def foreign(c):
    """Inputs the ranks do not agree on beyond the layout, and optimizers the wrapper does not
    know: no hang, and the single process's bits."""
    # One rank's parameters are an ndarray subclass (stepped through the wrapper's flat copy),
    # the others' plain arrays (gathered into directly), on a layout whose last shard is short:
    # every rank must still pick the same all-gather.
    for shard in (True, False):
        what = f"foreign/mixed params/shard={shard}"
        ref, dp = OPTIMIZERS["ADAM"](), distributed.DataParallel(OPTIMIZERS["ADAM"](), shard_state=shard)
        ref_p, p = params0("one32"), params0("one32")
        mine = p.view(Sub) if RANK == SIZE - 1 else p
        for step in range(3):
            if step % 2 == 0:
                ref.update_lr()
                dp.update_lr()
            ref.update(ref_p, average("one32", step))
            dp.update(mine, grad("one32", step, RANK))
            c.equal_trees(ref_p, p, f"{what} step {step}")
    for shard in (True, False):
        for det in (True, False):
            what = f"foreign/own update/shard={shard}/det={det}"
            ref, dp = OwnUpdate(stepsize=0.05), distributed.DataParallel(OwnUpdate(stepsize=0.05), shard_state=shard,
                                                                         deterministic=det)
            ref.update_lr()
            dp.update_lr()
            ref_m, m = Model(params0("mixed")), Model(params0("mixed"))
            for step in range(2):
                ref.update(ref_m, average("mixed", step))
                dp.update(m, grad("mixed", step, RANK))
                c.check(dp._bufs.avg.any(), f"{what} step {step}: its update was given rows, not the average")
                if det:
                    c.equal_trees(ref_m.params, m.params, f"{what} step {step}")
                else:  # MPI's own sum: the ranks agree with each other, and about the average
                    c.check(all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for (_, a), (_, b)
                                in zip(leaves(ref_m.params), leaves(m.params))), f"{what} step {step}: vs average")


# -- resume across rank counts ------------------------------------------------------------------
def resume_save(c, path):
    """Three ADAM steps at this N; the state and parameters saved for another rank count."""
    dp, p = distributed.DataParallel(OPTIMIZERS["ADAM"]()), params0("mixed")
    for step in range(3):
        if step == 0:
            dp.update_lr()
        dp.update(p, grad("mixed", step, RANK))
    state = dp.state_dict()
    if RANK == 0:
        np.savez(path, **state, **{f"param.{i}": a for i, (_, a) in enumerate(leaves(p))},
                 saved_size=np.int64(SIZE))
    COMM.Barrier()


def resume_load(c, path):
    """Load a state saved at another N, train three more steps at this N, in every mode; equal
    to a single process that did the same (three steps on the saver's averages, three on ours)."""
    with np.load(path) as f:
        saved = {k: f[k] for k in f.files}
    saved_n = int(saved.pop("saved_size"))
    p_saved = [saved.pop(f"param.{i}") for i in range(len(leaves(params0("mixed"))))]
    ref, ref_p = OPTIMIZERS["ADAM"](), params0("mixed")
    for step in range(3):
        if step == 0:
            ref.update_lr()
        ref.update(ref_p, average("mixed", step, saved_n))
    for (_, a), b in zip(leaves(ref_p), p_saved):
        c.check(np.array_equal(a, b), f"resume from N={saved_n}: saved params differ from the replay")
    for step in range(3, 6):
        if step == 4:
            ref.update_lr()
        ref.update(ref_p, average("mixed", step))
    plain = OPTIMIZERS["ADAM"]()  # a single-process optimizer loads it too
    plain.load_state_dict(saved)
    plain_p = params0("mixed")
    for (_, a), b in zip(leaves(plain_p), p_saved):
        a[...] = b
    for step in range(3, 6):
        if step == 4:
            plain.update_lr()
        plain.update(plain_p, average("mixed", step))
    c.equal_trees(ref_p, plain_p, f"resume N={saved_n}->single process: params")
    for shard in (True, False):
        for det in (True, False):
            dp, p = distributed.DataParallel(OPTIMIZERS["ADAM"](), shard_state=shard, deterministic=det), \
                params0("mixed")
            for (_, a), b in zip(leaves(p), p_saved):
                a[...] = b
            dp.load_state_dict(saved)
            if not det:
                continue
            same_state(c, saved, dp.state_dict(), f"resume N={saved_n}->{SIZE} shard={shard}: state before a step",
                       loaded=True)
            for step in range(3, 6):
                if step == 4:
                    dp.update_lr()
                dp.update(p, grad("mixed", step, RANK))
            what = f"resume N={saved_n}->{SIZE} shard={shard}"
            c.equal_trees(ref_p, p, f"{what}: params")
            same_state(c, ref.state_dict(), dp.state_dict(), f"{what}: state")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("result")
    parser.add_argument("--save")
    parser.add_argument("--load")
    parser.add_argument("--only-resume", action="store_true")
    parser.add_argument("--skip-errors", action="store_true")
    args = parser.parse_args()
    c = Checks()
    if not args.only_resume:
        c.run("equivalence", equivalence_all)
        c.run("fusedopt.optim", optim_all)
        c.run("direct", direct_all)
        c.run("aliased", aliased_all)
        c.run("foreign", foreign)
        for shard in () if args.skip_errors else (True, False):
            c.run(f"errors shard={shard}", errors, shard)
        if SIZE > 1:  # settings unlike on one rank; one rank failing at each point of a step
            for shard in (True, False):
                c.run(f"unlike shard={shard}", unlike, shard)
                c.run(f"unlike later shard={shard}", unlike_later, shard)
            import failpoints  # (it takes its trees and reference from this module)
            failpoints.run_all(c)
    if args.load:
        c.run("resume load", resume_load, args.load)
    if args.save:
        c.run("resume save", resume_save, args.save)
    c.finish(out_path())


if __name__ == "__main__":
    main()
