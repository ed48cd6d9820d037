"""fusedopt.distributed's pieces that need no MPI: the flat layout and its shards, the native
rank average and FlatPack, and the import rules (`import fusedopt` never needs MPI)."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import fusedopt
from fusedopt import _core
from fusedopt._dist_layout import ALIGN, Layout, aligned_bytes

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


# -- imports -------------------------------------------------------------------------------------
def _python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_import_fusedopt_never_needs_mpi():
    proc = _python("import sys, fusedopt, fusedopt.optimizers\nassert 'mpi4py' not in sys.modules, 'mpi4py imported'")
    assert proc.returncode == 0, proc.stderr


def test_distributed_without_mpi4py_names_the_extra():
    proc = _python("import sys; sys.modules['mpi4py'] = None\nimport fusedopt.distributed")
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and "fusedopt[mpi]" in proc.stderr, proc.stderr
