"""An exception from a signal handler (KeyboardInterrupt, or any other) during a
loop of steps leaves every optimizer consistent: parameters, moments, step_count,
delta and the convergence sums are all as before the interrupted step or all as
after it (docs/threads.md). A repeating timer raises in the
middle of steps at random points; after the loop, a NumPy replay of exactly the
steps that were counted must give the same bits."""
import gc
import math
import signal

import numpy as np
import pytest

from fusedopt import schedules

import reference as ref
from paysage_cases import CLASSES

pytestmark = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")


class Interrupt(Exception):
    pass


class Model:
    """A paysage-like model whose parameter_update commits with one attribute store
    (the new parameters and the count of deltas together), so an exception raised in
    it leaves the model as it was, as the optimizer's own step does."""

    def __init__(self, params):
        self.state = ([p.copy() for p in params], 0, None)

    @property
    def params(self):
        return self.state[0]

    def parameter_update(self, delta):
        params, count, _ = self.state
        self.state = ([p - d for p, d in zip(params, delta)], count + 1, delta)


KINDS = CLASSES


def interrupted_loop(opt, target, grads, model, rng):
    """Steps through `grads` under a timer that raises now and then; returns the
    gradients of the steps that counted and how many steps were interrupted."""
    armed = [False]

    def handler(signum, frame):
        if armed[0]:
            armed[0] = False  # at most one exception per step
            raise Interrupt

    previous = signal.signal(signal.SIGALRM, handler)
    # No collection during the loop: a signal handled inside a gc callback (hypothesis
    # installs one) raises where Python cannot propagate it (an unraisable exception),
    # not in the step.
    gc.disable()
    counted, interrupted = [], 0
    delays = rng.uniform(1e-6, 1e-4, size=len(grads))  # some steps end first, others get hit
    try:
        for g, delay in zip(grads, delays):
            before = opt.step_count
            received = None if model is None else model.state[1]
            try:
                armed[0] = True
                signal.setitimer(signal.ITIMER_REAL, delay)
                opt.update(target, g)
                armed[0] = False
            except Interrupt:
                interrupted += 1
            armed[0] = False
            assert opt.step_count in (before, before + 1)
            if opt.step_count == before + 1:
                counted.append(g)
            if model is not None:  # the model got the delta exactly when the step counted
                assert model.state[1] == received + (opt.step_count - before)
                assert model.state[2] is opt.delta
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        gc.enable()
    return counted, interrupted


def run_and_replay(kind, path, rng, trials=3, steps=300):
    shapes = [(300,), (17, 3)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(steps)]
    opt = KINDS[kind](schedules.Constant(initial=0.01), keep_delta=True)
    model = Model(params) if path == "paysage" else None
    target = model if model is not None else [p.copy() for p in params]
    counted, interrupted = [], 0
    for _ in range(trials):
        c, i = interrupted_loop(opt, target, grads, model, rng)
        counted += c
        interrupted += i
    reference = ref.RefOptimizer(kind, iter(()), unstepped_value=0.01)
    replay = [np.array(p, copy=True) for p in params]
    deltas = None
    for g in counted:
        deltas = reference.step(g)
        replay = ref.apply(replay, deltas)
    return opt, model, target, replay, reference, deltas, len(counted), interrupted


@pytest.mark.parametrize("path", ["inplace", "paysage"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_an_exception_from_a_signal_handler_never_leaves_a_half_step(kind, path, rng):
    opt, model, target, replay, reference, deltas, counted, interrupted = run_and_replay(kind, path, rng)
    assert interrupted > 0, "the timer never interrupted a step: the test tested nothing"
    assert counted > 0, "every step was interrupted: the test tested nothing"
    assert opt.step_count == counted
    stepped = model.params if model is not None else target
    ref.assert_leaves_equal(stepped, replay, "param")
    ref.assert_leaves_equal(opt.delta, deltas, "delta")
    if model is not None:
        assert model.state[1] == counted
    mem = opt._memory
    for ours, theirs in ((mem.mean_gradient, reference.memory.mean),
                         (mem.mean_square_gradient, reference.memory.mean_square)):
        if kind == "gradient" or theirs is None:
            assert ours is None
        else:
            ref.assert_leaves_equal(ours, theirs, "moment")
    # The convergence sums are those of the last counted step's delta.
    n = len(deltas)
    expected = np.sqrt(sum(float(np.mean(np.square(d.astype(np.float64)))) for d in deltas) / n)
    sizes = np.array(mem._plan.leaf_sizes, dtype=np.float64)
    got = np.sqrt(float(np.sum(mem._sumsq / sizes)) / n)
    assert got == pytest.approx(expected, rel=1e-5)
    if path == "inplace":  # check_convergence reads those sums
        opt.tolerance = got * (1 + 1e-9)
        assert opt.check_convergence()
        return
    # On the paysage path it evaluates paysage's expression on the kept delta instead
    # (docs/semantics-convergence.md): float32 means added from 0, over the leaf count.
    total = 0
    for d in deltas:
        total += np.mean(np.square(d))
    value = math.sqrt(total / n)
    opt.tolerance = value
    assert opt.check_convergence()
    opt.tolerance = math.nextafter(value, 0)
    assert not opt.check_convergence()
