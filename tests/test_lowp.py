"""bfloat16 and float16 leaves of fusedopt.optim (docs/lowbit.md): every rule bit for
bit against the NumPy reference (tests/lowp_reference.py), rounded to nearest even
and stochastically, at every SIMD level and thread count; the stochastic rounding's
statistics; resume; bad input."""
import io
import pickle

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 leaves need ml_dtypes (pip install 'fusedopt[test]')")

import fusedopt  # noqa: E402
from fusedopt import _core, optim  # noqa: E402
from lowp_reference import (BF16, F16, LowReference, assert_bits, key, levels_and_thread_counts,  # noqa: E402
                            random_bits, round_nearest, round_stochastic)
from optim_cases import CASE_IDS, CASES  # noqa: E402
from optim_reference import global_norm  # noqa: E402

FORMATS = [BF16, F16]
# Sizes with vector tails at every level; the 40000-element leaf makes a step
# large enough for the thread team (kSerialBelow).
SIZES = [(1,), (15,), (17, 3), (130,), (2049,)]
BIG = (40000,)


def _tree(rng, dtypes, sizes=SIZES):
    return [rng.standard_normal(s).astype(d) for s, d in zip(sizes, dtypes)]


def _slots(opt):
    return list(opt.state_arrays())


def _run(kind, hyper, dtypes, rng, steps=5, seed=None, clip=None, mask=None, sizes=SIZES, state=False):
    params = _tree(rng, dtypes, sizes)
    mine = [p.copy() for p in params]
    opt = getattr(optim, kind)(lr=0.01, max_grad_norm=clip, weight_decay_mask=mask,
                               stochastic_rounding=seed is not None, stochastic_state=state, seed=seed or 0, **hyper)
    opt.init(mine)
    ref = LowReference(kind, 0.01, _slots(opt), seed=seed, max_grad_norm=clip, mask=mask, stochastic_state=state,
                       **hyper)
    for _ in range(steps):
        grads = [(rng.standard_normal(p.shape) * 3).astype(p.dtype) for p in params]
        opt.step(mine, grads)
        ref.step(params, grads, norm=opt.last_grad_norm)
        if clip is not None:
            assert opt.last_grad_norm == pytest.approx(global_norm(grads), rel=1e-12)
    return mine, params, opt, ref


def _assert_state(opt, ref):
    for name, tree in opt.state_arrays().items():
        assert_bits(tree, [s[name] for s in ref.state])


# How 16-bit leaves round: (parameters stochastically, slots stochastically).
ROUNDINGS = [(False, False), (True, False), (True, True), (False, True)]
ROUNDING_IDS = ["nearest", "stochastic", "stochastic_state", "only_state"]


