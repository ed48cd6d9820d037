"""The timer loop of the interrupt tests of the classes that commit in Python
(test_torch_interrupts.py, test_optim_interrupts.py): steps under SIGALRM at
random points, each compared bit for bit with an uninterrupted twin, and a
commit cut short."""
import gc
import signal
import time

import numpy as np
import pytest

from fusedopt.optim import _commit


def interrupted_steps(step, twin_step, snapshots, same, step_time, steps=300, seed=3):
    """`step(k)` steps ours, `twin_step(k)` the twin, `snapshots()` gives (ours, twin's)
    looks, `same(a, b)` compares two. After each step (interrupted or not) ours must
    equal the twin as it is, or after the twin's same step. Even steps: log-uniform
    delays from 2 µs to 20 steps (early hits, whole steps); odd ones near the end of a
    step, as long as the twin's last step took (hits in the commit). Returns the count
    of steps per (interrupted, stepped)."""
    rng = np.random.default_rng(seed)
    delays = np.exp(rng.uniform(np.log(2e-6), np.log(20 * step_time), size=steps))
    near_end = rng.uniform(0.85, 1.1, size=steps)
    armed = [False]

    def handler(signum, frame):
        if armed[0]:
            armed[0] = False
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, handler)
    gc.disable()  # a signal handled in a gc callback is unraisable, not raised in the step
    outcomes = {(hit, stepped): 0 for hit in (False, True) for stepped in (False, True)}
    try:
        for k, delay in enumerate(delays):
            hit = False
            try:
                armed[0] = True
                signal.setitimer(signal.ITIMER_REAL, step_time * near_end[k] if k % 2 else delay)
                step(k)
                armed[0] = False
            except KeyboardInterrupt:
                hit = True
            armed[0] = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            ours, theirs = snapshots()
            stepped = not same(ours, theirs)
            if stepped:
                t0 = time.perf_counter()
                twin_step(k)
                step_time = time.perf_counter() - t0
                assert same(ours, snapshots()[1]), f"step {k}: half a step (interrupted: {hit})"
            outcomes[hit, stepped] += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        gc.enable()
    return outcomes


def step_time(step, repeats=7):
    """A step's duration: the median of a few `step(k)`."""
    times = []
    for k in range(repeats):
        t0 = time.perf_counter()
        step(k)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def cut_short_step(monkeypatch, step, after):
    """`step()` with the commit cut short by a KeyboardInterrupt right after the native
    call (`after`) or right before it, the pending commit stored (as a signal handler
    may raise there)."""
    def cut_short(self, pending, native):
        self._pending = pending
        if after:
            native(pending.mark)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(_commit.PendingCommit, "_commit", cut_short)
        with pytest.raises(KeyboardInterrupt):
            step()
