"""Memory overlap between the arrays of a step (docs/aliasing.md): in the numpy
families a gradient that shares memory with anything the step writes is read as
a copy taken before the step (numpy's ``p - lr * g.copy()``), fusedopt.torch
refuses it; parameters that share memory with each other or with the
optimizer's own state are refused by every family."""
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


# -- fusedopt.optim: the same rule (issue 22, items 1 and 2) -----------------------------------
OPTIM_KINDS = [
    ("SGD", {"momentum": 0.9, "nesterov": True}),
    ("SGD", {}),
    ("Adam", {"amsgrad": True, "weight_decay": 0.1}),
    ("AdamW", {}),
    ("RMSprop", {"centered": True, "momentum": 0.3}),
    ("Adagrad", {"initial_accumulator_value": 0.5, "lr_decay": 0.1}),
    ("Lion", {"weight_decay": 0.1}),
    ("NAdam", {"weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("RAdam", {"weight_decay": 0.1, "betas": (0.5, 0.9)}),
    ("Adamax", {"weight_decay": 0.1}),
    ("Adadelta", {"weight_decay": 0.1}),
    ("ASGD", {"t0": 2, "lambd": 0.01}),
    ("Rprop", {"step_sizes": (1e-3, 0.5)}),
]


def optim_pair(name, hyper):
    from fusedopt import optim
    return [getattr(optim, name)(lr=0.25, **hyper) for _ in range(2)]


def test_optim_sgd_gradient_overlapping_its_parameter_reads_it_before_the_step():
    """The issue's example: numpy's p - lr * g.copy() is [1, 1.5, 2, 2.5, 3, 3.5]."""
    from fusedopt import optim
    buf = np.arange(7, dtype=np.float32)
    optim.SGD(lr=0.5).step(buf[1:], buf[:-1])
    assert buf.tolist() == [0, 1, 1.5, 2, 2.5, 3, 3.5]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name,hyper", OPTIM_KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optim_overlapping_gradient_equals_a_step_on_its_copy(level, name, hyper, dtype, restore_simd_level, rng):
    """Shifted views and the optimizer's own state as the gradient, mixed with clean steps at the
    same addresses (remembered after the first): at every step the bits of a twin stepped with copies."""
    _core._set_simd_level(level)
    n = 3001
    opt, twin = optim_pair(name, hyper)
    buf = rng.standard_normal(n + 5).astype(dtype)
    tbuf = buf.copy()
    g = rng.standard_normal(n).astype(dtype)
    p, tp = buf[5:], tbuf[5:]
    for k in range(9):
        case = k % 3
        if case == 0:
            opt.step([p], [g])
            twin.step([tp], [g.copy()])
        elif case == 1:
            opt.step([p], [buf[:-5]])
            twin.step([tp], [tbuf[:-5].copy()])
        else:
            slots = opt.state_arrays()
            if not slots:
                continue
            slot = sorted(slots)[k % len(slots)]
            opt.step([p], slots[slot])
            twin.step([tp], [twin.state_arrays()[slot][0].copy()])
        assert np.array_equal(buf, tbuf), k
        for slot, leaves in opt.state_arrays().items():
            assert np.array_equal(leaves[0], twin.state_arrays()[slot][0]), (k, slot)


@pytest.mark.parametrize("name,hyper", [kind for kind in OPTIM_KINDS if kind != ("SGD", {})])
def test_optim_own_state_as_parameters_is_refused(name, hyper, rng):
    """Item 2: every slot, as the whole parameter tree or as one leaf of it, at every step."""
    opt, _ = optim_pair(name, hyper)
    p = [rng.standard_normal(5).astype(np.float32), rng.standard_normal(3)]
    g = [rng.standard_normal(5).astype(np.float32), rng.standard_normal(3)]
    opt.step(p, g)
    for slot, leaves in opt.state_arrays().items():
        for params in (leaves, [p[0], leaves[1]]):
            before = opt.state_dict()
            with pytest.raises(ValueError, match=rf"params at \[\d\]: shares memory with the optimizer's "
                                                 rf"{slot} arena \(the optimizer's own state"):
                opt.step(params, g)
            after = opt.state_dict()
            assert before.keys() == after.keys()
            assert all(np.array_equal(before[k], after[k]) for k in before), slot


def test_optim_parameters_overlapping_each_other_are_refused_naming_both():
    from fusedopt import optim
    buf = np.zeros(10, np.float32)
    opt = optim.Adam(lr=0.1)
    with pytest.raises(ValueError, match=r"params at \['b'\]: shares memory with params at \['a'\]"):
        opt.step({"a": buf[:6], "b": buf[4:]}, {"a": np.ones(6, np.float32), "b": np.ones(6, np.float32)})
    assert not buf.any() and opt.step_count == 0


# -- the native check itself: numpy's bounds ------------------------------------------------------
def _views(draw_index, base):
    """A few views of `base`: slices, steps, transposes and reversals."""
    return [base, base[1:], base[:, ::2], base.T, base[::-1], base[2], base[:, 3], base[1:3, 1:4], base[::2, ::-3]]


@pytest.mark.parametrize("i", range(9))
@pytest.mark.parametrize("j", range(9))
def test_span_set_is_numpys_bounds_test(i, j):
    base = np.zeros((5, 7))
    views = _views(None, base)
    a, b = views[i], views[j][1:] if views[j].ndim == 1 else views[j][1:, 1:]
    expected = np.may_share_memory(a, b)  # bounds only (numpy's default max_work)
    assert _core.SpanSet([a, b]).overlap == ((0, 1) if expected else None)
    assert _core.SpanSet([np.zeros(2), a]).first_hit([np.zeros(3), b]) == ((1, 1) if expected else None)


def test_span_set_ignores_empty_arrays_and_refuses_other_objects():
    base = np.zeros(4)
    assert _core.SpanSet([base, base[2:2]]).overlap is None
    with pytest.raises(TypeError, match="numpy arrays"):
        _core.SpanSet([base, [1.0]])
    with pytest.raises(ValueError, match="own arrays overlap"):
        _core.SpanSet([base, base[1:]]).first_hit([np.zeros(1)])


# -- fusedopt.torch: one check over every group and bucket (items 3 and 4) ---------------------------
def _torch():
    return pytest.importorskip("torch")


def test_torch_parameters_sharing_memory_across_layouts_are_refused():
    """Item 3's example: a transposed view (stepped through a buffer) and a row of the same tensor."""
    torch = _torch()
    import fusedopt.torch as ft
    base = torch.arange(16.).reshape(4, 4)
    params = [torch.nn.Parameter(base.t()), torch.nn.Parameter(base[0])]
    for p in params:
        p.grad = torch.ones_like(p)
    opt = ft.SGD(params, lr=0.5)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[1\] shares memory with "
                                         r"param_groups\[0\]\['params'\]\[0\]"):
        opt.step()
    assert torch.equal(base, torch.arange(16.).reshape(4, 4)) and opt.state == {}


def test_torch_parameters_sharing_memory_in_other_buckets_and_groups_are_refused():
    """Rows of one tensor with different step counts (separate native calls), and in another group."""
    torch = _torch()
    import fusedopt.torch as ft
    base = torch.zeros(8)
    first, second = torch.nn.Parameter(base[:4]), torch.nn.Parameter(base[2:6])
    other = torch.nn.Parameter(torch.zeros(3))
    opt = ft.Adam([first, other], lr=0.1)
    first.grad = torch.ones(4)
    opt.step()  # first has a count of 1 now, second will start at 0: two buckets
    opt.param_groups[0]["params"].append(second)
    second.grad, other.grad = torch.ones(4), torch.ones(3)
    saved = base.clone(), {k: v.clone() for k, v in opt.state[first].items()}
    with pytest.raises(ValueError, match=r"\['params'\]\[2\] shares memory with param_groups\[0\]\['params'\]\[0\]"):
        opt.step()
    assert torch.equal(base, saved[0]) and all(torch.equal(opt.state[first][k], v) for k, v in saved[1].items())
    opt.param_groups[0]["params"].pop()
    opt.add_param_group({"params": [second]})
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['params'\]\[0\] shares memory with "
                                         r"param_groups\[0\]\['params'\]\[0\]"):
        opt.step()
    assert torch.equal(base, saved[0]) and torch.equal(other, torch.zeros(3))


