"""master_weights=True in fusedopt.optim (docs/lowbit.md, "Master weights"): the float32
master of every 16-bit leaf follows the float32 optimizer bit for bit (against fusedopt.optim
on float32 copies and the NumPy reference), the parameter is its master rounded, at every SIMD
level and thread count; resume; the master is the truth; bad input and overlaps."""
import io
import pickle

import numpy as np
import pytest

ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 leaves need ml_dtypes (pip install 'fusedopt[test]')")

from fusedopt import optim  # noqa: E402
from lowp_reference import BF16, F16, MasterReference, assert_bits, levels_and_thread_counts  # noqa: E402
from optim_cases import CASE_IDS, CASES  # noqa: E402

SIZES = [(1,), (15,), (17, 3), (130,), (2049,)]
BIG = (40000,)
LOW = (BF16, F16)


def _wide(leaves):
    """The float32 copies the float32 optimizer steps (float32/float64 leaves as they are)."""
    return [a.astype(np.float32) if a.dtype in LOW else a.copy() for a in leaves]


def _run(kind, hyper, dtypes, rng, steps=4, seed=None, clip=None, mask=None, sizes=SIZES):
    """Steps a mixed tree with master weights beside the float32 optimizer on float32 copies
    and the NumPy reference, checking every step."""
    params = [rng.standard_normal(s).astype(d) for s, d in zip(sizes, dtypes)]
    options = dict(lr=0.01, max_grad_norm=clip, weight_decay_mask=mask, **hyper)
    opt = getattr(optim, kind)(master_weights=True, stochastic_rounding=seed is not None, seed=seed or 0, **options)
    wide_opt = getattr(optim, kind)(**options)
    wide = _wide(params)
    ref = MasterReference(kind, 0.01, [], seed=seed, max_grad_norm=clip, mask=mask, **hyper)
    ref_params = [p.copy() for p in params]
    low = [i for i, d in enumerate(dtypes) if np.dtype(d) in LOW]
    for _ in range(steps):
        grads = [(rng.standard_normal(p.shape) * 3).astype(p.dtype) for p in params]
        opt.step(params, grads)
        wide_opt.step(wide, _wide(grads))
        ref.step(ref_params, grads, norm=opt.last_grad_norm)
        masters = opt.state_dict()
        masters = [masters[f"master.{i}"] for i in low]
        assert_bits(masters, [wide[i] for i in low])
        assert_bits(masters, [ref.masters[i] for i in low])
        assert_bits(params, ref_params)  # the 16-bit ones: their masters rounded
        assert_bits([p for i, p in enumerate(params) if i not in low], [w for i, w in enumerate(wide) if i not in low])
        for name, tree in opt.state_arrays().items():
            assert_bits(tree, wide_opt.state_arrays()[name])  # float32 slots for the 16-bit leaves
            assert_bits(tree, [s[name] for s in ref.ref.state])
    return params, opt


