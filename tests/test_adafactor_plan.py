"""fusedopt.optim.Adafactor's plan (docs/optim.md, "Adafactor"): after a
checked step, the steps of the same tree walk it natively and write the
spare state set. Random runs that change what the plan keys on (new array
objects, another container class, reassigned hyper-parameters, a
non-contiguous gradient, reset, load_state_dict, pickling, refused input)
give, step by step, the bits of the NumPy reference in the documented order
(adafactor_reference.py), and a refusal after planned steps names the leaf
and changes nothing."""
import pickle

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fusedopt import optim
import adafactor_reference as ref

SHAPES = [(3, 5), (7,), (), (2, 3, 4), (70, 3)]
OPS = ["same", "fresh", "tuple", "lr", "strided_grad", "reset", "reload", "pickle", "bad_dtype", "bad_shape"]


class Reference:
    """The reference's parameters, per-leaf state and hyper-parameters."""

    def __init__(self, params):
        self.params = [p.copy() for p in params]
        self.states = [{} for _ in params]
        self.t = 0
        self.kw = {"weight_decay": 0.1}

    def step(self, grads):
        self.t += 1
        for i, g in enumerate(grads):
            self.params[i], self.states[i] = ref.step(self.params[i], g, self.states[i], self.t,
                                                      eps1_dtype=self.params[0].dtype, **self.kw)


def _check(opt, params, want):
    assert opt.step_count == want.t
    for p, q in zip(params, want.params):
        assert p.tobytes() == q.tobytes()
    arrays = opt.state_arrays()
    for i, s in enumerate(want.states):
        for slot, a in s.items():
            assert arrays[slot][f"[{i}]"].tobytes() == a.tobytes(), (i, slot)


@settings(max_examples=30, deadline=None)
@given(ops=st.lists(st.sampled_from(OPS), min_size=1, max_size=12), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**31))
def test_planned_steps_have_the_reference_bits(ops, dtype, seed):
    rng = np.random.default_rng(seed)
    params = [np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
    want = Reference(params)
    opt = optim.Adafactor(weight_decay=0.1)
    for op in ["same"] + ops + ["same", "same"]:
        grads = [np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
        if op == "reset":
            opt.reset()
            want.states, want.t = [{} for _ in SHAPES], 0
        elif op == "reload":
            fresh = optim.Adafactor()
            fresh.load_state_dict(opt.state_dict())
            opt = fresh
        elif op == "pickle":
            opt = pickle.loads(pickle.dumps(opt))
        elif op == "lr":
            opt.lr = want.kw["lr"] = float(rng.uniform(1e-3, 1e-1))
        elif op in ("bad_dtype", "bad_shape"):
            bad = list(grads)
            bad[3] = bad[3].astype(np.float16) if op == "bad_dtype" else bad[3].reshape(6, 4)
            before = [p.copy() for p in params]
            with pytest.raises(TypeError, match=r"grads at \[3\]: expected a float(32|64) array of shape \(2, 3, 4\)"):
                opt.step(params, bad)
            assert all(p.tobytes() == q.tobytes() for p, q in zip(params, before))
            _check(opt, params, want)
            continue
        if op == "fresh":  # new arrays of the same values: the plan keys on the structure, not the objects
            params = [p.copy() for p in params]
        tree_p, tree_g = (tuple(params), tuple(grads)) if op == "tuple" else (params, grads)
        if op == "strided_grad":  # non-contiguous: refused natively, copied by the checked step
            tree_g = [np.asfortranarray(g) if g.ndim > 1 else g for g in grads]
        opt.step(tree_p, tree_g)
        want.step(grads)
        _check(opt, params, want)


def test_the_state_sets_are_used_in_turn(rng):
    """No step after the first two allocates state: the arrays of step t are written
    again at step t + 2 (and the checked step reuses the spare set)."""
    ps = [rng.standard_normal(s) for s in SHAPES]
    opt = optim.Adafactor()
    seen = []
    for k in range(5):
        opt.step(ps, [rng.standard_normal(s) for s in SHAPES])
        seen.append({(slot, path): id(a) for slot, v in opt.state_arrays().items() for path, a in v.items()})
        if k == 2:  # a checked step (another container class) keeps the sets
            opt.step(tuple(ps), tuple(rng.standard_normal(s) for s in SHAPES))
            seen.append({(slot, path): id(a) for slot, v in opt.state_arrays().items() for path, a in v.items()})
    assert seen[0] != seen[1] and not set(seen[0].values()) & set(seen[1].values())
    assert [seen[k % 2] for k in range(len(seen))] == seen


@pytest.mark.parametrize("where", ["params", "grads"])
def test_a_read_only_leaf_after_planned_steps_is_named(where, rng):
    ps = [rng.standard_normal(s) for s in SHAPES]
    opt = optim.Adafactor()
    for _ in range(3):
        opt.step(ps, [rng.standard_normal(s) for s in SHAPES])
    gs = [rng.standard_normal(s) for s in SHAPES]
    if where == "params":
        ps[4].flags.writeable = False
        match = r"params at \[4\]: expected a writeable C-contiguous array"
    else:
        gs[4] = gs[4][:, :2]
        match = r"grads at \[4\]: expected a float64 array of shape \(70, 3\), got float64 of shape \(70, 2\)"
    before = [p.copy() for p in ps], opt.state_dict()
    with pytest.raises((TypeError, ValueError), match=match):
        opt.step(ps, gs)
    assert all(p.tobytes() == q.tobytes() for p, q in zip(ps, before[0])) and opt.step_count == 3
    after = opt.state_dict()["state"]
    assert all(after[k][s].tobytes() == v.tobytes() for k, e in before[1]["state"].items() for s, v in e.items())
