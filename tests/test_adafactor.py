"""fusedopt.optim.Adafactor: the whole step bit for bit against the NumPy
reference in the documented order (adafactor_reference.py) at every SIMD
level (switched in process, and chosen by FUSEDOPT_SIMD in a fresh
interpreter) and thread count; state dicts resume exactly; bad input and
shared memory refused with nothing changed."""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fusedopt
from fusedopt import _core, optim
import adafactor_reference as ref

# A matrix, a vector, a 0-d scalar, a 3-d block; a matrix of more than 64
# rows (two blocks of column sums) and a vector of several runs: together
# above the size at which a step uses the thread team.
SHAPES = [(3, 5), (7,), (), (2, 3, 4), (300, 40), (5000,), (130, 70), (1, 1), (4, 1, 9)]
OPTIONS = [
    {},
    {"weight_decay": 0.1, "maximize": True, "lr": 0.05},
    {"maximize": True},  # each of the passes' four branches (decay, maximize)
    {"weight_decay": 0.1},
    {"eps": (1e-3, 1e-2), "d": 1.5, "beta2_decay": -1.0},
    {"eps": (0.0, 0.0), "lr": 0.0},
]


def tree(rng, dtype, shapes=SHAPES):
    return [np.asarray(rng.standard_normal(s) * 2, dtype=dtype) for s in shapes]


def reference_run(p0, grads, steps, **kw):
    ps, states = [p.copy() for p in p0], [{} for _ in p0]
    for t in range(1, steps + 1):
        for i in range(len(ps)):
            ps[i], states[i] = ref.step(ps[i], grads[t - 1][i], states[i], t, eps1_dtype=p0[0].dtype, **kw)
    return ps, states


def fused_run(p0, grads, steps, **kw):
    ps = [p.copy() for p in p0]
    opt = optim.Adafactor(**kw)
    for t in range(steps):
        opt.step(ps, grads[t])
    return ps, opt


def assert_state_bits(opt, states):
    arrays = opt.state_arrays()
    for i, s in enumerate(states):
        for slot, a in s.items():
            assert arrays[slot][f"[{i}]"].tobytes() == a.tobytes(), (i, slot)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", OPTIONS, ids=str)
def test_bit_for_bit_at_every_level_and_thread_count(dtype, kw, rng, restore_simd_level, restore_num_threads):
    p0 = tree(rng, dtype)
    grads = [tree(rng, dtype) for _ in range(3)]
    want, states = reference_run(p0, grads, 3, **kw)
    for level in _core.simd_levels_supported():
        _core._set_simd_level(level)
        for threads in (1, 2, 3):
            fusedopt.set_num_threads(threads)
            got, opt = fused_run(p0, grads, 3, **kw)
            for a, b in zip(got, want):
                assert a.tobytes() == b.tobytes(), (level, threads, a.shape)
            assert_state_bits(opt, states)
            assert opt.step_count == 3


@settings(max_examples=25, deadline=None)
@given(shapes=st.lists(st.lists(st.integers(1, 70), min_size=0, max_size=3).map(tuple), min_size=1, max_size=4),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**31), maximize=st.booleans(),
       wd=st.sampled_from([0.0, 0.3]))
def test_bit_for_bit_on_random_trees(shapes, dtype, seed, maximize, wd):
    rng = np.random.default_rng(seed)
    p0 = tree(rng, dtype, shapes)
    grads = [tree(rng, dtype, shapes) for _ in range(2)]
    want, states = reference_run(p0, grads, 2, maximize=maximize, weight_decay=wd)
    got, opt = fused_run(p0, grads, 2, maximize=maximize, weight_decay=wd)
    for a, b in zip(got, want):
        assert a.tobytes() == b.tobytes()
    assert_state_bits(opt, states)


