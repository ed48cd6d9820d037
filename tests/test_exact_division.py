"""Division of float32 leaves by 1 - w and 1 - w2 with FMAs instead of the divider
(csrc/paysage/exact_division.h, AVX-512 only) gives exactly the divider's bits: every constant is
checked over all 2^23 significands before use, and vectors with a lane outside
[2^-60, 2^100) (zeros, subnormals, huge values, Inf, NaN) fall back to the divider.
Compared bit for bit with the NumPy reference of docs/semantics.md and with the divider-only kernels."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import fusedopt
from fusedopt import _core, optimizers

from reference import RefMemory, RefOptimizer, apply, constant_rates

HAVE_AVX512 = "avx512" in _core.simd_levels_supported()
needs_avx512 = pytest.mark.skipif(not HAVE_AVX512, reason="FMA division is used on AVX-512 CPUs only")
f32 = np.float32
LR = 0.01


@pytest.fixture
def exact_division_on():
    """Turns the FMA division on for the test (it is the default) and restores the setting."""
    before = _core._exact_division()
    _core._set_exact_division(True)
    yield
    _core._set_exact_division(before)


def one_minus(w):
    """1 - w as the kernels compute it: in float32 from the float32 weight."""
    return float(f32(1) - f32(w))


def same(a, b):
    """Same dtype, shape and bits (NaN where the reference has NaN)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


# ----------------------------------------------------------------------------- the check


@needs_avx512
@pytest.mark.parametrize("w", [0.9, 0.999, 0.99, 0.5, 0.0, 0.3, 1 - 2.0 ** -24])
def test_constants_of_the_defaults_pass_the_check(w, exact_division_on, restore_simd_level):
    _core._set_simd_level("avx512")
    c = one_minus(w)
    assert _core._exact_reciprocal(c) == float(f32(1) / f32(c))
    assert _core._check_divisor(c, float(f32(1) / f32(c)))


@needs_avx512
@pytest.mark.parametrize("c", [0.1, 0.001, 0.7, 1.0, 3.0])
def test_the_check_rejects_a_wrong_reciprocal(c, restore_simd_level):
    """The check is not vacuous: a reciprocal off by 2^-8 (relative) gives other bits."""
    _core._set_simd_level("avx512")
    r = float(f32(1) / f32(c))
    assert _core._check_divisor(c, r)
    assert not _core._check_divisor(c, r * (1 + 2.0 ** -8))
    assert not _core._check_divisor(c, r * (1 - 2.0 ** -8))


@needs_avx512
@pytest.mark.parametrize("c", [2.0 ** -25, 2.0 ** 25, 0.0, -0.5, float("nan"), float("inf")])
def test_constants_outside_the_proven_range_use_the_divider(c, exact_division_on, restore_simd_level):
    _core._set_simd_level("avx512")
    assert _core._exact_reciprocal(c) == 0.0
    assert not _core._check_divisor(c, 1.0)


@pytest.mark.parametrize("level", [lv for lv in _core.simd_levels_supported() if lv != "avx512"])
def test_levels_below_avx512_use_the_divider(level, exact_division_on, restore_simd_level):
    _core._set_simd_level(level)
    assert _core._exact_reciprocal(0.1) == 0.0
    assert not _core._check_divisor(one_minus(0.9), float(f32(1) / f32(one_minus(0.9))))


@needs_avx512
def test_switching_it_off_makes_every_constant_use_the_divider(restore_simd_level):
    _core._set_simd_level("avx512")
    before = _core._exact_division()
    try:
        _core._set_exact_division(False)
        assert not _core._exact_division()
        assert _core._exact_reciprocal(one_minus(0.9)) == 0.0
        _core._set_exact_division(True)
        assert _core._exact_reciprocal(one_minus(0.9)) != 0.0
    finally:
        _core._set_exact_division(before)


# ----------------------------------------------------------------------------- range edges


def edge_values():
    """Numerators around the edges of the FMA range, each repeated over a full 16-lane
    vector (the FMA path) and mixed into vectors of ordinary values (the divider)."""
    below = np.nextafter(f32(2.0 ** -60), f32(0))
    top_in = np.nextafter(f32(2.0 ** 100), f32(0))
    specials = [f32(2.0 ** -60), below, top_in, f32(2.0 ** 100), f32(0.0), f32(-0.0), f32(1e-45),
                f32(2.0 ** -126), f32(np.inf), f32(-np.inf), f32(np.nan), f32(3e38), -f32(2.0 ** -60), -top_in]
    rng = np.random.default_rng(5)
    parts = []
    for s in specials:
        parts.append(np.full(16, s, dtype=f32))  # a whole vector of one value
        mixed = rng.uniform(0.5, 2.0, 16).astype(f32)
        mixed[rng.integers(16)] = s  # one lane sends the vector to the divider
        parts.append(mixed)
    parts.append(rng.uniform(-3, 3, 37).astype(f32))  # ordinary values and a scalar tail
    return np.concatenate(parts)


