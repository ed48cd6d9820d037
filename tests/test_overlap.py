"""Memory overlap between the arrays of a step (docs/threads.md, "Aliasing and
overlap"): a gradient that shares memory with anything the step writes is read
as a copy taken before the step (numpy's ``p - lr * g.copy()``); parameters that
share memory with each other or with the optimizer's own state are refused."""
import copy

import numpy as np
import pytest

import fusedopt
from fusedopt import _core, optimizers

LEVELS = _core.simd_levels_supported()
from paysage_cases import CLASSES as KINDS  # noqa: E402


def steady(kind, rng, n, dtype):
    """An optimizer after two steps on a separate array (its moments exist)."""
    opt = KINDS[kind](0.5)
    p = np.zeros(n, dtype)
    for _ in range(2):
        opt.update(p, rng.standard_normal(n).astype(dtype))
    return opt


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shift", [1, -1, 7, -33])
def test_gradient_overlapping_its_parameter_reads_a_copy(level, dtype, shift, restore_simd_level, rng):
    _core._set_simd_level(level)
    n = 1001
    buf = rng.standard_normal(n + abs(shift)).astype(dtype)
    p, g = (buf[shift:], buf[:-shift]) if shift > 0 else (buf[:shift], buf[-shift:])
    expected = p - dtype(0.5) * g.copy()  # numpy's result: the gradient as it was
    optimizers.Gradient(0.5).update(p, g)
    assert np.array_equal(p, expected)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_overlapping_gradient_equals_a_step_on_its_copy(level, kind, restore_simd_level, rng):
    """Every optimizer, steady state: the same bits as a twin stepped with a copy."""
    _core._set_simd_level(level)
    n = 5000
    opt = steady(kind, rng, n - 3, np.float32)
    buf = rng.standard_normal(n).astype(np.float32)
    twin, twin_buf = copy.deepcopy(opt), buf.copy()
    opt.update(buf[3:], buf[:-3])
    twin.update(twin_buf[3:], twin_buf[:-3].copy())
    assert np.array_equal(buf, twin_buf)
    for a, b in ((opt.memory.mean_gradient, twin.memory.mean_gradient),
                 (opt.memory.mean_square_gradient, twin.memory.mean_square_gradient)) if kind != "gradient" else ():
        assert (a is None) == (b is None)
        if a is not None:
            assert np.array_equal(a, b)


@pytest.mark.parametrize("level", LEVELS)
def test_moment_view_as_gradient_reads_a_copy(level, restore_simd_level, rng):
    """The mean itself as the gradient: m = w*m + (1-w)*m_old, as numpy would."""
    _core._set_simd_level(level)
    opt = steady("adam", rng, 3000, np.float32)
    twin = copy.deepcopy(opt)
    p = rng.standard_normal(3000).astype(np.float32)
    q = p.copy()
    opt.update(p, opt.memory.mean_gradient)
    twin.update(q, twin.memory.mean_gradient.copy())
    assert np.array_equal(p, q)
    assert np.array_equal(opt.memory.mean_gradient, twin.memory.mean_gradient)
    assert np.array_equal(opt.memory.mean_square_gradient, twin.memory.mean_square_gradient)


@pytest.mark.parametrize("level", LEVELS)
def test_paysage_path_overlapping_gradient_and_moment(level, restore_simd_level, rng):
    _core._set_simd_level(level)

    class Model:
        def parameter_update(self, delta):
            self.delta = delta

    opt = steady("rmsprop", rng, 500, np.float64)
    twin = copy.deepcopy(opt)
    model, twin_model = Model(), Model()
    opt.update(model, opt.memory.mean_square_gradient)
    twin.update(twin_model, twin.memory.mean_square_gradient.copy())
    assert np.array_equal(model.delta, twin_model.delta)
    assert np.array_equal(opt.memory.mean_square_gradient, twin.memory.mean_square_gradient)


@pytest.mark.parametrize("which", ["mean_gradient", "mean_square_gradient"])
def test_own_moment_as_parameters_is_refused(which, rng):
    opt = steady("adam", rng, 300, np.float32)
    target = getattr(opt.memory, which)
    saved = [opt.memory.mean_gradient.copy(), opt.memory.mean_square_gradient.copy()]
    count = opt.step_count
    with pytest.raises(ValueError, match="params.*shares memory with the optimizer's (mean|mean square) arena"):
        opt.update(target, rng.standard_normal(300).astype(np.float32))
    assert np.array_equal(opt.memory.mean_gradient, saved[0])
    assert np.array_equal(opt.memory.mean_square_gradient, saved[1])
    assert opt.step_count == count


