"""LBFGS: the native passes bit for bit against NumPy in the documented order
(every SIMD level and thread count), parity with torch.optim.LBFGS (float64
tight, float32 to a stated tolerance), state dicts both ways, bad input."""
import copy

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fusedopt
from fusedopt import _core, optim
from flat_reference import dot, fixed_sum

torch = pytest.importorskip("torch")
import fusedopt.torch as ft  # noqa: E402

DTYPES = [np.float32, np.float64]
# Sizes around the lane (16) and chunk (2048) boundaries, and one past the serial limit (threads run).
SIZES = [0, 1, 15, 17, 2048, 2049, 5000, 40000]


def _levels_and_threads():
    for level in _core.simd_levels_supported():
        _core._set_simd_level(level)
        for threads in (1, 2):
            fusedopt.set_num_threads(threads)
            yield level, threads


def _same_bits(a, b):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def _two_loop_reference(g, ys, ss, ro, h):
    cast = g.dtype.type
    q = -g
    al = [None] * len(ys)
    for i in reversed(range(len(ys))):
        al[i] = cast(dot(ss[i], q)) * ro[i]
        q = q + (-al[i]) * ys[i]
    r = q * cast(h)
    for i in range(len(ys)):
        be = cast(dot(ys[i], r)) * ro[i]
        r = r + (al[i] - be) * ss[i]
    return r, al, dot(g, r)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_passes_bit_for_bit_at_every_level_and_thread_count(dtype, n, rng, restore_simd_level, restore_num_threads):
    a, b, prev, d = (rng.standard_normal(n).astype(dtype) for _ in range(4))
    m = 3
    ys = [rng.standard_normal(n).astype(dtype) for _ in range(m)]
    ss = [rng.standard_normal(n).astype(dtype) for _ in range(m)]
    ro = np.array([0.5, 0.25, 2.0], dtype)
    r_ref, al_ref, gtd_ref = _two_loop_reference(a, ys, ss, ro, 0.75)
    for _ in _levels_and_threads():
        assert _core.lbfgs_dot(a, b) == dot(a, b)
        assert _core.lbfgs_abs_sum(a) == fixed_sum(np.abs(a))
        assert _core.lbfgs_abs_max(a, 0.3) == (np.abs(dtype(0.3) * a).max() if n else 0.0)
        p, y, s = prev.copy(), np.empty(n, dtype), np.empty(n, dtype)
        ys_, yy = _core.lbfgs_new_pair(a, p, d, 0.3, y, s)
        y_ref, s_ref = a - prev, d * dtype(0.3)
        _same_bits(y, y_ref)
        _same_bits(s, s_ref)
        _same_bits(p, a)
        assert (ys_, yy) == (dot(y_ref, s_ref), dot(y_ref, y_ref))
        out, al = np.empty(n, dtype), np.zeros(5, dtype)
        gtd = _core.lbfgs_two_loop(out, a, ys, ss, ro, 0.75, al)
        _same_bits(out, r_ref)
        _same_bits(al[:m], np.array(al_ref, dtype))
        assert gtd == gtd_ref
        out0 = np.empty(n, dtype)
        assert _core.lbfgs_two_loop(out0, a, [], [], np.empty(0, dtype), 1.0, al) == dot(a, -a)
        _same_bits(out0, -a)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=5), t=st.floats(-4, 4),
       f64=st.booleans(), seed=st.integers(0, 2**31))
def test_gather_scatter_add_are_the_leaves_end_to_end(sizes, t, f64, seed):
    dtype = np.float64 if f64 else np.float32
    r = np.random.default_rng(seed)
    leaves = [r.standard_normal(k).astype(dtype) for k in sizes]
    flat = np.empty(sum(sizes), dtype)
    _core.lbfgs_gather(leaves, sizes, flat)
    _same_bits(flat, np.concatenate(leaves))
    _core.lbfgs_gather([None] + leaves[1:], sizes, flat)
    _same_bits(flat[:sizes[0]], np.zeros(sizes[0], dtype))
    u = r.standard_normal(flat.size).astype(dtype)
    expect = [leaf + dtype(t) * piece for leaf, piece in zip(leaves, np.split(u, np.cumsum(sizes)[:-1]))]
    _core.lbfgs_add(leaves, u, t)
    for got, want in zip(leaves, expect):
        _same_bits(got, want)
    _core.lbfgs_scatter(u, leaves)
    _same_bits(np.concatenate(leaves), u)