@pytest.mark.parametrize("kind,hyper", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("stochastic,state", ROUNDINGS, ids=ROUNDING_IDS)
def test_every_rule_bit_for_bit(kind, hyper, fmt, stochastic, state, rng):
    """Every rule's kernel serves 16-bit leaves: parameters and state in the leaf's format,
    math in float32, in a tree mixed with float32 and float64 leaves (one native call)."""
    dtypes = [fmt, np.float32, fmt, np.float64, fmt]
    seed = int(rng.integers(2**64, dtype=np.uint64)) if stochastic or state else None
    mine, ref_params, opt, ref = _run(kind, hyper, dtypes, rng, seed=seed, state=state)
    assert_bits(mine, ref_params)
    _assert_state(opt, ref)


@pytest.mark.parametrize("kind,hyper", [("AdamW", {}), ("SGD", {"momentum": 0.9}), ("Adagrad", {}),
                                        ("Lion", {"weight_decay": 0.1})])
@pytest.mark.parametrize("stochastic,state", ROUNDINGS[:3], ids=ROUNDING_IDS[:3])
def test_same_bits_at_every_simd_level_and_thread_count(kind, hyper, stochastic, state, rng, restore_simd_level,
                                                        restore_num_threads):
    seed = int(rng.integers(2**63)) if stochastic else None
    dtypes = [BF16, F16, BF16, np.float32, F16, BF16]
    sizes = SIZES + [BIG]
    draw = int(rng.integers(2**31))
    results = []
    for _ in levels_and_thread_counts():
        mine, ref_params, opt, ref = _run(kind, hyper, dtypes, np.random.default_rng(draw), steps=3, seed=seed,
                                          clip=1.0, mask=[True, False] * 3, sizes=sizes, state=state)
        assert_bits(mine, ref_params)
        _assert_state(opt, ref)
        results.append(mine)
    for other in results[1:]:
        assert_bits(other, results[0])


# -- the conversions and the generator, exhaustively ---------------------------------------------
def _every_pattern(fmt, rng):
    """Every 16-bit pattern as p, and every pattern in another order as g."""
    p = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(fmt)
    return p, rng.permutation(p)


# lr's whose products land on ties of both formats (1 + 2**-8, 1 + 2**-11), in the
# subnormal ranges (2**-20) and beyond the largest finite values (3).
LRS = [1.0 + 2.0**-8, 1.0 + 2.0**-11, 0.3, 2.0**-20, 3.0]


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
def test_conversions_of_every_pattern(fmt, stochastic, rng, restore_simd_level):
    """SGD computes p = p + (-lr)*g in float32 from every 16-bit p and g (NaN, infinities,
    subnormals, ties, overflow): the widening and the rounding against ml_dtypes'/NumPy's
    conversion (nearest) and the reference's generator (stochastic), at every level."""
    p0, g = _every_pattern(fmt, rng)
    seed = int(rng.integers(2**63)) if stochastic else 0
    for level in fusedopt._core.simd_levels_supported():
        _core._set_simd_level(level)
        for lr in LRS:
            p = p0.copy()
            optim.SGD(lr=lr, stochastic_rounding=stochastic, seed=seed).step([p], [g])
            with np.errstate(invalid="ignore", over="ignore"):
                exact = p0.astype(np.float32) + np.float32(-lr) * g.astype(np.float32)
                if stochastic:
                    bits = random_bits(key(seed, 0, 1), np.arange(exact.size, dtype=np.uint64))
                    expected = round_stochastic(exact, fmt, bits)
                else:
                    expected = round_nearest(exact, fmt)
            np.testing.assert_array_equal(p.view(np.uint16), expected.view(np.uint16), err_msg=f"{level} lr={lr}")


# -- stochastic rounding: updates land on average, with the right probabilities ----------------------
def _ulp(fmt):
    """The spacing of both formats' values in [1, 2)."""
    return 2.0 ** -7 if fmt == BF16 else 2.0 ** -10


@settings(max_examples=12, deadline=None)
@given(fmt=st.sampled_from(FORMATS), ulps=st.floats(0.01, 0.5), seed=st.integers(0, 2**64 - 1))
def test_small_sgd_updates_land_on_average(fmt, ulps, seed):
    """SGD steps of 0.01-0.5 ulp: rounded to nearest they are lost, rounded stochastically
    the mean change reaches at least 0.95 of the float32 reference's."""
    rng = np.random.default_rng(seed % 2**32)
    p0 = (1.0 + rng.integers(1, 64, 2**16) / 128).astype(fmt)  # in (1, 1.5): away from binade edges
    steps, lr = 40, ulps * _ulp(fmt)
    g = [np.ones(p0.shape, fmt)]
    changes = {}
    for stochastic in (False, True):
        p = [p0.copy()]
        opt = optim.SGD(lr=lr, stochastic_rounding=stochastic, seed=seed)
        for _ in range(steps):
            opt.step(p, g)
        changes[stochastic] = float(np.mean(p0.astype(np.float64) - p[0].astype(np.float64)))
    p32 = [p0.astype(np.float32)]
    opt = optim.SGD(lr=lr)
    for _ in range(steps):
        opt.step(p32, [np.ones(p0.shape, np.float32)])
    reference = float(np.mean(p0.astype(np.float64) - p32[0].astype(np.float64)))
    # At half an ulp ties move every other parameter; the step is lr in float32,
    # which can round an ulps just below 0.5 up to the tie.
    if np.float32(lr) < np.float32(0.5 * _ulp(fmt)):
        assert changes[False] == 0.0
    assert changes[True] >= 0.95 * reference
    assert changes[True] <= 1.05 * reference


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_small_adamw_updates_land_on_average(fmt, rng):
    """AdamW with 16-bit parameters and state, steps of about 0.05 ulp: the mean change of the
    parameters is at least 0.95 of float32 AdamW's on the same gradients."""
    p0 = (1.0 + rng.integers(1, 64, 2**15) / 128).astype(fmt)
    lr = 0.05 * _ulp(fmt)
    mine, nearest, ref = [p0.copy()], [p0.copy()], [p0.astype(np.float32)]
    opts = [optim.AdamW(lr=lr, stochastic_rounding=True, seed=7), optim.AdamW(lr=lr), optim.AdamW(lr=lr)]
    for _ in range(60):
        g = (1.0 + 0.1 * rng.standard_normal(p0.shape)).astype(fmt)
        for opt, p in zip(opts, (mine, nearest, ref)):
            opt.step(p, [g.astype(p[0].dtype)])
    change = [float(np.mean(p0.astype(np.float64) - p[0].astype(np.float64))) for p in (mine, nearest, ref)]
    assert change[0] >= 0.95 * change[2]
    assert change[1] < 0.05 * change[2]  # to nearest: torch's fused bf16 behaviour, the updates are lost


# chi2.ppf(1 - 1e-6, 15): a correct generator fails one seed in a million.
CHI2_15_CRITICAL = 56.4934


@settings(max_examples=8, deadline=None)
@given(fmt=st.sampled_from(FORMATS), seed=st.integers(0, 2**64 - 1), first_step=st.integers(0, 2**40))
def test_rounding_probabilities_chi_square(fmt, seed, first_step):
    """One SGD step takes 1.5 down by k/16 ulp (k = 1..15, 4096 elements each): the step lands
    (the parameter becomes 1.5 - ulp) with probability exactly k/16 (the cut bits' fraction);
    a chi-square test of the 15 bins at any step number."""
    n, ulp = 4096, _ulp(fmt)
    k = np.repeat(np.arange(1, 16), n)
    p = [np.full(k.size, 1.5, fmt)]
    opt = optim.SGD(lr=ulp / 16, stochastic_rounding=True, seed=seed)
    if first_step:
        state = opt.state_dict()
        opt.init(p)
        state = dict(opt.state_dict(), step_count=first_step)
        opt.load_state_dict(state)
    opt.step(p, [k.astype(fmt)])
    values = p[0].astype(np.float64)
    assert set(np.unique(values)) <= {1.5, 1.5 - ulp}
    landed = np.bincount(k[values != 1.5], minlength=16)[1:]
    expected = n * np.arange(1, 16) / 16
    stat = np.sum((landed - expected) ** 2 / expected + (landed - expected) ** 2 / (n - expected))
    assert stat < CHI2_15_CRITICAL


# -- resume and the stream -------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["state_dict", "pickle", "npz"])
def test_resume_continues_the_stream(how, rng):
    """Four steps, a save, four more in a new optimizer: the same bits as eight in one."""
    params = [rng.standard_normal(300).astype(BF16), rng.standard_normal((7, 9)).astype(F16)]
    grads = [[(rng.standard_normal(p.shape)).astype(p.dtype) for p in params] for _ in range(8)]
    whole, split = [p.copy() for p in params], [p.copy() for p in params]
    opt = optim.AdamW(lr=0.01, stochastic_rounding=True, seed=2**64 - 1)
    for g in grads:
        opt.step(whole, g)
    first = optim.AdamW(lr=0.01, stochastic_rounding=True, seed=2**64 - 1)
    for g in grads[:4]:
        first.step(split, g)
    if how == "pickle":
        second = pickle.loads(pickle.dumps(first))
    elif how == "npz":  # np.save keeps bfloat16 as 2-byte voids: loading views them back
        buffer = io.BytesIO()
        np.savez(buffer, **first.state_dict())
        buffer.seek(0)
        second = optim.AdamW(lr=0.01)
        second.load_state_dict(dict(np.load(buffer)))
    else:
        second = optim.AdamW(lr=0.01)
        second.load_state_dict(first.state_dict())
    assert (second.stochastic_rounding, second.seed) == (True, 2**64 - 1)
    for g in grads[4:]:
        second.step(split, g)
    assert_bits(split, whole)
    for name, tree in opt.state_arrays().items():
        assert_bits(second.state_arrays()[name], tree)


def test_seed_and_step_change_the_bits(rng):
    """Another seed, or the same gradient at another step, rounds differently (the keys differ)."""
    p0 = [np.full(4096, 1.5, BF16)]
    g = [np.full(4096, 1.0, BF16)]  # half an ulp of 1.5
    outs = []
    for seed in (1, 2):
        p = [p0[0].copy()]
        optim.SGD(lr=2.0**-8, stochastic_rounding=True, seed=seed).step(p, g)
        outs.append(p[0].view(np.uint16))
    assert not np.array_equal(outs[0], outs[1])
    assert 0.4 < np.mean(outs[0] != p0[0].view(np.uint16)) < 0.6


# -- bad input: a clear error, nothing changes -----------------------------------------------------
def _snapshot(opt, params):
    return [p.copy() for p in params], {k: [a.copy() for a in v] for k, v in opt.state_arrays().items()}, \
        opt.step_count, opt.seed, opt.stochastic_rounding


def _assert_unchanged(opt, params, snap):
    before_p, before_s, count, seed, sr = snap
    assert_bits(params, before_p)
    for name, leaves in before_s.items():
        assert_bits(opt.state_arrays()[name], leaves)
    assert (opt.step_count, opt.seed, opt.stochastic_rounding) == (count, seed, sr)


@pytest.mark.parametrize("bad,exc,words", [
    (np.zeros(3, np.int32), TypeError, ["params at [1]", "int32", "bfloat16"]),
    (np.zeros(3, np.complex64), TypeError, ["params at [1]", "complex64"]),
    (np.zeros(3, ml_dtypes.float8_e4m3fn), TypeError, ["params at [1]", "float8_e4m3fn"]),
])
def test_other_dtypes_are_refused(bad, exc, words):
    params = [np.ones(4, BF16), bad]
    opt = optim.AdamW(stochastic_rounding=True)
    with pytest.raises(exc) as info:
        opt.step(params, [np.ones(4, BF16), bad.copy()])
    for w in words:
        assert w in str(info.value)
    assert opt.step_count == 0 and opt.state_arrays() == {}
    np.testing.assert_array_equal(params[0].astype(np.float32), 1.0)


@pytest.mark.parametrize("grad_dtype", [np.float32, F16, np.float64])
def test_gradient_of_another_dtype_is_refused(grad_dtype, rng):
    params = [rng.standard_normal(5).astype(BF16), rng.standard_normal(3).astype(F16)]
    opt = optim.Adam(lr=0.1, stochastic_rounding=True, seed=3)
    opt.step(params, [np.ones(5, BF16), np.ones(3, F16)])
    snap = _snapshot(opt, params)
    with pytest.raises(TypeError, match=r"grads at \[0\]: expected a bfloat16 array of shape \(5,\)"):
        opt.step(params, [np.ones(5, grad_dtype), np.ones(3, F16)])
    _assert_unchanged(opt, params, snap)


@pytest.mark.parametrize("seed,exc", [(-1, ValueError), (2**64, ValueError), (1.5, TypeError), (True, TypeError),
                                      ("3", TypeError), (None, TypeError), (np.float32(2), TypeError)])
def test_bad_seed(seed, exc, rng):
    with pytest.raises(exc, match="seed"):
        optim.AdamW(seed=seed)
    params = [rng.standard_normal(5).astype(BF16)]
    opt = optim.AdamW(lr=0.1, stochastic_rounding=True, seed=11)
    opt.step(params, [np.ones(5, BF16)])
    snap = _snapshot(opt, params)
    with pytest.raises(exc, match="seed"):
        opt.seed = seed
    state = dict(opt.state_dict(), seed=seed)
    with pytest.raises(exc, match="seed"):
        opt.load_state_dict(state)
    _assert_unchanged(opt, params, snap)
    opt.step(params, [np.ones(5, BF16)])  # and the stream goes on from seed 11


@pytest.mark.parametrize("flag", ["stochastic_rounding", "stochastic_state"])
def test_bad_stochastic_rounding_flag(flag):
    with pytest.raises(TypeError, match=f"{flag} must be a bool"):
        optim.Lion(**{flag: 1})
    opt = optim.Lion()
    with pytest.raises(TypeError, match=f"{flag} must be a bool"):
        setattr(opt, flag, "yes")
    with pytest.raises(TypeError, match=flag):
        opt.load_state_dict(dict(opt.state_dict(), **{flag: 2}))
    assert getattr(opt, flag) is False


@pytest.mark.parametrize("saved", [False, True])
def test_state_saved_before_stochastic_state_rounds_slots_as_then(saved, rng):
    """stochastic_rounding used to round the slots too: a state without the stochastic_state
    key keeps that, and the resumed steps are the reference's with the slots' streams."""
    params = [rng.standard_normal(40).astype(BF16)]
    opt = optim.Adam(lr=0.01, stochastic_rounding=saved, seed=4)
    opt.step(params, [np.ones(40, BF16)])
    old = {k: v for k, v in opt.state_dict().items() if k != "stochastic_state"}
    other = optim.Adam(lr=0.01, stochastic_state=not saved)
    other.load_state_dict(old)
    assert (other.stochastic_rounding, other.stochastic_state) == (saved, saved)
    new = optim.Adam(lr=0.01, stochastic_state=not saved)
    new.load_state_dict(opt.state_dict())
    assert (new.stochastic_rounding, new.stochastic_state) == (saved, False)


def test_options_are_settable_and_saved(rng):
    """Assignments reach the native state from the next step; state_dict carries both; a
    state saved without them (an older one) loads as round-to-nearest with seed 0."""
    params = [rng.standard_normal(64).astype(BF16)]
    opt = optim.SGD(lr=2.0**-9)
    opt.step(params, [np.ones(64, BF16)])
    opt.stochastic_rounding, opt.seed = True, 99
    state = opt.state_dict()
    assert state["stochastic_rounding"] is True and int(state["seed"]) == 99 and state["stochastic_state"] is False
    old = {k: v for k, v in state.items() if k not in ("stochastic_rounding", "stochastic_state", "seed")}
    other = optim.SGD(lr=2.0**-9, stochastic_rounding=True, stochastic_state=True, seed=5)
    other.load_state_dict(old)
    assert (other.stochastic_rounding, other.stochastic_state, other.seed) == (False, False, 0)
    mine, ref = [params[0].copy()], [params[0].copy()]
    opt.step(mine, [np.ones(64, BF16)])
    reference = LowReference("SGD", 2.0**-9, [], seed=99)
    reference.ref.t = 1
    reference.step(ref, [np.ones(64, BF16)])
    assert_bits(mine, ref)


def test_paysage_family_refuses_16_bit():
    """Only fusedopt.optim's plans take 16-bit leaves."""
    with pytest.raises(TypeError, match=r"grad at \[0\]: expected a float32 or float64 array, got dtype bfloat16"):
        fusedopt.optimizers.GradientMemory().update([np.ones(3, BF16)])