_CHILD = """
import hashlib, numpy as np
from fusedopt import optim
rng = np.random.default_rng(5)
ps = [np.asarray(rng.standard_normal(s), np.float32) for s in [(300, 40), (5000,), (2, 3, 4)]]
opt = optim.Adafactor(weight_decay=0.1)
for _ in range(3):
    opt.step(ps, [np.asarray(rng.standard_normal(p.shape), np.float32) for p in ps])
print(hashlib.sha256(b"".join(p.tobytes() for p in ps)).hexdigest())
"""


def test_same_bits_under_every_fusedopt_simd_value():
    """FUSEDOPT_SIMD chooses the level at import, in a fresh interpreter."""
    digests = set()
    for level in _core.simd_levels_supported():
        env = dict(os.environ, FUSEDOPT_SIMD=level, OMP_NUM_THREADS="2")
        out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def test_column_sums_use_blocks_of_rows(rng):
    """The block size matters to the bits: a matrix of 200 rows (4 blocks of 64)."""
    assert ref.column_sums(np.ones((1, 200, 3))).tolist() == [[200.0] * 3]
    p0 = tree(rng, np.float32, [(200, 3)])
    grads = [tree(rng, np.float32, [(200, 3)])]
    want, states = reference_run(p0, grads, 1)
    got, opt = fused_run(p0, grads, 1)
    assert got[0].tobytes() == want[0].tobytes()
    assert_state_bits(opt, states)


def test_state_dict_resumes_exactly(rng):
    p0 = {"w": rng.standard_normal((6, 3)), "b": rng.standard_normal(3), "k": rng.standard_normal((2, 3, 4))}
    grads = [{k: rng.standard_normal(v.shape) for k, v in p0.items()} for _ in range(5)]
    full = {k: v.copy() for k, v in p0.items()}
    o = optim.Adafactor(weight_decay=0.1)
    for g in grads:
        o.step(full, g)
    part = {k: v.copy() for k, v in p0.items()}
    o = optim.Adafactor(weight_decay=0.1)
    for g in grads[:2]:
        o.step(part, g)
    saved = o.state_dict()
    o2 = optim.Adafactor()
    o2.load_state_dict(saved)
    saved["state"]["['w']"]["row_var"][:] = 7.0  # a copy: the loaded state is its own
    for g in grads[2:]:
        o2.step(part, g)
    for k in p0:
        assert part[k].tobytes() == full[k].tobytes()
    assert o2.step_count == 5 and set(o2.state_arrays()) == {"row_var", "col_var", "variance"}


@pytest.mark.parametrize("kw,error,match", [
    (dict(lr=-1.0), ValueError, "Learning rate should be >= 0 but is: -1.0"),
    (dict(lr="x"), TypeError, "lr must be a real number"),
    (dict(beta2_decay=0.8), ValueError, "beta2_decay should be <= 0 but is: 0.8"),
    (dict(eps=(-1e-30, 1e-3)), ValueError, "epsilon1 should be >= 0"),
    (dict(eps=(None, -1.0)), ValueError, "epsilon2 should be >= 0"),
    (dict(eps=1e-3), TypeError, "eps must be a pair"),
    (dict(d=0.5), ValueError, "Clipping threshold d should be >= 1 but is: 0.5"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay should be >= 0"),
    (dict(maximize=1), TypeError, "maximize must be a bool"),
])
def test_bad_arguments(kw, error, match):
    with pytest.raises(error, match=match):
        optim.Adafactor(**kw)
    o = optim.Adafactor()
    name, value = next(iter(kw.items()))
    with pytest.raises(error, match=match):
        setattr(o, name, value)
    assert o.lr == 1e-2 and o.eps == (None, 1e-3)


def _snapshot(params, opt):
    return [p.copy() for p in params], {k: {p: a.copy() for p, a in v.items()} for k, v in opt.state_arrays().items()}


def _same(a, b):
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a[0], b[0]))
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        assert all(a[1][k][p].tobytes() == b[1][k][p].tobytes() for p in a[1][k])


