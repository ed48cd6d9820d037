"""fusedopt.distributed's pieces that run in one process: the flat layout and its shards, the
native rank average and FlatPack. They live in fusedopt.distributed, which needs mpi4py to import
(the import rules are in test_distributed_import.py, run also where mpi4py is absent)."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import fusedopt
from fusedopt import _core, optimizers

pytest.importorskip("mpi4py", reason="fusedopt.distributed needs mpi4py (pip install 'fusedopt[mpi]')")
from fusedopt.distributed._layout import ALIGN, Layout, aligned_bytes

SETTINGS = settings(max_examples=int(os.environ.get("FUSEDOPT_HYPOTHESIS_EXAMPLES", 60)), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])  # restore_num_threads: once is enough

leaf_specs = st.lists(st.tuples(st.integers(0, 300), st.sampled_from(["float32", "float64"])), min_size=1,
                      max_size=8)


def _tree(spec, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(d) for n, d in spec]


# -- the layout ------------------------------------------------------------------------------
@SETTINGS
@given(spec=leaf_specs, size=st.integers(1, 7))
def test_shards_cover_the_data_once_aligned_and_balanced(spec, size):
    tree = _tree(spec)
    plan = _core.Plan(tree, "grad")
    lays = [Layout(plan, size, r) for r in range(size)]
    lay = lays[0]
    data = sum(a.nbytes for a in tree)
    assert lay.nbytes == -(-data // ALIGN) * ALIGN
    # Consecutive 64-byte aligned ranges covering [0, nbytes).
    assert lay.bounds[0][0] == 0 and lay.bounds[-1][1] == lay.nbytes
    for (a, b), (c, _) in zip(lay.bounds, lay.bounds[1:]):
        assert a <= b == c and a % ALIGN == 0
    # Every element of every leaf is in exactly one rank's pieces, and no rank holds more
    # than data / N + 64 bytes of it.
    seen = [np.zeros(a.size, int) for a in tree]
    for r, lr in enumerate(lays):
        held = 0
        for leaf, b, e, off in lr.pieces:
            seen[leaf][b:e] += 1
            item = tree[leaf].itemsize
            assert lr.lo + off == lr.offsets[leaf] + b * item  # where the piece sits in the flat buffer
            held += (e - b) * item
        assert held < data / size + ALIGN and held <= lr.hi - lr.lo
    assert all((s == 1).all() for s in seen)


@SETTINGS
@given(spec=leaf_specs, size=st.integers(1, 5), seed=st.integers(0, 2 ** 32 - 1))
def test_pack_then_shard_pieces_are_the_leaves_parts(spec, size, seed):
    tree = _tree(spec, seed)
    plan = _core.Plan(tree, "grad")
    for rank in range(size):
        lay = Layout(plan, size, rank)
        lay.pack.pack(plan.flatten(tree), lay.send, "grad")
        pieces = lay.shard_pieces(lay.send[lay.lo:lay.hi])
        expected = [tree[leaf][b:e] for leaf, b, e, _ in lay.pieces] or [np.zeros(0, np.float32)]
        assert len(pieces) == len(expected)
        for got, want in zip(pieces, expected):
            assert got.dtype == want.dtype and np.array_equal(got, want)
        # The float32 / float64 parts of the shard are exactly its pieces of each dtype.
        n32 = sum(e - b for leaf, b, e, _ in lay.pieces if tree[leaf].dtype == np.float32)
        n64 = sum(e - b for leaf, b, e, _ in lay.pieces if tree[leaf].dtype == np.float64)
        assert lay.part64.count == n64 and lay.part64.offset == 0
        assert lay.part32.count == n32  # the end padding is never averaged
        assert lay.counts[rank] == 8 * n64 + 4 * n32  # the shard's data bytes, without padding
        assert sum(lay.counts) == lay.data == sum(a.nbytes for a in tree)
        # unflatten(views) rebuilds the whole tree from the flat buffer.
        back = lay.tree(lay.send)
        assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(back, tree))


# -- the rank average --------------------------------------------------------------------------
def _reference_average(rows, divisor):
    s = rows[0].copy()
    for r in rows[1:]:
        np.add(s, r, out=s)
    return np.divide(s, s.dtype.type(divisor), out=s)


@SETTINGS
@given(k=st.integers(1, 6), n32=st.integers(0, 40000), n64=st.integers(0, 3000), seed=st.integers(0, 2 ** 32 - 1),
       threads=st.sampled_from([1, 2]))
def test_rank_average_is_the_rank_order_sum_divided(k, n32, n64, seed, threads, restore_num_threads):
    """Bit for bit the NumPy sum in rank order, then the division, at every thread count."""
    fusedopt.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    stride = -(-(8 * n64 + 4 * n32) // 64) * 64
    recv = aligned_bytes(k * stride)
    rows64 = [recv[r * stride:r * stride + 8 * n64].view(np.float64) for r in range(k)]
    rows32 = [recv[r * stride + 8 * n64:r * stride + 8 * n64 + 4 * n32].view(np.float32) for r in range(k)]
    for row in rows64 + rows32:
        row[...] = rng.standard_normal(row.size) * 10.0 ** rng.integers(-20, 20, row.size)
    out = aligned_bytes(stride)
    rows = [recv[r * stride:(r + 1) * stride] for r in range(k)]
    _core.rank_average(rows, out, 8 * n64, n32, 0, n64, k)
    assert np.array_equal(out[:8 * n64].view(np.float64), _reference_average(rows64, k))
    assert np.array_equal(out[8 * n64:8 * n64 + 4 * n32].view(np.float32), _reference_average(rows32, k))


@SETTINGS
@given(k=st.integers(1, 5), n=st.integers(0, 30000), own=st.integers(0, 4), seed=st.integers(0, 2 ** 32 - 1))
def test_rank_average_of_separate_rows_in_rank_order(k, n, own, seed):
    """Rows in buffers of their own (one read-only, as a caller's gradient may be): the sum
    still goes row 0, 1, 2, ... in list order, whatever buffer each row lives in."""
    rng = np.random.default_rng(seed)
    rows32 = [(rng.standard_normal(n) * 10.0 ** rng.integers(-20, 20, n)).astype(np.float32) for _ in range(k)]
    rows32[own % k].flags.writeable = False
    out = aligned_bytes(4 * n)
    _core.rank_average([r.view(np.uint8) for r in rows32], out, 0, n, 0, 0, k)
    assert np.array_equal(out.view(np.float32), _reference_average(rows32, k))
    # Reordered rows give the reordered sum, so the list order is the order summed.
    flipped = rows32[::-1]
    _core.rank_average([r.view(np.uint8) for r in flipped], out, 0, n, 0, 0, k)
    assert np.array_equal(out.view(np.float32), _reference_average(flipped, k))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [1, 2, 4, 8, 3])
def test_rank_average_by_a_power_of_two_keeps_the_division_bits_at_the_edges(dtype, k):
    """A power-of-two N multiplies by 1/N: the same bits as NumPy's division for subnormal
    results, the smallest subnormal, signed zeros, Inf and NaN (every SIMD level, every lane)."""
    info = np.finfo(dtype)
    edge = np.array([info.smallest_subnormal, -info.smallest_subnormal, 3 * info.smallest_subnormal,
                     info.smallest_normal, -info.smallest_normal * 1.5, info.max, -info.max, 0.0, -0.0,
                     np.inf, -np.inf, np.nan, 1.0, -3.0, 7 * info.smallest_subnormal], dtype)
    row = np.resize(edge, 16 * 7 + 5)  # vectors and a tail
    rows = [row.copy() for _ in range(k)]
    rows[-1][::3] = 0.0
    out = aligned_bytes(row.nbytes)
    off32, n32, off64, n64 = (0, row.size, 0, 0) if dtype == np.float32 else (0, 0, 0, row.size)
    with np.errstate(all="ignore"):  # max + max overflows to Inf, inf - inf is NaN: on purpose
        want = _reference_average(rows, k).view(np.uint8)
    before = _core.simd_level()
    for level in _core.simd_levels_supported():
        _core._set_simd_level(level)
        try:
            _core.rank_average([r.view(np.uint8) for r in rows], out, off32, n32, off64, n64, k)
        finally:
            _core._set_simd_level(before)
        assert np.array_equal(out, want), level


def test_rank_average_in_place_divides_only():
    buf = aligned_bytes(64)
    x = buf.view(np.float32)
    x[...] = np.arange(16, dtype=np.float32) * np.float32(0.3)
    expected = x / np.float32(3)
    _core.rank_average([buf], buf, 0, 16, 0, 0, 3)
    assert np.array_equal(x, expected)


def test_rank_average_refuses_short_or_misaligned_buffers():
    buf, other = aligned_bytes(128), aligned_bytes(64)
    with pytest.raises(ValueError, match="at least"):
        _core.rank_average([buf[:32], other], other, 0, 16, 0, 0, 2)
    with pytest.raises(ValueError, match="misaligned"):
        _core.rank_average([buf], buf, 2, 4, 0, 0, 2)
    with pytest.raises(ValueError, match="misaligned"):
        _core.rank_average([buf[1:65]], other, 0, 4, 0, 0, 2)
    with pytest.raises(ValueError, match="uint8"):
        _core.rank_average([buf.view(np.float32)], buf, 0, 16, 0, 0, 2)
    with pytest.raises(ValueError, match="at least one row"):
        _core.rank_average([], buf, 0, 16, 0, 0, 2)
    # out written before later rows are read: only row 0 itself may be out.
    with pytest.raises(ValueError, match="overlaps"):
        _core.rank_average([other, buf[:64]], buf[32:96], 0, 16, 0, 0, 2)
    with pytest.raises(ValueError, match="overlaps"):
        _core.rank_average([buf[:64], other], buf[32:96], 0, 16, 0, 0, 2)


# -- the rank average inside the step (State.average_next) ----------------------------------------
RULES = {"Gradient": lambda: optimizers.Gradient(0.05), "Momentum": lambda: optimizers.Momentum(0.02, momentum=0.8),
         "RMSProp": lambda: optimizers.RMSProp(0.01), "ADAM": lambda: optimizers.ADAM(0.01)}


class _Model:
    def __init__(self):
        self.deltas = []

    def parameter_update(self, delta):
        self.deltas.append([d.copy() for d in delta])


def _rows_and_base(rng, k, n32, n64):
    """k rows of one shard's bytes (float64 part first, then float32) and an empty base."""
    nbytes = -(-(8 * n64 + 4 * n32) // 64) * 64
    rows = [aligned_bytes(nbytes) for _ in range(k)]
    for row in rows:
        row[:8 * n64].view(np.float64)[...] = rng.standard_normal(n64) * 10.0 ** rng.integers(-20, 20, n64)
        row[8 * n64:8 * n64 + 4 * n32].view(np.float32)[...] = rng.standard_normal(n32) * 10.0 ** rng.integers(-8, 8, n32)
    return rows, aligned_bytes(nbytes, zero=True)


def _pieces(buf, n32, n64):
    return [buf[:8 * n64].view(np.float64), buf[8 * n64:8 * n64 + 4 * n32].view(np.float32)]


@SETTINGS
@given(rule=st.sampled_from(sorted(RULES)), k=st.integers(1, 5), n32=st.integers(0, 9000), n64=st.integers(0, 3000),
       inplace=st.booleans(), threads=st.sampled_from([1, 2]), seed=st.integers(0, 2 ** 32 - 1))
def test_step_averaging_rows_is_the_step_on_the_averaged_pass(rule, k, n32, n64, inplace, threads, seed,
                                                              restore_num_threads):
    """A step whose kernel averages the rows itself gives the bits of the separate pass
    (rank_average, the rank-order sum then the division) followed by the step, on both paths;
    the base is never written."""
    fusedopt.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    ref, fused = RULES[rule](), RULES[rule]()
    p_ref = [rng.standard_normal(n64), rng.standard_normal(n32).astype(np.float32)]
    p_fused = [a.copy() for a in p_ref]
    m_ref, m_fused = _Model(), _Model()
    for _ in range(3):
        rows, base = _rows_and_base(rng, k, n32, n64)
        averaged = aligned_bytes(base.nbytes)
        _core.rank_average(rows, averaged, 8 * n64, n32, 0, n64, k)
        ref.update(p_ref if inplace else m_ref, _pieces(averaged, n32, n64))
        fused._memory._native.average_next(rows, base, float(k))
        fused.update(p_fused if inplace else m_fused, _pieces(base, n32, n64))
        assert not base.any()
    for a, b in zip(p_ref, p_fused):
        assert np.array_equal(a, b)
    for a, b in zip(m_ref.deltas, m_fused.deltas):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    for name in ("mean_gradient", "mean_square_gradient"):
        mr, mf = getattr(ref._memory, name, None), getattr(fused._memory, name, None)
        assert (mr is None) == (mf is None)
        if mr is not None:
            assert all(np.array_equal(x, y) for x, y in zip(mr, mf))
    assert ref.check_convergence() == fused.check_convergence()


def test_rows_that_overlap_what_the_step_writes_are_averaged_first():
    """A row sharing memory with the parameters it steps (shifted by one element) would be read
    while it is written: the leaf is averaged into the base before the kernel, NumPy's order."""
    n = 5000
    for shift in (-1, 1):
        buf = np.linspace(-1, 1, n + 1, dtype=np.float32)
        params = buf[1:] if shift < 0 else buf[:-1]
        row = buf[:-1] if shift < 0 else buf[1:]
        other = np.full(n, 0.25, np.float32)
        expected_avg = (row + other) / np.float32(2)
        ref_p = params.copy()
        optimizers.ADAM(0.01).update(ref_p, expected_avg)
        opt, base = optimizers.ADAM(0.01), np.zeros(n, np.float32)
        opt._memory._native.average_next([row.view(np.uint8), other.view(np.uint8)], base.view(np.uint8), 2.0)
        opt.update(params, base)
        assert np.array_equal(params, ref_p), shift
        assert not base.any()  # averaged into an array of its own: the base is never written


def test_a_base_that_is_the_parameters_is_never_written():
    """The gradient's leaves lie in the parameters' own memory (the base): the step reads the
    rows' average, and the parameters get p - lr * average, not the average."""
    p = np.full(8, 10.0, np.float32)
    opt = optimizers.Gradient(0.5)
    opt._memory._native.average_next([np.full(8, 4.0, np.float32).view(np.uint8)], p.view(np.uint8), 2.0)
    opt.update([p], [p])
    assert np.array_equal(p, np.full(8, 9.0, np.float32))


def test_a_refused_step_leaves_the_base_and_rows_as_they_were():
    base = np.full(4, 8.0, np.float32)  # row 0 is the base itself, as the wrapper's in-place sum
    opt = optimizers.Gradient(0.5, check_finite=True)
    params = [np.zeros(4, np.float32), np.zeros(1, np.float32)]
    opt._memory._native.average_next([base.view(np.uint8)], base.view(np.uint8), 2.0)
    with pytest.raises(FloatingPointError, match=r"grad at \[1\]"):
        opt.update(params, [base, np.array([np.nan], np.float32)])
    assert np.array_equal(base, np.full(4, 8.0, np.float32))
    assert not params[0].any() and opt.step_count == 0


def test_check_finite_sees_the_average():
    rows = [np.array([1.0, np.inf], np.float32), np.array([1.0, 2.0], np.float32)]
    opt, base, p = optimizers.Gradient(0.5, check_finite=True), np.zeros(2, np.float32), np.zeros(2, np.float32)
    opt._memory._native.average_next([r.view(np.uint8) for r in rows], base.view(np.uint8), 2.0)
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        opt.update(p, base)
    assert not p.any() and opt.step_count == 0


def test_rows_serve_one_step_only_even_a_refused_one():
    rows = [np.full(16, 3.0, np.float32).view(np.uint8)]
    opt, base, p = optimizers.Gradient(1.0), np.zeros(16, np.float32), np.zeros(16, np.float32)
    native = opt._memory._native
    native.average_next(rows, base.view(np.uint8), 1.0)
    with pytest.raises(TypeError, match="float32"):
        opt.update(p, base.astype(np.float16))  # refused: nothing changes, the rows are dropped
    opt.update(p, base)  # reads the base itself (zeros)
    assert not p.any()
    native.average_next(rows, base.view(np.uint8), 1.0)
    opt.update(p, base)
    assert np.array_equal(p, np.full(16, -3.0, np.float32))


def test_average_next_refuses_bad_rows():
    opt, base = optimizers.Gradient(1.0), aligned_bytes(64)
    native = opt._memory._native
    with pytest.raises(TypeError, match="writeable"):
        ro = aligned_bytes(64)
        ro.flags.writeable = False
        native.average_next([base], ro, 1.0)
    with pytest.raises(TypeError, match="non-empty list"):
        native.average_next([], base, 1.0)
    with pytest.raises(TypeError, match="C-contiguous"):
        native.average_next([np.zeros(128, np.uint8)[::2]], base, 1.0)
    for divisor in (0.0, 0.5, 2.5, 2.0 ** 25, float("nan")):  # the number of ranks, exact in float32
        with pytest.raises(ValueError, match="whole number"):
            native.average_next([base], base, divisor)
    native.average_next([aligned_bytes(32)], base, 1.0)  # too short for the leaf below
    with pytest.raises(ValueError, match="row 0 of the average does not hold"):
        opt.update(np.zeros(16, np.float32), base.view(np.float32))
    # A leaf only partly inside the base, or a strided view of it, would be read unaveraged.
    wide = aligned_bytes(128)
    for leaf in (wide[32:96].view(np.float32), wide.view(np.float32)[::2]):
        native.average_next([aligned_bytes(128)], wide[:64], 1.0)
        with pytest.raises(ValueError, match="wholly inside the base"):
            opt.update(np.zeros(leaf.shape, np.float32), leaf)


# -- FlatPack ------------------------------------------------------------------------------------
def _pack_for(tree):
    plan = _core.Plan(tree, "grad")
    lay = Layout(plan, 1, 0)
    return plan, lay


def test_pack_checks_every_leaf_and_names_it():
    tree = {"a": np.zeros((2, 3), np.float32), "b": [np.zeros(4), np.zeros(1, np.float32)]}
    plan, lay = _pack_for(tree)
    bad = {"a": np.zeros((2, 3), np.float32), "b": [np.zeros(4, np.float32), np.zeros(1, np.float32)]}
    with pytest.raises(TypeError, match=r"grad at \['b'\]\[0\]: expected a float64 numpy array, got dtype float32"):
        lay.pack.pack(plan.flatten(bad), lay.send, "grad")
    bad = {"a": np.zeros((3, 2), np.float32), "b": tree["b"]}
    with pytest.raises(ValueError, match=r"grad at \['a'\]: expected shape \(2, 3\), got \(3, 2\)"):
        lay.pack.pack(plan.flatten(bad), lay.send, "grad")
    ro = np.zeros(4)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"params at \['b'\]\[0\]: the array is read-only"):
        lay.pack.check(plan.flatten({"a": tree["a"], "b": [ro, tree["b"][1]]}), "params", True)
    strided = np.zeros((2, 6), np.float32)[:, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        lay.pack.check(plan.flatten({"a": strided, "b": tree["b"]}), "params", True)


def test_pack_accepts_strided_gradients_and_unpack_writes_back():
    rng = np.random.default_rng(5)
    base = rng.standard_normal((3, 4)).astype(np.float32)
    tree = [np.zeros((3, 2), np.float32), rng.standard_normal(5)]
    plan, lay = _pack_for(tree)
    lay.pack.pack([base[:, ::2], tree[1]], lay.send, "grad")
    back = lay.tree(lay.send)
    assert np.array_equal(back[0], base[:, ::2]) and np.array_equal(back[1], tree[1])
    out = [np.empty((3, 2), np.float32), np.empty(5)]
    lay.pack.unpack(lay.send, out, "params")
    assert np.array_equal(out[0], base[:, ::2]) and np.array_equal(out[1], tree[1])


def test_pack_and_unpack_of_a_byte_range():
    tree = [np.arange(40, dtype=np.float32), np.arange(10, dtype=np.float64)]
    plan, lay = _pack_for(tree)
    lo, hi = 64, 192  # inside the float64 leaf (bytes 0..80) and the float32 one (80..240)
    part = aligned_bytes(hi - lo)
    lay.pack.pack(plan.flatten(tree), part, "grad", lo, hi)
    full = aligned_bytes(lay.nbytes)
    lay.pack.pack(plan.flatten(tree), full, "grad")
    assert np.array_equal(part, full[lo:hi])
    out = [np.zeros(40, np.float32), np.zeros(10)]
    lay.pack.unpack(part, out, "params", lo, hi)
    assert np.array_equal(out[1][8:], tree[1][8:]) and not out[1][:8].any()
    assert np.array_equal(out[0][:28], tree[0][:28]) and not out[0][28:].any()