def test_abs_max_propagates_nan():
    a = np.array([1.0, np.nan, 3.0] * 1000)
    assert np.isnan(_core.lbfgs_abs_max(a))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,at", [(1, 0), (17, 16), (40, 5), (100_003, 100_002), (100_003, 65_537)])
def test_abs_max_one_special_value_anywhere(dtype, n, at, rng, restore_simd_level, restore_num_threads):
    """The lanes keep a NaN seen anywhere (the vector body, a lane's last element, the tail,
    any chunk), and an infinity is the largest value; at every level and thread count."""
    a = rng.standard_normal(n).astype(dtype)
    for value, check in ((np.nan, np.isnan), (-np.inf, lambda m: m == np.inf), (dtype(1e30), None)):
        b = a.copy()
        b[at] = value
        expect = np.abs(dtype(0.5) * b).max()
        for _ in _levels_and_threads():
            got = _core.lbfgs_abs_max(b, 0.5)
            assert check(got) if check else got == expect


def test_shared_memory_is_refused_and_nothing_changes():
    x = np.arange(6.0)
    with pytest.raises(ValueError, match=r"lbfgs_two_loop: d must not share memory with lbfgs_two_loop: g"):
        _core.lbfgs_two_loop(x, x, [], [], np.empty(0), 1.0, np.empty(0))
    with pytest.raises(ValueError, match=r"lbfgs_add: leaves\[0\] and lbfgs_add: leaves\[1\] must not share memory"):
        _core.lbfgs_add([x[:4], x[2:]], np.ones(8), 1.0)
    with pytest.raises(ValueError, match=r"lbfgs_new_pair: prev must not share memory with lbfgs_new_pair: d"):
        _core.lbfgs_new_pair(np.ones(6), x, x, 1.0, np.empty(6), np.empty(6))
    _same_bits(x, np.arange(6.0))
    opt = optim.LBFGS()
    with pytest.raises(ValueError, match=r"params at \[1\] shares memory with params at \[0\]"):
        opt.step([x, x[3:]], lambda: (0.0, [np.ones(6), np.ones(3)]))
    _same_bits(x, np.arange(6.0))
    assert opt.state == {}


def test_native_refusals_name_the_argument():
    a = np.zeros(4)
    with pytest.raises(TypeError, match="lbfgs_dot: b must be float64"):
        _core.lbfgs_dot(a, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="lbfgs_dot: b must have 4 elements"):
        _core.lbfgs_dot(a, np.zeros(5))
    with pytest.raises(ValueError, match="lbfgs_add: the leaves hold 3 elements, the flat vector 4"):
        _core.lbfgs_add([np.zeros(3)], a, 1.0)
    with pytest.raises(ValueError, match="writeable"):
        ro = np.zeros(4)
        ro.flags.writeable = False
        _core.lbfgs_add([ro], a, 1.0)


# -- problems: (initial params, loss of a list of tensors) --------------------------------

def _quadratic(dtype):
    r = np.random.default_rng(1)
    m = r.standard_normal((12, 12))
    a = torch.tensor(m @ m.T / 12 + np.eye(12), dtype=dtype)
    b = torch.tensor(r.standard_normal(12), dtype=dtype)
    return [torch.zeros(12, dtype=dtype)], lambda ps: 0.5 * ps[0] @ a @ ps[0] - b @ ps[0]


def _rosenbrock(dtype):
    def f(ps):
        x = ps[0]
        return ((1 - x[:-1]) ** 2).sum() + 100 * ((x[1:] - x[:-1] ** 2) ** 2).sum()
    return [torch.linspace(-1.2, 1.0, 6, dtype=dtype)], f


def _regression(dtype):
    r = np.random.default_rng(2)
    x = torch.tensor(r.standard_normal((40, 5)), dtype=dtype)
    y = torch.tensor(r.standard_normal(40), dtype=dtype)
    return [torch.zeros(5, dtype=dtype), torch.zeros(1, dtype=dtype)], \
        lambda ps: ((x @ ps[0] + ps[1] - y) ** 2).mean()


PROBLEMS = {"quadratic": _quadratic, "rosenbrock": _rosenbrock, "regression": _regression}
# float64: the dot products' order and torch's fused multiply-adds differ by
# rounding only; float32: the same, compounded over the iterations.
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-11), torch.float32: dict(rtol=2e-3, atol=2e-4)}


