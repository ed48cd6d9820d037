"""Adam8bit, AdamW8bit and Lion8bit (docs/lowbit.md): the maps and the encoder
against an exhaustive-search reference, the step bit for bit against a NumPy
float32 reference at every SIMD level and thread count, state memory, conversion
from and to AdamW's and Lion's state, resume, bad input, and a training run.
The tests of the state's contract run for AdamW8bit and Lion8bit alike (KINDS)."""
import io
import signal

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import fusedopt
from fusedopt import _core, optim

import quant8_reference as ref


# The 8-bit classes whose state contract every test below checks, and each one's moments
# (slot, signed map) and float32 class.
KINDS = ["AdamW8bit", "Lion8bit"]
MOMENTS = {"Adam8bit": (("exp_avg", True), ("exp_avg_sq", False)),
           "AdamW8bit": (("exp_avg", True), ("exp_avg_sq", False)), "Lion8bit": (("exp_avg", True),)}
FLOAT32 = {"Adam8bit": "Adam", "AdamW8bit": "AdamW", "Lion8bit": "Lion"}


def _bits_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


# -- the maps ------------------------------------------------------------------------
@pytest.mark.parametrize("signed", [True, False])
def test_map_is_the_documented_one(signed):
    values = ref.map_values(signed)
    mags = values[:128] if signed else values
    assert np.all(np.diff(mags) > 0) and mags[0] == 0 and mags[-1] == 1
    # smallest nonzero code: 2^-22 (signed), 2^-26 (unsigned)
    assert mags[1] == 2.0 ** (-22 if signed else -26)


@pytest.mark.parametrize("signed", [True, False])
def test_arithmetic_decoder_gives_the_map(signed):
    codes = np.arange(256, dtype=np.uint8)
    _bits_equal(_core.dequantize_blockwise(codes, np.ones(1, np.float32), signed, 256), ref.map_values(signed))
    # and every code but the unused 0x80 is its own nearest code
    used = codes[codes != 0x80] if signed else codes
    _bits_equal(_core.quantize_blockwise(np.concatenate([[np.float32(1)], ref.map_values(signed)[used]]), signed,
                                         4096)[0][1:], used)