@pytest.mark.parametrize("bad,error,match", [
    (lambda ps, gs: (ps, gs[:2]), ValueError, "grads must have the parameters' structure"),
    (lambda ps, gs: (ps, [gs[0], gs[1].astype(np.float32), gs[2]]), TypeError,
     r"grads at \[1\]: expected a float64 array of shape \(4,\), got float32"),
    (lambda ps, gs: ([ps[0], ps[1][::2], ps[2]], gs), ValueError, r"params at \[1\]: expected a writeable"),
    (lambda ps, gs: ([ps[0], ps[1].astype(np.int64), ps[2]], gs), TypeError, r"params at \[1\]: expected a float32"),
    (lambda ps, gs: ([ps[0], np.zeros((0, 3)), ps[2]], [gs[0], np.zeros((0, 3)), gs[2]]), ValueError,
     r"params at \[1\]: Adafactor needs at least one element"),
    (lambda ps, gs: ([ps[0], ps[1], ps[2].reshape(6, 2)], [gs[0], gs[1], gs[2].reshape(6, 2)]), ValueError,
     r"params at \[2\]: the state's row_var is float64 of shape \(3, 1\), expected float64 of shape \(6, 1\)"),
    (lambda ps, gs: ([ps[0], ps[2].reshape(-1)[:4], ps[2]], gs), ValueError,
     r"params\[1\] and adafactor_step: params\[2\] must not share memory"),
])
def test_bad_input_changes_nothing(bad, error, match, rng):
    ps = [rng.standard_normal(s) for s in [(2, 3), (4,), (3, 4)]]
    gs = [rng.standard_normal(p.shape) for p in ps]
    o = optim.Adafactor()
    o.step(ps, gs)
    before = _snapshot(ps, o)
    with pytest.raises(error, match=match):
        o.step(*bad(ps, gs))
    _same(before, _snapshot(ps, o))
    assert o.step_count == 1


def test_state_arrays_as_params_are_refused(rng):
    ps = [rng.standard_normal(5)]
    o = optim.Adafactor()
    o.step(ps, [rng.standard_normal(5)])
    var = o.state_arrays()["variance"]["[0]"]
    before = var.copy()
    with pytest.raises(ValueError, match=r"params\[0\] must not share memory with adafactor_step: old_vars\[0\]"):
        o.step([var], [np.ones_like(var)])
    assert var.tobytes() == before.tobytes() and o.step_count == 1


def test_a_gradient_sharing_memory_with_a_parameter_is_read_as_a_copy(rng):
    """docs/aliasing.md: numpy's meaning, p - f(g.copy())."""
    base = rng.standard_normal(10)
    p, g = base[:6], base[4:]
    p2, g2 = p.copy(), g.copy()
    optim.Adafactor(weight_decay=0.1).step([p], [g])
    optim.Adafactor(weight_decay=0.1).step([p2], [g2])
    assert p.tobytes() == p2.tobytes()


def test_bad_state_dicts_change_nothing(rng):
    o = optim.Adafactor()
    ps = [rng.standard_normal((2, 3))]
    o.step(ps, [rng.standard_normal((2, 3))])
    good = o.state_dict()
    for broken, match in [
        (dict(good, step=-1), "step must be an int >= 0"),
        (dict(good, step=1.5), "step must be an int >= 0"),
        (dict(good, version=2), "expected a version 1 Adafactor"),
        (dict(good, state={"[0]": {"row_var": np.zeros((2, 1))}}), "expected {'row_var', 'col_var'}"),
        (dict(good, state={"[0]": {"variance": np.zeros(3, np.int32)}}), r"\(variance\): expected a float32"),
        (dict(good, hyper=dict(good["hyper"], d=0.0)), "Clipping threshold"),
    ]:
        with pytest.raises(ValueError, match=match):
            o.load_state_dict(broken)
        assert o.step_count == 1 and o.state_arrays()["row_var"]["[0]"].tobytes() == \
            good["state"]["[0]"]["row_var"].tobytes()