# Without a line search, a step length that the problem's curvature allows.
LR_SCALE = {"quadratic": 1.0, "rosenbrock": 0.01, "regression": 1.0}


def _steps(opt, ps, f, steps):
    """`steps` steps of opt with the closure of loss f; the losses."""
    def closure():
        opt.zero_grad()
        loss = f(ps)
        loss.backward()
        return loss
    return [float(opt.step(closure).detach()) for _ in range(steps)]


def _run(opt_class, problem, dtype, steps=3, **kw):
    if "lr" in kw:
        kw = dict(kw, lr=kw["lr"] * LR_SCALE[problem])
    init, f = PROBLEMS[problem](dtype)
    ps = [p.clone().requires_grad_() for p in init]
    opt = opt_class(ps, **kw)
    return ps, opt, _steps(opt, ps, f, steps)


def _resume(cls, ps, saved, f, steps, **kw):
    """A new cls on copies of ps, loaded from saved, stepped `steps` times."""
    qs = [p.detach().clone().requires_grad_() for p in ps]
    opt = cls(qs, **kw)
    opt.load_state_dict(copy.deepcopy(saved))  # torch's step writes its state tensors in place
    _steps(opt, qs, f, steps)
    return qs, opt


@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kw", [dict(line_search_fn=None, lr=0.2), dict(line_search_fn="strong_wolfe"),
                                dict(line_search_fn="strong_wolfe", history_size=2, max_iter=7),
                                dict(line_search_fn=None, lr=0.1, history_size=3, max_eval=6)])