@pytest.mark.parametrize("signed", [True, False])
def test_relative_error_of_the_map_is_as_documented(signed):
    # q = x * (1 / absmax) in binade k (q in [2^-(k+1), 2^-k)) with bits(k) = max(0, M - k // 4) > 0 is
    # within 2^-(bits+1) of its code, relative to q; a binade of one code within 1/3; below the
    # smallest code's half it is 0.
    M = 4 if signed else 5
    rng = np.random.default_rng(5)
    x = np.exp(rng.uniform(np.log(2.0 ** -40), 0, 200_000)).astype(np.float32)
    codes, absmax = _core.quantize_blockwise(x, signed, 4096)
    q = (x * (np.float32(1) / absmax)[np.arange(x.size) // 4096]).astype(np.float64)  # the scaled value
    got = ref.map_values(signed)[codes].astype(np.float64)
    k = -np.frexp(q)[1]
    bits = np.maximum(0, M - k // 4)
    bound = np.where(bits > 0, 2.0 ** -(bits + 1.0), 1 / 3)
    coded = q >= 2.0 ** -(4 * M + 6)  # the smallest code
    assert np.all(np.abs(got - q)[coded] <= (bound * q)[coded])
    assert np.all(np.isin(got[~coded], [0.0, 2.0 ** -(4 * M + 6)]))
    assert np.max((np.abs(got - q) / q)[q >= 2.0 ** -4]) > 0.9 * 2.0 ** -(M + 1)  # the bound is tight


def _edges(signed):
    """Every code, the midpoints between neighbours (ties), and their neighbouring floats."""
    v = np.unique(np.abs(ref.map_values(signed))).astype(np.float64)
    mids = ((v[1:] + v[:-1]) / 2).astype(np.float32)
    assert np.all(mids.astype(np.float64) == (v[1:] + v[:-1]) / 2)  # exactly representable: true ties
    pts = np.concatenate([v.astype(np.float32), mids, np.nextafter(mids, np.float32(0)), np.nextafter(mids, np.float32(1)),
                          np.array([2.0 ** -140, 1e-45, 2.0 ** -30, 2.0 ** -27, 2.0 ** -23], np.float32)])
    pts = pts[pts <= 1]
    return np.concatenate([pts, -pts]) if signed else pts


@pytest.mark.parametrize("signed", [True, False])
def test_encoder_at_every_code_tie_and_edge(signed):
    x = _edges(signed)
    x = np.concatenate([[np.float32(1.0)], x]).astype(np.float32)  # absmax 1: x / absmax == x
    codes, absmax = _core.quantize_blockwise(x, signed, 4096)
    assert absmax[0] == 1.0
    _bits_equal(codes, ref.nearest_codes(x, signed))


def _patterns(signed):
    """Every binade from 2^-35 to 1, each with 2^12 fractions (the top 10 fraction bits, and
    low bits 0, 1, half-1 and all ones: the step's rounding sits at 2^17 and above), either
    sign, then 1.0, the subnormals' edges and zeros; one 1.0 starts every block of 4096."""
    e = np.arange(127 - 35, 127, dtype=np.uint32)
    top = np.arange(1024, dtype=np.uint32) << 13
    low = np.array([0, 1, 0xFFF, 0x1FFF], np.uint32)
    bits = ((e[:, None, None] << 23) | top[None, :, None] | low[None, None, :]).ravel()
    bits = np.concatenate([bits, np.array([0x3F800000, 1, 0x7FFFFF, 0x800000, 0], np.uint32)])
    x = bits.view(np.float32)
    if signed:
        x = np.concatenate([x, -x])
    pad = -x.size % 4095
    x = np.concatenate([x, np.zeros(pad, np.float32)]).reshape(-1, 4095)
    return np.concatenate([np.ones((x.shape[0], 1), np.float32), x], axis=1).ravel()


@pytest.mark.parametrize("signed", [True, False])
def test_encoder_and_decoder_at_every_simd_level(signed, restore_simd_level):
    # the step's vector encoder and decoder (the tables and arithmetic of quant8_map.h), which
    # quantize_blockwise and dequantize_blockwise run at the selected level, against the
    # exhaustive search: every binade densely, subnormals, zeros (absmax 1 in every block)
    x = _patterns(signed)
    want = ref.nearest_codes(x, signed)
    codes_all = np.arange(256, dtype=np.uint8)
    for level in _core.simd_levels_supported():
        _core._set_simd_level(level)
        codes, absmax = _core.quantize_blockwise(x, signed, 4096)
        assert np.all(absmax == 1.0)
        _bits_equal(codes, want)
        for a in np.float32([1.0, 3.5, 2.0 ** -140, 0.0]):  # the map's values times an absmax
            got = _core.dequantize_blockwise(codes_all, np.full(1, a, np.float32), signed, 256)
            _bits_equal(got, ref.map_values(signed) * a)


finite32 = st.floats(-2.0 ** 100, 2.0 ** 100, width=32, allow_subnormal=True)


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(np.float32, st.integers(1, 700), elements=finite32),
       block=st.sampled_from([16, 64, 256]), signed=st.booleans(), scale=st.sampled_from([1.0, 1e-20, 3.0, 2.0 ** -126]))
def test_encoder_matches_exhaustive_search(x, block, signed, scale):
    x = (x * np.float32(scale)).astype(np.float32)
    if not signed:
        x = np.abs(x)
    codes, absmax = _core.quantize_blockwise(x, signed, block)
    want_codes, want_absmax = ref.quantize(x, signed, block)
    _bits_equal(absmax, want_absmax)
    _bits_equal(codes, want_codes)
    _bits_equal(_core.dequantize_blockwise(codes, absmax, signed, block), ref.dequantize(codes, absmax, signed, block))


# -- the step ------------------------------------------------------------------------
SHAPES = [(70, 9), (37,), (5, 40)]  # with least=64: quantized, float32, quantized (a partial block)


def _run(kind, hyper, rng, steps=4, block=64, least=64, shapes=SHAPES, scales=(1e-3, 1.0, 30.0)):
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    mine = [p.copy() for p in params]
    opt = getattr(optim, kind)(lr=0.01, block_size=block, min_8bit_size=least, **hyper)
    r = ref.Reference([p.copy() for p in params], 0.01, block=block, least=least, decoupled=kind != "Adam8bit",
                      weight_decay=opt.weight_decay, betas=opt.betas, eps=getattr(opt, "eps", 0.0),
                      maximize=opt.maximize, rule="lion" if kind == "Lion8bit" else "adam")
    for _ in range(steps):
        grads = [(rng.standard_normal(s) * rng.choice(scales)).astype(np.float32) for s in shapes]
        grads[0].flat[:5] = 0  # exact zeros: codes 0
        opt.step(mine, grads)
        r.step(params, grads)
    return mine, params, opt, r


CASES = [("AdamW8bit", {}), ("Adam8bit", {}), ("Adam8bit", {"weight_decay": 0.1}),
         ("AdamW8bit", {"weight_decay": 0.3, "maximize": True, "betas": (0.3, 0.9)}), ("AdamW8bit", {"weight_decay": 0}),
         ("Lion8bit", {}), ("Lion8bit", {"weight_decay": 0.3, "maximize": True, "betas": (0.3, 0.9)}),
         ("Lion8bit", {"weight_decay": 0.1, "betas": (0.95, 0.98)})]


def _assert_matches(mine, params, opt, r):
    for a, b in zip(mine, params):
        _bits_equal(a, b)
    for name, tree in opt.state_arrays().items():
        for a, st_ in zip(tree, r.state):
            _bits_equal(a, st_[name])


@pytest.mark.parametrize("kind,hyper", CASES)
def test_step_bits_at_every_simd_level_and_thread_count(kind, hyper, rng, restore_simd_level, restore_num_threads):
    seed = int(rng.integers(2 ** 31))
    first = None
    for level in _core.simd_levels_supported():
        _core._set_simd_level(level)
        for threads in (1, 2):
            fusedopt.set_num_threads(threads)
            mine, params, opt, r = _run(kind, hyper, np.random.default_rng(seed))
            _assert_matches(mine, params, opt, r)
            first = first or mine
            for a, b in zip(mine, first):
                _bits_equal(a, b)


def test_block_whose_absmax_reciprocal_overflows_is_divided():
    # absmax 2^-140: 1/absmax overflows float32, so the block is divided by it (exactly, powers
    # of two): the codes of 1, 0, -0.5 and 2^-9. Scaled by inf, 0 would get the top code.
    x = np.array([2.0 ** -140, 0.0, -(2.0 ** -141), 2.0 ** -149], np.float32)
    codes, absmax = _core.quantize_blockwise(x, True, 64)
    assert absmax[0] == np.float32(2.0 ** -140)
    _bits_equal(codes, ref.nearest_codes(np.array([1.0, 0.0, -0.5, 2.0 ** -9], np.float32), True))
    assert codes[1] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_step_bits_with_subnormal_moments(kind, rng, restore_simd_level):
    # gradients near 2^-130: the first moment's block absmax is subnormal (its reciprocal
    # overflows) and Adam's second moment underflows to 0, on the vector path of every level
    seed = int(rng.integers(2 ** 31))
    for level in _core.simd_levels_supported():
        _core._set_simd_level(level)
        mine, params, opt, r = _run(kind, {}, np.random.default_rng(seed), scales=(2.0 ** -130,))
        _assert_matches(mine, params, opt, r)
        assert any(code.any() for code in opt.state_arrays()["exp_avg"])


@pytest.mark.parametrize("kind", KINDS)
def test_large_tree_threaded_default_sizes(kind, rng, restore_num_threads, restore_simd_level):
    # Default block_size 256 and min_8bit_size 4096, above the serial threshold: the thread team runs the spans.
    shapes = [(40_001,), (4095,), (64, 64)]
    out = []
    for level in _core.simd_levels_supported():
        _core._set_simd_level(level)
        for threads in (1, 2):
            fusedopt.set_num_threads(threads)
            mine, params, opt, r = _run(kind, {}, np.random.default_rng(3), steps=2, block=256, least=4096,
                                        shapes=shapes)
            _assert_matches(mine, params, opt, r)
            assert opt.state_arrays()["exp_avg"][1].dtype == np.float32  # 4095 < 4096: float32 state
            assert opt.state_arrays()["exp_avg"][2].dtype == np.uint8
            out.append(mine)
    for o in out[1:]:
        for a, b in zip(o, out[0]):
            _bits_equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_small_leaves_step_as_the_float32_class(kind, rng):
    params = [rng.standard_normal((30,)).astype(np.float32)]
    a, b = [params[0].copy()], [params[0].copy()]
    o8, o32 = getattr(optim, kind)(lr=0.01, weight_decay=0.1), getattr(optim, FLOAT32[kind])(lr=0.01, weight_decay=0.1)
    for _ in range(3):
        g = [rng.standard_normal((30,)).astype(np.float32)]
        o8.step(a, g)
        o32.step(b, g)
    _bits_equal(a[0], b[0])
    for name, _ in MOMENTS[kind]:
        _bits_equal(o8.state_arrays()[name][0], o32.state_arrays()[name][0])


@pytest.mark.parametrize("kind", KINDS)
def test_state_memory_at_most_27_percent_of_the_float32_class(kind, rng):
    params = {"w": np.zeros((1000, 1000), np.float32), "b": np.zeros(1000, np.float32)}
    grads = {k: np.ones_like(v) for k, v in params.items()}
    o8, o32 = getattr(optim, kind)(), getattr(optim, FLOAT32[kind])()
    o8.step(params, grads)
    o32.step({k: v.copy() for k, v in params.items()}, grads)

    def nbytes(opt):
        return sum(leaf.nbytes for tree in opt.state_arrays().values() for leaf in tree.values())

    ratio = nbytes(o8) / nbytes(o32)
    # per moment: 1e6 codes + 3907 blocks x 4 bytes + the 1000-element bias in float32
    assert nbytes(o8) == len(MOMENTS[kind]) * (1_000_000 + 4 * 3907 + 4 * 1000)
    assert ratio <= 0.27, ratio


# -- state_dict, resume, conversion ----------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_resume_from_state_dict_bit_for_bit(kind, rng):
    shapes = SHAPES
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(6)]
    a = [p.copy() for p in params]
    opt = getattr(optim, kind)(lr=0.02, block_size=64, min_8bit_size=64)
    for g in grads:
        opt.step(a, g)
    b = [p.copy() for p in params]
    first = getattr(optim, kind)(lr=0.02, block_size=64, min_8bit_size=64)
    for g in grads[:3]:
        first.step(b, g)
    buf = io.BytesIO()
    np.savez(buf, **first.state_dict())
    buf.seek(0)
    second = getattr(optim, kind)(lr=0.5)  # every hyper-parameter comes from the state
    second.load_state_dict(dict(np.load(buf)))
    assert second.block_size == 64 and second.min_8bit_size == 64 and second.lr == 0.02
    for g in grads[3:]:
        second.step(b, g)
    for x, y in zip(a, b):
        _bits_equal(x, y)
    assert second.step_count == 6
    sd = second.state_dict()
    assert sd["exp_avg.0"].dtype == np.uint8 and sd["exp_avg_absmax.0"].dtype == np.float32
    assert sd["exp_avg.1"].dtype == np.float32 and sd["exp_avg_absmax.1"].shape == (0,)


@pytest.mark.parametrize("kind,other", [("AdamW8bit", "Adam8bit"), ("Lion8bit", "AdamW8bit")])
def test_conversion_from_and_to_the_float32_state(kind, other, rng):
    shapes = SHAPES
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    o32 = getattr(optim, FLOAT32[kind])(lr=0.01)
    for _ in range(2):
        o32.step(params, [rng.standard_normal(s).astype(np.float32) for s in shapes])
    st32 = o32.state_dict()
    o8 = getattr(optim, kind)(block_size=64, min_8bit_size=64)
    o8.load_state_dict(st32)
    assert o8.step_count == 2 and o8.lr == 0.01
    sd8 = o8.state_dict()
    arrays = {name: [sd8[f"{name}.{i}"] for i in range(3)] for name in sd8["slots"]}
    assert sorted(arrays) == sorted([n for n, _ in MOMENTS[kind]] + [f"{n}_absmax" for n, _ in MOMENTS[kind]])
    for i in (0, 2):
        for name, signed in MOMENTS[kind]:
            codes, absmax = ref.quantize(st32[f"{name}.{i}"], signed, 64)
            _bits_equal(arrays[name][i], codes)
            _bits_equal(arrays[f"{name}_absmax"][i], absmax)
    _bits_equal(arrays["exp_avg"][1], st32["exp_avg.1"])  # small leaf: float32 as it was
    back = o8.float32_state_dict()
    assert back["kind"] == FLOAT32[kind] and sorted(back["slots"]) == sorted(st32["slots"])
    o32b = getattr(optim, FLOAT32[kind])()
    o32b.load_state_dict(back)  # the float32 class takes it
    sd32b = o32b.state_dict()
    for i in (0, 2):
        m = sd32b[f"exp_avg.{i}"]
        _bits_equal(m, ref.dequantize(arrays["exp_avg"][i], arrays["exp_avg_absmax"][i], True, 64))
        # the quantization error of the round trip: within the map's bound relative to the block's absmax
        err = np.abs(m - st32[f"exp_avg.{i}"]).ravel()
        top = np.repeat(arrays["exp_avg_absmax"][i], 64)[: err.size]
        assert np.all(err <= top * 2.0 ** -5)
    _bits_equal(sd32b["exp_avg.1"], st32["exp_avg.1"])
    o32b.step(params, [np.ones(s, np.float32) for s in shapes])  # and steps on
    assert o32b.step_count == 3
    # the float32 state of another class is refused (AdamW's by Adam8bit, Lion's by AdamW8bit)
    with pytest.raises(ValueError, match=f"kind|{kind}|{FLOAT32[kind]}"):
        getattr(optim, other)().load_state_dict(st32)


def test_amsgrad_state_has_no_8bit_form():
    shapes = SHAPES
    params = [np.zeros(s, np.float32) for s in shapes]
    ams = optim.AdamW(amsgrad=True)
    ams.step(params, [np.ones(s, np.float32) for s in shapes])
    with pytest.raises(ValueError, match="amsgrad"):
        optim.AdamW8bit().load_state_dict(ams.state_dict())


# -- bad input ---------------------------------------------------------------------------
def _snapshot(opt, params):
    return [p.copy() for p in params], {k: [a.copy() for a in v] for k, v in opt.state_arrays().items()}


def _unchanged(opt, params, snap):
    for a, b in zip(params, snap[0]):
        _bits_equal(a, b)
    for k, v in opt.state_arrays().items():
        for a, b in zip(v, snap[1][k]):
            _bits_equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_is_refused_and_changes_nothing(kind, rng):
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    opt = getattr(optim, kind)(block_size=64, min_8bit_size=64)
    opt.step(params, [np.ones(s, np.float32) for s in SHAPES])
    snap = _snapshot(opt, params)
    bad = [np.ones(s, np.float32) for s in SHAPES]
    bad[2] = bad[2].astype(np.float64)
    with pytest.raises(TypeError, match=r"grads at \[2\]: expected a float32 array of shape \(5, 40\)"):
        opt.step(params, bad)
    with pytest.raises(ValueError, match="shape"):
        opt.step(params, [np.ones(s, np.float32) for s in SHAPES[:2]] + [np.ones((40, 5), np.float32)])
    nan = [np.ones(s, np.float32) for s in SHAPES]
    nan[1][3] = np.nan
    opt.check_finite = True
    with pytest.raises(FloatingPointError, match=r"grads at \[1\]"):
        opt.step(params, nan)
    sd = opt.state_dict()
    last = MOMENTS[kind][-1][0]  # AdamW8bit: exp_avg_sq, Lion8bit: exp_avg
    sd[f"{last}_absmax.2"] = np.full_like(sd[f"{last}_absmax.2"], -1.0)
    with pytest.raises(ValueError, match="absmax"):
        opt.load_state_dict(sd)
    sd = opt.state_dict()
    sd["exp_avg.0"] = sd["exp_avg.0"].astype(np.float32)
    with pytest.raises(TypeError, match="exp_avg at \\[0\\]: expected a uint8 array"):
        opt.load_state_dict(sd)
    _unchanged(opt, params, snap)
    assert opt.step_count == 1
    with pytest.raises(ValueError, match="block_size"):
        opt.block_size = 128
    with pytest.raises(ValueError, match="max_grad_norm"):
        opt.max_grad_norm = 1.0
    assert opt.block_size == 64


@pytest.mark.parametrize("kind,message", [("AdamW8bit", "Adam8bit and AdamW8bit step"), ("Lion8bit", "Lion8bit steps")])
def test_float64_and_bad_options_are_refused(kind, message):
    cls = getattr(optim, kind)
    with pytest.raises(TypeError, match=rf"params at \['w'\]: {message} float32 parameters, got float64"):
        cls().step({"w": np.zeros(3)}, {"w": np.zeros(3)})
    for bad in (100, 8, 8192, 0, -256):
        with pytest.raises(ValueError, match="block_size must be a power of two from 16 to 4096"):
            cls(block_size=bad)
    for bad in (256.0, True, "256", None):
        with pytest.raises(TypeError, match="block_size must be an int"):
            cls(block_size=bad)
    with pytest.raises(ValueError, match="min_8bit_size must be an int >= 0, got -1"):
        cls(min_8bit_size=-1)
    with pytest.raises(TypeError, match="min_8bit_size must be an int, got 1.5"):
        cls(min_8bit_size=1.5)
    with pytest.raises(ValueError, match="betas"):
        cls(betas=(1.0, 0.9))


# -- a training run ------------------------------------------------------------------------
def _logistic(opt, steps=300):
    rng = np.random.default_rng(0)
    n, d = 512, 4096
    x = (rng.standard_normal((n, d)) / np.sqrt(d)).astype(np.float32)
    w_true = rng.standard_normal(d).astype(np.float32)
    y = (x @ w_true > 0).astype(np.float32)
    w = {"w": np.zeros(d, np.float32), "b": np.zeros(1, np.float32)}
    losses = []
    for _ in range(steps):
        z = x @ w["w"] + w["b"][0]
        pr = 1 / (1 + np.exp(-z))
        losses.append(float(np.mean(np.logaddexp(0, z) - y * z)))
        r = ((pr - y) / n).astype(np.float32)
        opt.step(w, {"w": (x.T @ r).astype(np.float32), "b": np.array([r.sum()], np.float32)})
    return np.array(losses)


@pytest.mark.parametrize("kind,lr", [("AdamW8bit", 0.01), ("Lion8bit", 0.002)])
def test_training_loss_within_margin_of_the_float32_class(kind, lr):
    l32 = _logistic(getattr(optim, FLOAT32[kind])(lr=lr, weight_decay=1e-4))
    l8 = _logistic(getattr(optim, kind)(lr=lr, weight_decay=1e-4))
    assert l32[-1] < 0.5 * l32[0]  # it learns
    # every step's loss within 3% of the float32 class's (relative)
    assert np.max(np.abs(l8 - l32) / l32) < 0.03


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 300), min_size=1, max_size=4), block=st.sampled_from([16, 32, 128]),
       least=st.sampled_from([0, 20, 100]), kind=st.sampled_from(["Adam8bit", "AdamW8bit", "Lion8bit"]),
       wd=st.sampled_from([0.0, 0.05]), beta1=st.sampled_from([0.0, 0.3, 0.9]), maximize=st.booleans(),
       scale=st.sampled_from([1e-30, 1e-3, 1.0, 1e6]), seed=st.integers(0, 2 ** 32 - 1))
