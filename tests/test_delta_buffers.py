"""The paysage path's delta arenas: a buffer of 1 MB or more whose arrays have all died is
reused by a later step (csrc/bindings/arrays.cpp, recycled_empty), and a delta anyone still
holds (the tree, one leaf, or a view of a leaf) is never written again."""
import numpy as np
import pytest

from fusedopt import optimizers

from reference import MockModel, RefOptimizer, constant_rates, flatten
from paysage_cases import CLASSES

N32 = 400_000  # 1.6 MB of float32: above the 1 MB from which buffers are reused
N64 = 150_000  # 1.2 MB of float64
LR = 0.01
KINDS = CLASSES


class ForgetfulModel:
    """A model that subtracts delta and keeps nothing of it (as paysage's models do)."""

    def __init__(self, params):
        self.params = [p.copy() for p in params]

    def parameter_update(self, delta):
        for p, d in zip(self.params, delta):
            np.subtract(p, d, out=p)


def address(a):
    return a.__array_interface__["data"][0]


def grads(rng, steps):
    return [[rng.standard_normal(N32).astype(np.float32), rng.standard_normal(N64)] for _ in range(steps)]


@pytest.mark.parametrize("kind", KINDS)
def test_held_deltas_keep_their_values(kind, rng):
    """Hold the whole delta of step 1, one leaf of step 2 and a slice of a leaf of step 3:
    after 5 more steps each still has the bits it had, and every delta equals the reference."""
    gs = grads(rng, 8)
    params = [rng.standard_normal(N32).astype(np.float32), rng.standard_normal(N64)]
    opt = KINDS[kind](stepsize=LR)
    ref = RefOptimizer(kind, constant_rates(LR))
    model = ForgetfulModel(params)
    held, snapshots = [], []
    for step, g in enumerate(gs):
        opt.update_lr()
        ref.update_lr()
        opt.update(model, g)
        want = ref.step(g)
        for got, w in zip(flatten(opt.delta), want):
            assert np.array_equal(got, w)
        keep = {0: opt.delta, 1: opt.delta[1], 2: opt.delta[0][1000:5000]}.get(step)
        if keep is not None:
            held.append(keep)
            snapshots.append([np.array(x, copy=True) for x in flatten(keep)])
    for keep, snap in zip(held, snapshots):
        for now, then in zip(flatten(keep), snap):
            assert np.array_equal(now, then)


def test_buffers_alternate_when_nothing_holds_them(rng):
    """Step k's arena is still optimizer.delta while step k+1 allocates, so two buffers take
    turns: the delta of step 3 lies where the delta of step 1 did, step 4 where step 2's did."""
    gs = grads(rng, 6)
    opt = optimizers.ADAM(stepsize=LR)
    model = ForgetfulModel([np.zeros(N32, np.float32), np.zeros(N64)])
    seen = []
    for g in gs:
        opt.update(model, g)
        seen.append((address(opt.delta[0]), address(opt.delta[1])))
    arena = opt.delta[0].base
    assert type(arena.base).__name__ == "PyCapsule"  # the buffer goes back to the pool, not to malloc
    assert seen[0] != seen[1]
    assert seen[2] == seen[0] and seen[4] == seen[0]
    assert seen[3] == seen[1] and seen[5] == seen[1]


def test_a_held_delta_is_not_reused(rng):
    """Hold step 1's delta (as a caller may): its buffer never comes back, later steps take
    turns between two others, and the held values keep their bits."""
    gs = grads(rng, 5)
    opt = optimizers.Momentum(stepsize=LR)
    model = MockModel([np.zeros(N32, np.float32), np.zeros(N64)])  # keeps the latest delta too
    opt.update(model, gs[0])
    first = opt.delta
    first_copy = [np.array(x, copy=True) for x in first]
    later = []
    for g in gs[1:]:
        opt.update(model, g)
        later.append(address(opt.delta[0]))
    assert address(first[0]) not in later
    assert later[2] == later[0] and later[3] == later[1] and later[0] != later[1]
    assert all(np.array_equal(a, b) for a, b in zip(first, first_copy))


def test_small_deltas_are_plain_numpy_arrays(rng):
    """Below 1 MB the arena comes from NumPy's allocator: the arrays own their base as usual."""
    opt = optimizers.ADAM(stepsize=LR)
    g = [rng.standard_normal(1000).astype(np.float32)]
    opt.update(ForgetfulModel([np.zeros(1000, np.float32)]), g)
    base = opt.delta[0].base
    assert isinstance(base, np.ndarray) and base.flags.owndata