def test_parity_with_torch(problem, dtype, kw):
    # float32 Rosenbrock amplifies rounding differences iteration by iteration: one step (up to 20 iterations).
    steps = 1 if (problem, dtype) == ("rosenbrock", torch.float32) else 3
    mine, opt, my_losses = _run(ft.LBFGS, problem, dtype, steps, **kw)
    ref, ref_opt, ref_losses = _run(torch.optim.LBFGS, problem, dtype, steps, **kw)
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a, b, **TOL[dtype])
    np.testing.assert_allclose(my_losses, ref_losses, **TOL[dtype])
    s, r = opt.state[mine[0]], ref_opt.state[ref[0]]
    assert set(s) == set(r)
    if dtype == torch.float64:
        assert (s["n_iter"], s["func_evals"], len(s["old_dirs"])) == (r["n_iter"], r["func_evals"], len(r["old_dirs"]))
        torch.testing.assert_close(s["d"], r["d"], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("kw", [dict(lr=0.2), dict(line_search_fn="strong_wolfe", history_size=3)])
def test_numpy_class_is_the_torch_class_bit_for_bit(kw):
    ps, opt, losses = _run(ft.LBFGS, "regression", torch.float32, **kw)
    init, f = _regression(torch.float32)
    arrays = [p.numpy().copy() for p in init]
    o = optim.LBFGS(**kw)

    def closure():
        ts = [torch.tensor(a, requires_grad=True) for a in arrays]
        loss = f(ts)
        loss.backward()
        return float(loss.detach()), [t.grad.numpy() for t in ts]
    mine = [o.step(arrays, closure) for _ in range(3)]
    assert mine == losses
    for a, p in zip(arrays, ps):
        _same_bits(a, p.detach().numpy())


@pytest.mark.parametrize("direction", ["fusedopt->torch", "torch->fusedopt"])
def test_state_dict_interchange_with_torch(direction):
    kw = dict(line_search_fn="strong_wolfe", history_size=4, max_iter=4)
    first, second = (ft.LBFGS, torch.optim.LBFGS) if direction == "fusedopt->torch" else (torch.optim.LBFGS, ft.LBFGS)
    ps, opt, _ = _run(first, "rosenbrock", torch.float64, steps=2, **kw)
    _, f = _rosenbrock(torch.float64)
    results = []
    for cls in (first, second):
        qs, o = _resume(cls, ps, opt.state_dict(), f, 1, **kw)
        results.append((qs[0].detach(), o.state[qs[0]]["n_iter"]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-9, atol=1e-11)
    assert results[0][1] == results[1][1]


def test_state_dict_round_trip_resumes_exactly():
    kw = dict(line_search_fn="strong_wolfe", history_size=3, max_iter=3)
    full, _, _ = _run(ft.LBFGS, "quadratic", torch.float32, steps=4, **kw)
    ps, opt, _ = _run(ft.LBFGS, "quadratic", torch.float32, steps=2, **kw)
    qs, _ = _resume(ft.LBFGS, ps, opt.state_dict(), _quadratic(torch.float32)[1], 2, **kw)
    _same_bits(qs[0].detach().numpy(), full[0].detach().numpy())
    # the numpy class: its own state dict resumes exactly as well
    x = np.linspace(-1, 1, 8)
    runs = []
    for split in (False, True):
        o = optim.LBFGS(history_size=3, line_search_fn="strong_wolfe", max_iter=3)
        y = x.copy()

        def closure():
            return float(((y - 0.3) ** 4).sum()), [4 * (y - 0.3) ** 3]
        o.step([y], closure)
        if split:
            o2 = optim.LBFGS()
            o2.load_state_dict(o.state_dict())
            o = o2
        o.step([y], closure)
        runs.append(y)
    _same_bits(runs[0], runs[1])


def _snapshot(ps, opt):
    return [p.detach().clone() for p in ps], repr(opt.state_dict())


def test_bad_input_changes_nothing():
    ps, opt, _ = _run(ft.LBFGS, "regression", torch.float64, steps=1, lr=0.2)
    before = _snapshot(ps, opt)
    with pytest.raises(TypeError, match="closure must be a callable"):
        opt.step()

    def sparse_closure():
        loss = (ps[0] ** 2).sum() + (ps[1] ** 2).sum()
        ps[0].grad = torch.zeros(5, dtype=torch.float64).to_sparse()
        ps[1].grad = torch.zeros(1, dtype=torch.float64)
        return loss
    with pytest.raises(TypeError, match=r"params\[0\].grad: .*sparse"):
        opt.step(sparse_closure)
    calls = []

    def failing_closure():
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        opt.zero_grad()
        loss = (ps[0] ** 2).sum() + (ps[1] ** 2).sum()
        loss.backward()
        return loss
    with pytest.raises(KeyboardInterrupt):
        opt.step(failing_closure)
    after = _snapshot(ps, opt)
    for a, b in zip(before[0], after[0]):
        _same_bits(a.numpy(), b.numpy())
    assert before[1] == after[1]


@pytest.mark.parametrize("kw,error,match", [
    (dict(lr=-1.0), ValueError, "Invalid learning rate"),
    (dict(max_iter=0), ValueError, "max_iter must be >= 1"),
    (dict(max_iter=2.5), TypeError, "max_iter must be an int"),
    (dict(max_eval=0), ValueError, "max_eval must be >= 1"),
    (dict(history_size=0), ValueError, "history_size must be >= 1"),
    (dict(tolerance_grad="x"), TypeError, "tolerance_grad must be a real number"),
    (dict(tolerance_change=float("nan")), ValueError, "tolerance_change must be a finite real"),
    (dict(line_search_fn="armijo"), ValueError, "line_search_fn must be None or 'strong_wolfe'"),
])
def test_bad_arguments(kw, error, match):
    with pytest.raises(error, match=match):
        ft.LBFGS([torch.zeros(3, requires_grad=True)], **kw)
    with pytest.raises(error, match=match):
        optim.LBFGS(**kw)


def test_refusals_of_the_torch_class():
    with pytest.raises(ValueError, match="parameter groups"):
        ft.LBFGS([{"params": [torch.zeros(2, requires_grad=True)]}, {"params": [torch.zeros(2, requires_grad=True)]}])
    mixed = [torch.zeros(2, requires_grad=True), torch.zeros(2, dtype=torch.float64, requires_grad=True)]
    with pytest.raises(TypeError, match=r"params\[1\]: every parameter must have one dtype"):
        ft.LBFGS(mixed).step(lambda: torch.zeros(()))


def test_numpy_class_refuses_bad_trees_and_closures():
    opt = optim.LBFGS()
    x = np.zeros(3)
    with pytest.raises(TypeError, match="every leaf must have one dtype"):
        opt.step({"a": x, "b": np.zeros(2, np.float32)}, lambda: (0.0, None))
    with pytest.raises(TypeError, match="closure must return"):
        opt.step([x], lambda: 1.0)
    with pytest.raises(TypeError, match=r"closure's grads at \[0\]: expected a float64 array of shape \(3,\)"):
        opt.step([x], lambda: (1.0, [np.zeros(4)]))
    _same_bits(x, np.zeros(3))
    assert opt.state == {}