def test_step_matches_reference_on_drawn_trees(sizes, block, least, kind, wd, beta1, maximize, scale, seed):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    mine = [p.copy() for p in params]
    opt = getattr(optim, kind)(lr=0.01, betas=(beta1, 0.99), weight_decay=wd, maximize=maximize, block_size=block,
                               min_8bit_size=least)
    r = ref.Reference(params, 0.01, betas=(beta1, 0.99), weight_decay=wd, decoupled=kind != "Adam8bit",
                      maximize=maximize, block=block, least=least, rule="lion" if kind == "Lion8bit" else "adam")
    for _ in range(3):
        grads = [(rng.standard_normal(n) * scale).astype(np.float32) for n in sizes]
        opt.step(mine, grads)
        r.step(params, grads)
    _assert_matches(mine, params, opt, r)


@pytest.mark.parametrize("kind", KINDS)
def test_pickle_resumes_bit_for_bit(kind, rng):
    import pickle
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    grads = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    opt = getattr(optim, kind)(lr=0.01, block_size=64, min_8bit_size=64)
    opt.step(params, grads)
    copy = pickle.loads(pickle.dumps(opt))
    a, b = [p.copy() for p in params], [p.copy() for p in params]
    opt.step(a, grads)
    copy.step(b, grads)
    for x, y in zip(a, b):
        _bits_equal(x, y)