def test_torch_the_optimizers_state_as_a_parameter_is_refused():
    torch = _torch()
    import fusedopt.torch as ft
    q = torch.nn.Parameter(torch.zeros(3))
    q.grad = torch.ones(3)
    opt = ft.Adam([q])
    opt.step()
    moment = opt.state[q]["exp_avg"]
    r = torch.nn.Parameter(moment)
    r.grad = torch.ones(3)
    opt.add_param_group({"params": [r]})
    before = moment.clone()
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['params'\]\[0\] shares memory with the optimizer's "
                                         r"state of param_groups\[0\]\['params'\]\[0\] \('exp_avg'\)"):
        opt.step()
    assert torch.equal(moment, before)


@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop", "Adagrad", "Lion", "NAdam", "RAdam", "Adamax", "Adadelta",
                                  "ASGD", "Rprop"])
def test_torch_gradient_overlapping_written_memory_is_refused_every_time(name):
    """Item 4: a .grad that is a shifted view of its parameter, given when the plan is built and
    later as a new gradient of a planned step (the cheaper path that only looks at gradients)."""
    torch = _torch()
    import fusedopt.torch as ft
    data = torch.arange(8.)
    p = torch.nn.Parameter(data[1:])
    opt = getattr(ft, name)([p], lr=0.5)
    pattern = (r"param_groups\[0\]\['params'\]\[0\]\.grad shares memory with param_groups\[0\]\['params'\]\[0\], "
               r"which the step writes")
    def snapshot():
        return data.clone(), {k: v.clone() for k, v in opt.state[p].items()} if p in opt.state else None

    def same(a, b):
        return torch.equal(a[0], b[0]) and (a[1] is None) == (b[1] is None) and \
            (a[1] is None or all(torch.equal(a[1][k], b[1][k]) for k in a[1]))

    for stepped_before in (False, True):
        if stepped_before:
            p.grad = torch.ones(7)
            opt.step()
        before = snapshot()
        for _ in range(2):
            p.grad = data[:-1]
            with pytest.raises(ValueError, match=pattern):
                opt.step()
            assert same(snapshot(), before)