def test_own_moment_leaf_in_a_tree_of_parameters_is_refused(rng):
    opt = optimizers.Momentum(0.1)
    params = {"a": np.zeros(40, np.float32), "b": np.zeros(9, np.float64)}
    grad = {"a": np.ones(40, np.float32), "b": np.ones(9, np.float64)}
    opt.update(params, grad)
    opt.update(params, grad)
    bad = {"a": params["a"], "b": opt.memory.mean_gradient["b"]}
    before = [x.copy() for x in (params["a"], opt.memory.mean_gradient["a"], opt.memory.mean_gradient["b"])]
    with pytest.raises(ValueError, match=r"params at \['b'\].*mean arena"):
        opt.update(bad, grad)
    after = (params["a"], opt.memory.mean_gradient["a"], opt.memory.mean_gradient["b"])
    assert all(np.array_equal(x, y) for x, y in zip(before, after))


def test_two_overlapping_parameter_leaves_are_refused_naming_both():
    buf = np.zeros(100, np.float32)
    params = [buf[:60], buf[50:]]
    grad = [np.ones(60, np.float32), np.ones(50, np.float32)]
    with pytest.raises(ValueError, match=r"params at \[[01]\]: shares memory with params at \[[01]\]"):
        optimizers.Gradient(0.1).update(params, grad)
    assert not buf.any()


def test_gradient_leaves_sharing_memory_with_each_other_are_fine(rng):
    """Gradients are only read: one array used for two leaves is no overlap to refuse."""
    g = rng.standard_normal(64).astype(np.float32)
    params = [np.zeros(64, np.float32), np.zeros(64, np.float32)]
    optimizers.Gradient(0.25).update(params, [g, g])
    assert np.array_equal(params[0], np.float32(0) - np.float32(0.25) * g)
    assert np.array_equal(params[1], params[0])


def test_gradient_memory_update_with_its_own_mean(rng):
    """GradientMemory.update(mean_gradient): the moments update from the old mean."""
    mem = optimizers.GradientMemory(0.5, 0.25)
    mem.update(rng.standard_normal(100).astype(np.float32))
    mem.update(rng.standard_normal(100).astype(np.float32))
    m0, v0 = mem.mean_gradient.copy(), mem.mean_square_gradient.copy()
    mem.update(mem.mean_gradient)
    w, w2 = np.float32(0.5), np.float32(0.25)
    assert np.array_equal(mem.mean_gradient, (w * m0) + ((np.float32(1) - w) * m0))
    assert np.array_equal(mem.mean_square_gradient, (w2 * v0) + (((np.float32(1) - w2) * m0) * m0))


def test_no_threads_change_overlap_results(restore_num_threads, rng):
    """A large overlapping step: chunks of the copy, not of the live array, on every thread count."""
    buf = rng.standard_normal(200_001).astype(np.float32)
    results = []
    for threads in (1, 2):
        fusedopt.set_num_threads(threads)
        b = buf.copy()
        optimizers.Gradient(0.5).update(b[1:], b[:-1])
        results.append(b)
    expected = buf.copy()
    expected[1:] = buf[1:] - np.float32(0.5) * buf[:-1]
    assert all(np.array_equal(r, expected) for r in results)


@pytest.mark.parametrize("kind", ["momentum", "adam"])
@pytest.mark.parametrize("path", ["in place", "paysage"])
def test_addresses_that_passed_before_are_checked_again_when_they_change(kind, path, rng):
    """The native state skips the overlap check for the addresses of its last two clean steps
    (the paysage path alternates two moment buffers); a run mixing clean steps, a gradient
    aliasing its parameter and the optimizer's own moment as parameters must give, at every
    step, what a twin stepped with copies gives, and refuse the moment every time."""
    n = 257
    opt, twin = KINDS[kind](0.5), KINDS[kind](0.5)
    buf, g = rng.standard_normal(n + 1).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    tbuf = buf.copy()
    p, tp = buf[1:], tbuf[1:]

    class Model:  # the paysage path: parameter_update(delta) subtracts it from p
        def __init__(self, x):
            self.x = x

        def parameter_update(self, delta):
            self.x -= delta

    def step(o, params, grad):
        o.update(params if path == "in place" else Model(params), grad)

    for k in range(14):
        case = k % 7
        if case in (0, 1, 2, 4, 6):  # clean steps at the same addresses (cached after the first)
            step(opt, p, g)
            step(twin, tp, g.copy())
        elif case == 3:  # a gradient overlapping its parameter: read as a copy taken before the step
            step(opt, p, buf[:-1])
            step(twin, tp, tbuf[:-1].copy())
        elif path == "in place":  # case 5: the optimizer's own mean as parameters
            before = opt.memory.mean_gradient.copy()
            with pytest.raises(ValueError, match="shares memory with the optimizer's mean arena"):
                opt.update(opt.memory.mean_gradient, g)
            assert np.array_equal(opt.memory.mean_gradient, before)
        else:  # case 5, paysage path: the mean as the gradient is read as a copy
            m = opt.memory.mean_gradient
            step(twin, tp, twin.memory.mean_gradient.copy())
            step(opt, p, m)
        assert np.array_equal(p, tp), k
        assert np.array_equal(opt.memory.mean_gradient, twin.memory.mean_gradient), k
        assert opt.step_count == twin.step_count