@pytest.mark.parametrize("kind,hyper", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("fmt", LOW, ids=str)
@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
def test_master_is_the_float32_trajectory(kind, hyper, fmt, stochastic, rng):
    """Every rule: the masters and slots are the float32 optimizer's bits on the same
    gradients, in a tree mixed with float32 and float64 leaves (unaffected, one native call)."""
    seed = int(rng.integers(2**64, dtype=np.uint64)) if stochastic else None
    _, opt = _run(kind, hyper, [fmt, np.float32, fmt, np.float64, fmt], rng, seed=seed)
    tree = opt.master_arrays()
    assert tree[1] is None and tree[3] is None and tree[0].dtype == np.float32


def test_nearest_is_ml_dtypes_conversion_of_the_master(rng):
    """The parameter is exactly ml_dtypes'/NumPy's conversion of the master, after every step."""
    params = [rng.standard_normal(3000).astype(BF16), rng.standard_normal(500).astype(F16)]
    opt = optim.Adam(lr=0.05, master_weights=True)
    for _ in range(6):
        opt.step(params, [rng.standard_normal(p.shape).astype(p.dtype) for p in params])
        for p, m in zip(params, opt.master_arrays()):
            np.testing.assert_array_equal(p.view(np.uint16), m.astype(p.dtype).view(np.uint16))


@pytest.mark.parametrize("kind,hyper", [("AdamW", {"weight_decay": 0.1}), ("SGD", {"momentum": 0.9}),
                                        ("Adagrad", {}), ("Lion", {"weight_decay": 0.1})])
@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
def test_same_bits_at_every_simd_level_and_thread_count(kind, hyper, stochastic, rng, restore_simd_level,
                                                        restore_num_threads):
    seed = int(rng.integers(2**63)) if stochastic else None
    dtypes = [BF16, F16, BF16, np.float32, F16, BF16]
    state = int(rng.integers(2**31))
    results = []
    for _ in levels_and_thread_counts():
        params, opt = _run(kind, hyper, dtypes, np.random.default_rng(state), steps=3, seed=seed, clip=1.0,
                           mask=[True, False] * 3, sizes=SIZES + [BIG])
        results.append(params + [m for m in opt.master_arrays() if m is not None])
    for other in results[1:]:
        assert_bits(other, results[0])


def test_updates_below_half_an_ulp_land_in_the_master():
    """SGD steps of a quarter ulp: lost by a 16-bit state, kept by the master, so the parameter
    moves once the master has moved far enough (the float32 trajectory, rounded)."""
    p, g = [np.full(1000, 1.5, BF16)], [np.ones(1000, BF16)]
    opt = optim.SGD(lr=2.0**-9, master_weights=True)
    for _ in range(8):
        opt.step(p, g)
    assert float(opt.master_arrays()[0][0]) == 1.5 - 8 * 2.0**-9
    assert float(p[0][0]) == 1.5 - 2 * 2.0**-7


# -- the master is the truth ----------------------------------------------------------------------
def test_a_write_to_the_parameter_is_overwritten_by_the_next_step(rng):
    """The step reads the master, never the 16-bit parameter: a write between steps changes
    nothing and is replaced by the master rounded; a write to the master is what counts."""
    p0 = [rng.standard_normal(700).astype(BF16)]
    grads = [[rng.standard_normal(700).astype(BF16)] for _ in range(3)]
    clean, written = [p0[0].copy()], [p0[0].copy()]
    a, b = optim.AdamW(lr=0.01, master_weights=True), optim.AdamW(lr=0.01, master_weights=True)
    for i, g in enumerate(grads):
        a.step(clean, g)
        if i == 1:
            written[0][...] = 7.0
        b.step(written, g)
    assert_bits(written, clean)
    b.master_arrays()[0][...] = 2.0  # the master is the truth: the next step starts from 2.0
    state = b.state_dict()  # as the float32 optimizer's state: the same slots, a float32 leaf
    state.update(master_weights=False, leaf_dtypes=np.array(["float32"]))
    del state["master.0"]
    reference = optim.AdamW(lr=0.01)
    reference.load_state_dict(state)
    wide = [np.full(700, 2.0, np.float32)]
    g = [rng.standard_normal(700).astype(BF16)]
    b.step(written, g)
    reference.step(wide, [g[0].astype(np.float32)])
    assert_bits(b.master_arrays(), wide)
    assert_bits(written, [wide[0].astype(BF16)])


def test_the_master_is_created_at_the_first_step_from_the_parameter(rng):
    """init() creates the slots; the master is widened from the parameter the first step sees."""
    p = [rng.standard_normal(100).astype(F16)]
    opt = optim.Adam(lr=0.01, master_weights=True)
    opt.init(p)
    assert opt.master_arrays() is None and "master.0" not in opt.state_dict()
    assert opt.state_arrays()["exp_avg"][0].dtype == np.float32
    p[0][...] = 0.5  # before the first step: this is what the master starts from
    wide = [np.full(100, 0.5, np.float32)]
    g = [rng.standard_normal(100).astype(F16)]
    opt.step(p, g)
    optim.Adam(lr=0.01).step(wide, [g[0].astype(np.float32)])
    assert_bits(opt.master_arrays(), wide)


def test_float_leaves_alone_keep_no_master(rng):
    params = [rng.standard_normal(50).astype(np.float32), rng.standard_normal(5)]
    plain = [p.copy() for p in params]
    opt, other = optim.NAdam(lr=0.1, master_weights=True), optim.NAdam(lr=0.1)
    for _ in range(3):
        grads = [rng.standard_normal(p.shape).astype(p.dtype) for p in params]
        opt.step(params, grads)
        other.step(plain, grads)
    assert_bits(params, plain)
    assert opt.master_arrays() is None
    assert not [k for k in opt.state_dict() if k.startswith("master.")]


# -- state_dict ------------------------------------------------------------------------------------
def _save_and_load(opt, how):
    if how == "pickle":
        return pickle.loads(pickle.dumps(opt))
    second = optim.AdamW(lr=0.01)  # master_weights comes from the state
    if how == "npz":  # np.save keeps bfloat16 as 2-byte voids: loading views them back
        buffer = io.BytesIO()
        np.savez(buffer, **opt.state_dict())
        buffer.seek(0)
        second.load_state_dict(dict(np.load(buffer)))
    else:
        second.load_state_dict(opt.state_dict())
    return second


@pytest.mark.parametrize("how", ["state_dict", "pickle", "npz"])
@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
def test_resume_continues_bit_for_bit(how, stochastic, rng):
    params = [rng.standard_normal(300).astype(BF16), rng.standard_normal((7, 9)).astype(F16),
              rng.standard_normal(11).astype(np.float32)]
    grads = [[(rng.standard_normal(p.shape)).astype(p.dtype) for p in params] for _ in range(8)]
    whole, split = [p.copy() for p in params], [p.copy() for p in params]
    options = dict(lr=0.01, weight_decay=0.1, master_weights=True, stochastic_rounding=stochastic, seed=5)
    opt, first = optim.AdamW(**options), optim.AdamW(**options)
    for g in grads:
        opt.step(whole, g)
    for g in grads[:4]:
        first.step(split, g)
    state = first.state_dict()
    assert state["master_weights"] is True and state["master.0"].dtype == np.float32
    assert state["exp_avg.1"].dtype == np.float32 and "master.2" not in state
    second = _save_and_load(first, how)
    assert second.master_weights is True
    for g in grads[4:]:
        second.step(split, g)
    assert_bits(split, whole)
    assert_bits([m for m in second.master_arrays() if m is not None], [m for m in opt.master_arrays() if m is not None])
    for name, tree in opt.state_arrays().items():
        assert_bits(second.state_arrays()[name], tree)


def test_a_state_without_masters_creates_them_at_the_next_step(rng):
    """A state saved after init() (no masters yet) resumes: the masters come from the parameters."""
    p = [rng.standard_normal(64).astype(BF16)]
    opt = optim.SGD(lr=0.1, momentum=0.9, master_weights=True)
    opt.init(p)
    other = optim.SGD(lr=0.1)
    other.load_state_dict(opt.state_dict())
    assert other.master_weights is True
    same = [p[0].copy()]
    g = [rng.standard_normal(64).astype(BF16)]
    opt.step(p, g)
    other.step(same, g)
    assert_bits(same, p)
    assert_bits(other.master_arrays(), opt.master_arrays())


def test_master_weights_is_saved_and_an_older_state_loads_as_false(rng):
    p = [rng.standard_normal(64).astype(BF16)]
    opt = optim.SGD(lr=0.1, momentum=0.9)
    opt.step(p, [np.ones(64, BF16)])
    state = opt.state_dict()
    assert state["master_weights"] is False and state["momentum_buffer.0"].dtype == BF16
    old = {k: v for k, v in state.items() if k != "master_weights"}
    other = optim.SGD(lr=0.1, momentum=0.9, master_weights=True)
    other.load_state_dict(old)
    assert other.master_weights is False


# -- bad input: a clear error, nothing changes -----------------------------------------------------
def _stepped(rng):
    params = [rng.standard_normal(40).astype(BF16), rng.standard_normal(9).astype(np.float32)]
    opt = optim.Adam(lr=0.01, master_weights=True)
    for _ in range(2):
        opt.step(params, [rng.standard_normal(p.shape).astype(p.dtype) for p in params])
    return params, opt


def _snapshot(opt, params):
    return ([p.copy() for p in params], {k: [a.copy() for a in v] for k, v in opt.state_arrays().items()},
            [None if m is None else m.copy() for m in opt.master_arrays()], opt.step_count, opt.master_weights)


def _assert_unchanged(opt, params, snap):
    before_p, before_s, before_m, count, master = snap
    assert_bits(params, before_p)
    for name, leaves in before_s.items():
        assert_bits(opt.state_arrays()[name], leaves)
    for m, b in zip(opt.master_arrays(), before_m):
        assert (m is None) == (b is None)
        if m is not None:
            assert_bits([m], [b])
    assert (opt.step_count, opt.master_weights) == (count, master)


@pytest.mark.parametrize("value", [1, "yes", None, np.float32(1), 0.0])
def test_master_weights_must_be_a_bool(value, rng):
    with pytest.raises(TypeError, match="master_weights must be a bool"):
        optim.AdamW(master_weights=value)
    params, opt = _stepped(rng)
    snap = _snapshot(opt, params)
    with pytest.raises(TypeError, match="master_weights must be a bool"):
        opt.master_weights = value
    with pytest.raises(TypeError, match="master_weights"):
        opt.load_state_dict(dict(opt.state_dict(), master_weights=value))
    _assert_unchanged(opt, params, snap)


def test_master_weights_changes_only_without_state(rng):
    params, opt = _stepped(rng)
    snap = _snapshot(opt, params)
    with pytest.raises(ValueError, match=r"master_weights chooses the state's layout.*reset\(\)"):
        opt.master_weights = False
    _assert_unchanged(opt, params, snap)
    opt.master_weights = True  # the same value is no change
    opt.reset()
    opt.master_weights = False
    assert opt.master_weights is False


def test_a_refused_step_changes_nothing(rng):
    params, opt = _stepped(rng)
    snap = _snapshot(opt, params)
    with pytest.raises(TypeError, match=r"grads at \[0\]: expected a bfloat16 array of shape \(40,\)"):
        opt.step(params, [np.ones(40, np.float32), np.ones(9, np.float32)])
    with pytest.raises(FloatingPointError, match=r"grads at \[1\]"):
        opt.check_finite = True
        opt.step(params, [np.ones(40, BF16), np.full(9, np.nan, np.float32)])
    _assert_unchanged(opt, params, snap)
    fresh = optim.Adam(lr=0.01, master_weights=True)
    read_only = np.ones(4, BF16)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match=r"params at \[0\].*read-only"):
        fresh.step([read_only], [np.ones(4, BF16)])
    assert fresh.step_count == 0 and fresh.master_arrays() is None


