"""Property tests of fusedopt.optim over trees, shapes, dtypes and options: bits
equal the NumPy reference; a bad leaf anywhere changes nothing."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fusedopt import optim
from optim_cases import CASES
from optim_reference import Reference

shapes = st.lists(st.integers(0, 40), min_size=0, max_size=3).map(tuple)
leaves = st.tuples(shapes, st.sampled_from([np.float32, np.float64]))
trees = st.recursive(leaves, lambda kids: st.lists(kids, min_size=1, max_size=3)
                     | st.dictionaries(st.sampled_from("xyz"), kids, min_size=1, max_size=3), max_leaves=6)


def _build(spec, rng):
    if isinstance(spec, list):
        return [_build(s, rng) for s in spec]
    if isinstance(spec, dict):
        return {k: _build(v, rng) for k, v in spec.items()}
    shape, dtype = spec
    return rng.standard_normal(shape).astype(dtype)


def _flat(tree):
    if isinstance(tree, list):
        return [x for t in tree for x in _flat(t)]
    if isinstance(tree, dict):
        return [x for t in tree.values() for x in _flat(t)]
    return [tree]


@st.composite
def cases(draw):
    kind, hyper = draw(st.sampled_from(CASES))
    return kind, hyper, draw(trees), draw(st.integers(0, 2**32 - 1)), draw(st.sampled_from([None, 1.0]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_any_tree_matches_the_reference(case):
    kind, hyper, spec, seed, clip = case
    rng = np.random.default_rng(seed)
    params = _build(spec, rng)
    ref_params = [p.copy() for p in _flat(params)]
    opt = getattr(optim, kind)(lr=0.05, max_grad_norm=clip, **hyper)
    ref = Reference(kind, lr=0.05, max_grad_norm=clip, **hyper)
    for _ in range(3):
        grads = _build(spec, rng)
        opt.step(params, grads)
        ref.step(ref_params, _flat(grads), norm=opt.last_grad_norm)
    for a, b in zip(_flat(params), ref_params):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))


@settings(max_examples=40, deadline=None)
@given(cases(), st.data())
def test_a_bad_leaf_anywhere_changes_nothing(case, data):
    kind, hyper, spec, seed, clip = case
    rng = np.random.default_rng(seed)
    params = _build(spec, rng)
    opt = getattr(optim, kind)(lr=0.05, max_grad_norm=clip, **hyper)
    opt.step(params, _build(spec, rng))
    before = [p.copy() for p in _flat(params)]
    state = {k: [np.array(x, copy=True) for x in _flat(v)] for k, v in opt.state_arrays().items()}
    grads = _build(spec, rng)
    flat = _flat(grads)
    i = data.draw(st.integers(0, len(flat) - 1))
    bad = flat[i].astype(np.float32 if flat[i].dtype == np.float64 else np.float64)
    flat[i][...] = 0  # mark, then swap the leaf for one of the wrong dtype

    def swap(tree):
        if isinstance(tree, list):
            return [swap(t) for t in tree]
        if isinstance(tree, dict):
            return {k: swap(v) for k, v in tree.items()}
        return bad if tree is flat[i] else tree
    with pytest.raises(TypeError, match="grads"):
        opt.step(params, swap(grads))
    for a, b in zip(_flat(params), before):
        np.testing.assert_array_equal(a, b)
    for k, leaves in opt.state_arrays().items():
        for a, b in zip(_flat(leaves), state[k]):
            np.testing.assert_array_equal(a, b)
    assert opt.step_count == 1