def test_training_loss_within_margin_of_bitsandbytes():
    # Optional peer: bitsandbytes' CPU AdamW8bit (its own dynamic map, block 256) on the same data.
    bnb = pytest.importorskip("bitsandbytes")
    torch = pytest.importorskip("torch")

    class Bnb:
        def __init__(self):
            self.opt = self.params = None

        def step(self, params, grads):
            if self.opt is None:
                self.params = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
                self.opt = bnb.optim.AdamW8bit(list(self.params.values()), lr=0.01, weight_decay=1e-4)
            for k, t in self.params.items():
                t.grad = torch.from_numpy(grads[k])
            self.opt.step()
            for k, t in self.params.items():
                params[k][...] = t.detach().numpy()

    lb = _logistic(Bnb())
    l8 = _logistic(optim.AdamW8bit(lr=0.01, weight_decay=1e-4))
    assert np.max(np.abs(l8 - lb) / lb) < 0.03


# -- overlap (docs/aliasing.md) and the step count -------------------------------------------
def _tree_and_grads(rng):
    """Leaf 0 quantized (256 elements, 4 blocks of 64), leaf 1 float32 state (16 elements), leaf 2 the
    size of leaf 0's codes seen as float32 (64), leaf 3 the size of its absmax (4)."""
    shapes = [(256,), (16,), (64,), (4,)]
    return ([rng.standard_normal(s).astype(np.float32) for s in shapes],
            [rng.standard_normal(s).astype(np.float32) for s in shapes])