@pytest.mark.parametrize("edit,exc,words", [
    (lambda s: s.update({"master.0": s["master.0"].astype(np.float64)}), TypeError, ["master.0", "float32"]),
    (lambda s: s.update({"master.0": s["master.0"][:5]}), ValueError, ["master at [0]", "shape (40,)"]),
    (lambda s: s.update({"master_weights": False}), ValueError, ["master.0", "master_weights False"]),
    (lambda s: s.update({"master.1": np.zeros(9, np.float32)}), ValueError, ["master.1", "float32 leaf has no master"]),
    (lambda s: s.update({"exp_avg.0": s["exp_avg.0"].astype(BF16)}), ValueError, ["exp_avg at [0]", "float32"]),
])
def test_a_bad_saved_master_is_refused(edit, exc, words, rng):
    params, opt = _stepped(rng)
    snap = _snapshot(opt, params)
    state = opt.state_dict()
    edit(state)
    with pytest.raises(exc) as info:
        opt.load_state_dict(state)
    for w in words:
        assert w in str(info.value)
    _assert_unchanged(opt, params, snap)
    fresh = optim.Adam(lr=0.01)  # refused at the load, or (the native checks) at the first step's bind
    try:
        fresh.load_state_dict(state)
    except exc:
        return
    with pytest.raises(exc):
        fresh.step(params, [np.ones(40, BF16), np.ones(9, np.float32)])
    assert fresh.master_arrays() is None
    assert_bits(params, snap[0])


