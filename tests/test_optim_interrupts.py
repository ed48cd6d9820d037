"""fusedopt.optim's Adafactor and Muon (the classes that keep their state in
Python) under exceptions from a signal handler (docs/optim.md, "Interrupts"):
a KeyboardInterrupt raised at a random point of a step leaves the optimizer,
at the next look at it, fully before or fully after the step: parameters,
state and step count. A timer interrupts steps of many small leaves; after
each one the optimizer must equal, bit for bit, an uninterrupted twin either
as it is or after the twin takes the same step."""
import gc
import pickle
import signal
import time

import numpy as np
import pytest

from fusedopt import optim
from fusedopt.optim import _commit

pytestmark = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")


def _adafactor_tree(seed):
    """Matrices, vectors, 3-d arrays and a scalar in a dict of lists (factored and full slots)."""
    rng = np.random.default_rng(seed)
    shapes = [(4, 3), (5,), (2, 3, 2)] * 40
    return {"w": [rng.standard_normal(s) for s in shapes],
            "b": [rng.standard_normal(s) for s in [(3, 3), (7,), ()] * 5]}


def _muon_tree(seed):
    """Tall and wide matrices (the tall ones orthogonalised transposed)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in [(6, 4), (3, 5)] * 8]


CASES = {"Adafactor": (optim.Adafactor, _adafactor_tree, {"lr": 1e-2, "weight_decay": 0.1}),
         "Muon": (optim.Muon, _muon_tree, {"lr": 1e-2})}


def _leaves(tree):
    return list(tree["w"]) + list(tree["b"]) if isinstance(tree, dict) else list(tree)


def _grads(params, seed):
    rng = np.random.default_rng(seed)
    if isinstance(params, dict):
        return {k: [rng.standard_normal(p.shape).astype(p.dtype) for p in v] for k, v in params.items()}
    return [rng.standard_normal(p.shape).astype(p.dtype) for p in params]


def _arrays(value):
    """Every array of a state dict (nested dicts), in order."""
    if isinstance(value, dict):
        return [a for k in value for a in _arrays(value[k])]
    return [value] if isinstance(value, np.ndarray) else []


def _snapshot(opt, params):
    """What a look at the optimizer shows: its state dict (every state array, the step count)
    and the parameters, as copies."""
    saved = opt.state_dict()
    scalars = {k: v for k, v in saved.items() if not isinstance(v, dict) or k == "hyper"}
    return repr(scalars), _arrays(saved), [p.copy() for p in _leaves(params)]


def _same(a, b):
    (sa, xa, pa), (sb, xb, pb) = a, b
    return sa == sb and len(xa) == len(xb) and len(pa) == len(pb) and all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
        for x, y in zip(xa + pa, xb + pb))


def _step_time(cls, make, hyper):
    """A step's duration (the median of a few, on a scratch optimizer)."""
    opt, params = cls(**hyper), make(0)
    times = []
    for k in range(7):
        grads = _grads(params, k)
        t0 = time.perf_counter()
        opt.step(params, grads)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_interrupted_step_is_all_done_or_not_begun(name):
    cls, make, hyper = CASES[name]
    opt, twin = cls(**hyper), cls(**hyper)
    ours, theirs = make(1), make(1)
    rng = np.random.default_rng(3)
    # Even steps: log-uniform delays from 2 µs to 20 steps (early hits, whole steps); odd ones
    # near the end of a step, as long as the twin's last step took (hits in the commit).
    step_time = _step_time(cls, make, hyper)
    delays = np.exp(rng.uniform(np.log(2e-6), np.log(20 * step_time), size=300))
    near_end = rng.uniform(0.85, 1.1, size=300)
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
            grads = _grads(ours, 100 + k)
            hit = False
            try:
                armed[0] = True
                signal.setitimer(signal.ITIMER_REAL, step_time * near_end[k] if k % 2 else delay)
                opt.step(ours, grads)
                armed[0] = False
            except KeyboardInterrupt:
                hit = True
            armed[0] = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            seen = _snapshot(opt, ours)
            stepped = not _same(seen, _snapshot(twin, theirs))
            if stepped:
                t0 = time.perf_counter()
                twin.step(theirs, grads)
                step_time = time.perf_counter() - t0
                assert _same(seen, _snapshot(twin, theirs)), f"step {k}: half a step (interrupted: {hit})"
            outcomes[hit, stepped] += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        gc.enable()
    # The timer hit steps before their native call (not stepped) and after it (the commit completed).
    assert outcomes[True, False] > 0 and outcomes[True, True] > 0 and outcomes[False, True] > 0, outcomes
    assert _same(_snapshot(opt, ours), _snapshot(twin, theirs))


LOOKS = {"step": lambda o, ps: o.step(ps, _grads(ps, 9)),
         "state_dict": lambda o, ps: o.state_dict(),
         "state_arrays": lambda o, ps: o.state_arrays(),
         "pickle": lambda o, ps: pickle.loads(pickle.dumps(o)),
         "load_state_dict": lambda o, ps: o.load_state_dict(o.state_dict())}


@pytest.mark.parametrize("look", sorted(LOOKS))
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_commit_cut_short_shows_at_the_next_look(name, look, monkeypatch):
    """An exception right after the native call (as a signal handler may raise there):
    the step happened, so the next look at the optimizer (any of LOOKS) shows all of it;
    one raised just before the call leaves everything as it was. The checked first
    step and the planned steps after it (Adafactor's) alike."""
    cls, make, hyper = CASES[name]
    for cut in (1, 3):
        for after in (True, False):
            opt, twin = cls(**hyper), cls(**hyper)
            ours, theirs = make(2), make(2)
            for k in range(cut - 1):
                opt.step(ours, _grads(ours, k))
                twin.step(theirs, _grads(theirs, k))
            real = _commit.PendingCommit._commit

            def cut_short(self, pending, native):
                self._pending = pending
                if after:
                    native(pending.mark)
                raise KeyboardInterrupt

            monkeypatch.setattr(_commit.PendingCommit, "_commit", cut_short)
            with pytest.raises(KeyboardInterrupt):
                opt.step(ours, _grads(ours, 7))
            monkeypatch.setattr(_commit.PendingCommit, "_commit", real)
            if after:
                twin.step(theirs, _grads(theirs, 7))
            assert opt._pending is not None
            got = LOOKS[look](opt, ours)
            assert opt._pending is None
            if look == "pickle":
                assert _same(_snapshot(got, ours), _snapshot(twin, theirs))
            if look == "step":
                twin.step(theirs, _grads(theirs, 9))
            assert _same(_snapshot(opt, ours), _snapshot(twin, theirs))
            opt.step(ours, _grads(ours, 8))  # and the steps go on as the twin's
            twin.step(theirs, _grads(theirs, 8))
            assert _same(_snapshot(opt, ours), _snapshot(twin, theirs))