def _pair(kind):
    return [getattr(optim, kind)(lr=0.01, block_size=64, min_8bit_size=100) for _ in range(2)]


@pytest.mark.parametrize("kind", KINDS)
def test_overlapping_gradient_equals_a_step_on_its_copy(kind, rng):
    """A shifted view of the parameters and the optimizer's own state arrays (codes seen as float32,
    absmax, float32 moments) as gradients, mixed with clean steps at the same addresses (remembered
    after the first): every step has the bits of a twin stepped with copies."""
    opt, twin = _pair(kind)
    params, g = _tree_and_grads(rng)
    last = MOMENTS[kind][-1][0]
    buf = np.concatenate([rng.standard_normal(3).astype(np.float32), params[0]])
    tbuf = buf.copy()
    mine, theirs = [buf[3:]] + params[1:], [tbuf[3:]] + [p.copy() for p in params[1:]]
    opt.init(mine)
    twin.init(theirs)

    def own(o):
        s = o.state_arrays()
        return [buf[:-3] if o is opt else tbuf[:-3], s[last][1], s["exp_avg"][0].view(np.float32),
                s[f"{last}_absmax"][0]]

    for k in range(6):
        grads = g if k % 2 == 0 else own(opt)
        opt.step(mine, grads)
        twin.step(theirs, g if k % 2 == 0 else [a.copy() for a in own(twin)])
        _bits_equal(buf, tbuf)
        for a, b in zip(mine[1:], theirs[1:]):
            _bits_equal(a, b)
        for name, leaves in opt.state_arrays().items():
            for a, b in zip(leaves, twin.state_arrays()[name]):
                _bits_equal(a, b)