@pytest.mark.parametrize("level", _core.simd_levels_supported())
@pytest.mark.parametrize("w,w2", [(0.9, 0.999), (0.5, 0.75), (0.0, 0.9)])
def test_normalize_at_the_range_edges_matches_the_reference(level, w, w2, exact_division_on, restore_simd_level):
    """normalize(x, unbiased=True) = (x / (1 - w)) / sqrt(EPS + v / (1 - w2)): x runs over
    the edge values; v = g*g with g over the edge values too (g = 2^-30 gives v = 2^-60,
    g = 2^50 gives 2^100), so both divisions see every edge."""
    _core._set_simd_level(level)
    x = edge_values()
    g = np.roll(x, 7).copy()
    g[::3] = f32(2.0 ** -30)
    g[1::5] = f32(2.0 ** 50)
    mem = optimizers.GradientMemory(mean_weight=w, mean_square_weight=w2)
    ref = RefMemory(mean_weight=w, mean_square_weight=w2)
    with np.errstate(all="ignore"):
        mem.update([g])
        ref.update([g])
        got = mem.normalize([x], unbiased=True)
        want = ref.normalize([x], unbiased=True)
    assert same(got[0], want[0])


# ----------------------------------------------------------------------------- whole steps


def draw_gradient(rng, n, extreme_share):
    """Gradients of magnitude 2^-75 .. 2^60 (m and v then cross both edges of the FMA range)
    mixed with ordinary ones, and a few zeros, Inf and NaN."""
    g = rng.standard_normal(n).astype(f32) * f32(1e-2)
    extreme = rng.random(n) < extreme_share
    g[extreme] = (np.sign(rng.standard_normal(extreme.sum())) *
                  np.exp2(rng.uniform(-75, 60, extreme.sum()))).astype(f32)
    special = rng.random(n) < extreme_share / 10
    g[special] = rng.choice(np.array([0.0, -0.0, np.inf, np.nan, 1e-40], dtype=f32), special.sum())
    return g


def run_both(kind, weights, grads, params):
    """fusedopt in place (FMA division on) and the NumPy reference over the same gradients."""
    cls = {"adam": optimizers.ADAM, "rmsprop": optimizers.RMSProp}[kind]
    opt = cls(stepsize=LR, **weights)
    ref = RefOptimizer(kind, constant_rates(LR), **weights)
    p_fused, p_ref = params.copy(), [params.copy()]
    with np.errstate(all="ignore"):
        for g in grads:
            opt.update_lr()
            ref.update_lr()
            opt.update([p_fused], [g])
            p_ref = apply(p_ref, ref.step([g]))
    mem = opt.memory
    return (p_fused, mem.mean_gradient, mem.mean_square_gradient), (p_ref[0], ref.memory.mean, ref.memory.mean_square)


weights_f32 = st.floats(0.0, 1.0, exclude_max=True, width=32)


@needs_avx512
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["adam", "rmsprop"]), w=weights_f32, w2=weights_f32,
       near_one=st.integers(0, 24), n=st.integers(1, 700), extreme_share=st.sampled_from([0.0, 0.01, 0.3]),
       seed=st.integers(0, 2 ** 32 - 1))
def test_random_weights_and_magnitudes_match_the_reference(kind, w, w2, near_one, n, extreme_share, seed,
                                                           exact_division_on, restore_simd_level):
    """Weights anywhere in [0, 1) and as close to 1 as float32 allows (1 - 2^-k): every
    constant is checked, and the steps equal the reference bit for bit."""
    _core._set_simd_level("avx512")
    if near_one:
        w2 = float(f32(1) - f32(2.0 ** -near_one))
    if float(f32(w2)) == 0.0:
        w2 = 0.5  # RMSProp and ADAM with w2 = 0 do not divide by 1 - w2
    weights = dict(mean_square_weight=w2) if kind == "rmsprop" else dict(mean_weight=w, mean_square_weight=w2)
    rng = np.random.default_rng(seed)
    grads = [draw_gradient(rng, n, extreme_share) for _ in range(3)]
    params = rng.standard_normal(n).astype(f32)
    got, want = run_both(kind, weights, grads, params)
    for name, a, b in zip(("params", "mean", "mean square"), got, want):
        if b is not None:
            assert same(a[0] if isinstance(a, list) else a, b[0] if isinstance(b, list) else b), name


@needs_avx512
@pytest.mark.parametrize("threads", [1, 2])
def test_large_steps_equal_the_divider_only_kernels(threads, exact_division_on, restore_simd_level,
                                                    restore_num_threads):
    """A 300 000-element ADAM run over 5 steps, on the OpenMP path: FMA division on and off
    give the same parameters and moments, bit for bit, and both equal the reference."""
    _core._set_simd_level("avx512")
    fusedopt.set_num_threads(threads)
    rng = np.random.default_rng(11)
    n = 300_003
    grads = [draw_gradient(rng, n, 0.01) for _ in range(5)]
    params = rng.standard_normal(n).astype(f32)
    results = []
    for on in (True, False):
        _core._set_exact_division(on)
        results.append(run_both("adam", {}, grads, params))
    (fma, want), (divider, _) = results
    for a, b, c in zip(fma, divider, want):
        a, b = (x[0] if isinstance(x, list) else x for x in (a, b))
        assert same(a, b)
        assert same(a, c[0] if isinstance(c, list) else c)


@pytest.mark.parametrize("value,on", [("0", False), ("off", False), ("1", True)])
def test_environment_turns_it_off(value, on):
    """FUSEDOPT_FMA_DIVISION is read when the extension loads: a fresh interpreter (at the level
    FUSEDOPT_SIMD gives it, if set: only AVX-512 uses the FMA division)."""
    env = dict(os.environ, FUSEDOPT_FMA_DIVISION=value)
    code = ("from fusedopt import _core; "
            "print(_core._exact_division(), _core._exact_division_active(), _core.simd_level(), "
            "_core._exact_reciprocal(0.5))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    switch, active, level, reciprocal = out.stdout.split()
    assert switch == str(on)
    assert active == str(on and level == "avx512")
    assert reciprocal == ("2.0" if active == "True" else "0.0")
