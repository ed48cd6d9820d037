"""fusedopt.optim's Adafactor and Muon (the classes that keep their state in
Python) under exceptions from a signal handler (docs/optim.md, "Interrupts"):
a KeyboardInterrupt raised at a random point of a step leaves the optimizer,
at the next look at it, fully before or fully after the step: parameters,
state and step count. A timer interrupts steps of many small leaves; after
each one the optimizer must equal, bit for bit, an uninterrupted twin either
as it is or after the twin takes the same step."""
import pickle
import signal

import numpy as np
import pytest

import fusedopt
from fusedopt import optim
from interrupt_twin import cut_short_step, interrupted_steps, step_time

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


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_interrupted_step_is_all_done_or_not_begun(name):
    cls, make, hyper = CASES[name]
    opt, twin = cls(**hyper), cls(**hyper)
    ours, theirs = make(1), make(1)
    scratch, scratch_params = cls(**hyper), make(0)
    grads = {}

    def step(k):
        grads[k] = _grads(ours, 100 + k)
        opt.step(ours, grads[k])

    # The timer must hit steps before their native call (not stepped) and after it (the commit
    # completed); the window after the call is a few µs, so on a loaded machine (timer jitter)
    # a few more rounds of 300 steps may be needed to land in it.
    total = {}
    with fusedopt.thread_limits(blas=1):  # steady step times (Muon's products)
        for seed in range(3, 9):
            outcomes = interrupted_steps(step, lambda k: twin.step(theirs, grads[k]),
                                         lambda: (_snapshot(opt, ours), _snapshot(twin, theirs)), _same,
                                         step_time(lambda k: scratch.step(scratch_params, _grads(scratch_params, k))),
                                         seed=seed)
            total = {k: total.get(k, 0) + v for k, v in outcomes.items()}
            if total[True, False] > 0 and total[True, True] > 0 and total[False, True] > 0:
                break
    assert total[True, False] > 0 and total[True, True] > 0 and total[False, True] > 0, total
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
            cut_short_step(monkeypatch, lambda: opt.step(ours, _grads(ours, 7)), after)
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