@pytest.mark.parametrize("kind,slot,leaf", [
    (kind, f"{name}{suffix}", leaf) for kind in KINDS for name, _ in MOMENTS[kind]
    for suffix, leaf in (("", 1), ("", 0), ("_absmax", 0))])
def test_own_state_as_parameters_is_refused(kind, slot, leaf, rng):
    """Every kind of state array (float32 moments, codes, absmax) in the parameters' place: a ValueError
    naming the parameter and the slot, and nothing changes."""
    opt, _ = _pair(kind)
    params, g = _tree_and_grads(rng)
    opt.step(params, g)
    state = opt.state_arrays()[slot][leaf]
    at = {1: 1, 0: 3 if "absmax" in slot else 2}[leaf]  # the leaf of the state array's float32 shape
    bad = list(params)
    bad[at] = state if state.dtype == np.float32 else state.view(np.float32)
    before, values = opt.state_dict(), [p.copy() for p in params]
    with pytest.raises(ValueError, match=rf"params at \[{at}\]: shares memory with the optimizer's {slot} arena "
                                         r"\(the optimizer's own state cannot be stepped as parameters\)"):
        opt.step(bad, g)
    after = opt.state_dict()
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    for a, b in zip(params, values):
        _bits_equal(a, b)


@pytest.mark.parametrize("kind", ["Adam8bit", "Lion8bit"])
def test_parameters_overlapping_each_other_are_refused_naming_both(kind):
    buf = np.zeros(300, np.float32)
    opt = getattr(optim, kind)(lr=0.1, block_size=64, min_8bit_size=100)
    with pytest.raises(ValueError, match=r"params at \['b'\]: shares memory with params at \['a'\]; each parameter"):
        opt.step({"a": buf[:200], "b": buf[100:]}, {"a": np.ones(200, np.float32), "b": np.ones(200, np.float32)})
    assert not buf.any() and opt.step_count == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("count", [2 ** 63, 2 ** 70, -1])