def test_a_missing_master_among_several_is_refused(rng):
    params = [rng.standard_normal(8).astype(BF16), rng.standard_normal(8).astype(F16)]
    opt = optim.Adam(lr=0.01, master_weights=True)
    opt.step(params, [np.ones(8, BF16), np.ones(8, F16)])
    state = opt.state_dict()
    del state["master.1"]
    with pytest.raises(ValueError, match=r"master.1 \(leaf \[1\]\) is missing"):
        optim.Adam().load_state_dict(state)


# -- memory overlap: the master is optimizer state -------------------------------------------------
def test_a_parameter_overlapping_a_master_is_refused(rng):
    params, opt = _stepped(rng)
    snap = _snapshot(opt, params)
    alias = opt.master_arrays()[0].view(BF16)[:40]  # the master's own bytes as a bfloat16 parameter
    with pytest.raises(ValueError, match="master"):
        opt.step([alias, params[1]], [np.ones(40, BF16), np.ones(9, np.float32)])
    _assert_unchanged(opt, params, snap)


def test_a_gradient_overlapping_a_master_is_read_as_it_was(rng):
    params, opt = _stepped(rng)
    twin_params = [p.copy() for p in params]
    twin = pickle.loads(pickle.dumps(opt))
    grad = opt.master_arrays()[0].view(BF16)[:40]  # reads the master's bytes that this step rewrites
    g_copy = grad.copy()
    opt.step(params, [grad, np.ones(9, np.float32)])
    twin.step(twin_params, [g_copy, np.ones(9, np.float32)])
    assert_bits(params, twin_params)
    assert_bits([m for m in opt.master_arrays() if m is not None], [m for m in twin.master_arrays() if m is not None])