def test_step_count_out_of_range_is_refused_at_load(kind, count, rng):
    opt, _ = _pair(kind)
    opt.step(*_tree_and_grads(rng))
    state, before = opt.state_dict(), opt.state_dict()
    state["step_count"] = count
    with pytest.raises(ValueError, match=rf"state\['step_count'\] must be in \[0, 2\*\*63 - 1\], got {count}"):
        opt.load_state_dict(state)
    after = opt.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("kind", KINDS)
def test_a_step_that_would_overflow_the_count_is_refused(kind, rng):
    opt, _ = _pair(kind)
    params, g = _tree_and_grads(rng)
    opt.step(params, g)
    state = opt.state_dict()
    state["step_count"] = 2 ** 63 - 1
    opt.load_state_dict(state)
    before, values = opt.state_dict(), [p.copy() for p in params]
    with pytest.raises(ValueError, match=r"step_count is 2\*\*63 - 1.*no further step"):
        opt.step(params, g)
    after = opt.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    for a, b in zip(params, values):
        _bits_equal(a, b)
    opt.load_state_dict(after)  # and the state still loads


# -- an exception from a signal handler (tests/test_interrupts.py's loop) ------------------------
class _Stepper:
    """The interface interrupted_loop steps through: update(target, grads), step_count."""

    def __init__(self, opt):
        self.opt = opt

    def update(self, target, grads):
        self.opt.step(target, grads)

    @property
    def step_count(self):
        return self.opt.step_count


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("schedule", [False, True], ids=["float-lr", "schedule"])
def test_an_exception_from_a_signal_handler_never_leaves_a_half_step(kind, schedule, rng):
    """A timer raises at random points of a loop of steps (the first one creating the state;
    with a schedule every step advances it in Python): a replay of exactly the steps that
    counted has the bits of the parameters and the state."""
    from test_interrupts import interrupted_loop
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in SHAPES] for _ in range(100)]
    lr = fusedopt.schedules.Constant(initial=0.01) if schedule else 0.01
    opt = getattr(optim, kind)(lr=lr, block_size=64, min_8bit_size=64)
    target = [p.copy() for p in params]
    counted, interrupted = [], 0
    for _ in range(3):
        c, i = interrupted_loop(_Stepper(opt), target, grads, None, rng)
        counted += c
        interrupted += i
    assert interrupted > 0, "the timer never interrupted a step: the test tested nothing"
    assert counted and opt.step_count == len(counted)
    rate = float(np.float32(0.01)) if schedule else 0.01  # a schedule's values are float32
    r = ref.Reference([p.copy() for p in params], rate, block=64, least=64, rule="lion" if kind == "Lion8bit" else "adam",
                      betas=opt.betas, weight_decay=opt.weight_decay)
    for g in counted:
        r.step(params, g)
    _assert_matches(target, params, opt, r)


def test_a_rule_without_an_8bit_state_is_refused():
    plan = _core.Plan([np.zeros(3, np.float32)], "params", low_precision=True)
    with pytest.raises(ValueError, match="rule: SGD has no 8-bit state"):
        _core.Quant8State(plan, [True], _core.OptimHyper(), 256, 0, _core.OptimRule.SGD)
    state = _core.Quant8State(plan, [True], _core.OptimHyper(), 256, 0, _core.OptimRule.LION)
    assert state.slot_names == ["exp_avg", "exp_avg_absmax"] and state.rule == _core.OptimRule.LION
