"""bfloat16/float16 parameters of fusedopt.torch (docs/lowbit.md, "fusedopt.torch"):
exactly fusedopt.optim's bits (to nearest, stochastic, master weights), torch's fused
CPU optimizers within the stated tolerance, the stochastic rounding's stream at every
SIMD level and thread count and across a resume, master weights, bad input."""
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ml_dtypes")

import fusedopt.torch as ft  # noqa: E402
from fusedopt import optim  # noqa: E402
from lowp_reference import BF16, F16, assert_near_torch_fused, levels_and_thread_counts  # noqa: E402

TORCH = {BF16: torch.bfloat16, F16: torch.float16, np.dtype(np.float32): torch.float32}
NUMPY = {v: k for k, v in TORCH.items()}
SHAPES = [(1000,), (33, 7), (5,), (40000,)]

# (class, hyper-parameters): every class of the plan, with options that select its state slots.
CASES = [("SGD", {"momentum": 0.9, "weight_decay": 0.01}), ("SGD", {}), ("Adam", {"amsgrad": True}),
         ("AdamW", {"weight_decay": 0.1}), ("NAdam", {}), ("RAdam", {}), ("Adamax", {}), ("Adadelta", {}),
         ("ASGD", {}), ("Rprop", {}), ("RMSprop", {"momentum": 0.5, "centered": True}), ("Adagrad", {}),
         ("Lion", {"weight_decay": 0.1})]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CASES)]


def as_numpy(t):
    """A copy of a tensor as NumPy (bfloat16 as ml_dtypes')."""
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16).view(BF16).copy()
    return t.numpy().copy()


def bits(t):
    return as_numpy(t).reshape(-1).view(np.uint8)


def _params(rng, dtypes, shapes=SHAPES):
    return [torch.nn.Parameter(torch.from_numpy(rng.standard_normal(s).astype(np.float32)).to(d))
            for s, d in zip(shapes, dtypes)]


def _grads(rng, params, scale=1.0):
    return [torch.from_numpy((rng.standard_normal(p.shape) * scale).astype(np.float32)).to(p.dtype) for p in params]


def _assert_same(a, b):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(bits(a), bits(b))


@pytest.mark.parametrize("stochastic,state", [(False, False), (True, False), (True, True), (False, True)],
                         ids=["nearest", "stochastic", "stochastic_state", "only_state"])
@pytest.mark.parametrize("name,hyper", CASES, ids=IDS)
def test_fusedopt_optim_bits(name, hyper, stochastic, state, rng):
    """A group mixing bfloat16, float16 and float32 parameters steps in one native call
    and gives exactly fusedopt.optim's bits on the same list (parameters and state)."""
    dtypes = [torch.bfloat16, torch.float16, torch.float32, torch.bfloat16]
    tparams = _params(rng, dtypes)
    arrays = [as_numpy(p) for p in tparams]
    rounding = dict(stochastic_rounding=stochastic, stochastic_state=state, seed=123)
    opt = getattr(ft, name)(tparams, lr=0.01, **rounding, **hyper)
    ref = getattr(optim, name)(lr=0.01, **rounding, **hyper)
    for _ in range(6):
        grads = _grads(rng, tparams)
        for p, g in zip(tparams, grads):
            p.grad = g
        opt.step()
        ref.step(arrays, [as_numpy(g) for g in grads])
        assert len(opt._plans[0].buckets) == 1  # one native call for the three dtypes
    for p, a in zip(tparams, arrays):
        np.testing.assert_array_equal(bits(p), a.reshape(-1).view(np.uint8))
    for slot, leaves in ref.state_arrays().items():
        for p, a in zip(tparams, leaves):
            np.testing.assert_array_equal(bits(opt.state[p][slot]), a.reshape(-1).view(np.uint8))
            assert opt.state[p][slot].dtype == p.dtype


@pytest.mark.parametrize("fmt", [BF16, F16], ids=str)
@pytest.mark.parametrize("name,hyper", [("AdamW", {"weight_decay": 0.01}), ("Adam", {"amsgrad": True}),
                                        ("Adagrad", {"lr_decay": 0.01, "initial_accumulator_value": 0.1})])
def test_torch_fused_parity(fmt, name, hyper, rng):
    """200 steps beside torch's fused CPU optimizer (fused=True; state in the parameter's
    dtype, float32 math, round to nearest): parameters and state within the tolerance
    fusedopt.optim states for the same kernels (tests/test_lowp_torch.py)."""
    dtypes = [TORCH[fmt]] * 3
    mine = _params(rng, dtypes, SHAPES[:3])
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in mine]
    opt = getattr(ft, name)(mine, lr=1e-3, **hyper)
    topt = getattr(torch.optim, name)(theirs, lr=1e-3, fused=True, **hyper)
    for _ in range(200):
        grads = _grads(rng, mine)
        for a, b, g in zip(mine, theirs, grads):
            a.grad, b.grad = g, g.clone()
        opt.step()
        topt.step()
    pairs = []
    for a, b in zip(mine, theirs):
        pairs += [("p", as_numpy(a), as_numpy(b))]
        pairs += [(k, as_numpy(opt.state[a][k]), as_numpy(topt.state[b][k])) for k in opt.state[a] if k != "step"]
        assert all(opt.state[a][k].dtype == topt.state[b][k].dtype == TORCH[fmt] for k in opt.state[a] if k != "step")
        assert float(opt.state[a]["step"]) == float(topt.state[b]["step"]) == 200
    assert_near_torch_fused(name, pairs)


@pytest.mark.parametrize("fmt", [BF16, F16], ids=str)
def test_sgd_momentum_within_one_ulp_of_float32_math(fmt, rng):
    """SGD with momentum against float32 math rounded once per step (torch's fused SGD is
    not the reference: on 16-bit tensors it differs from that by up to thousands of ulps,
    tests/test_lowp_torch.py): each step is the float32 result narrowed to nearest."""
    p = _params(rng, [TORCH[fmt]], SHAPES[:1])[0]
    opt = ft.SGD([p], lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.01)
    buf = None
    for _ in range(50):
        g = _grads(rng, [p])[0]
        p.grad = g
        w32, g32 = as_numpy(p).astype(np.float32), as_numpy(g).astype(np.float32)
        g32 = g32 + np.float32(0.01) * w32
        new = g32.copy() if buf is None else buf.astype(np.float32) * np.float32(0.9) + g32
        step = g32 + np.float32(0.9) * new
        expected = (w32 + np.float32(-0.01) * step).astype(fmt)
        buf = new.astype(fmt)
        opt.step()
        np.testing.assert_array_equal(as_numpy(p).view(np.uint16), expected.view(np.uint16))
        np.testing.assert_array_equal(as_numpy(opt.state[p]["momentum_buffer"]).view(np.uint16), buf.view(np.uint16))


def _run(name, hyper, seed, steps, rng_state, opt=None, params=None, **options):
    rng = np.random.default_rng(rng_state)
    if params is None:
        params = _params(rng, [torch.bfloat16, torch.float16, torch.bfloat16])
    opt = opt or getattr(ft, name)(params, lr=0.01, seed=seed, **options, **hyper)
    for _ in range(steps):
        for p, g in zip(params, _grads(rng, params)):
            p.grad = g
        opt.step()
    return params, opt


@pytest.mark.parametrize("name,hyper", [("AdamW", {}), ("SGD", {"momentum": 0.9}), ("Lion", {}),
                                        ("RMSprop", {})])
def test_stochastic_same_bits_at_every_simd_level_and_thread_count(name, hyper, restore_simd_level,
                                                                  restore_num_threads):
    results = []
    for _ in levels_and_thread_counts():
        params, _ = _run(name, hyper, 7, 3, 11, stochastic_rounding=True)
        results.append(params)
    for other in results[1:]:
        for a, b in zip(other, results[0]):
            _assert_same(a, b)


def _save_load(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("name,hyper", [("AdamW", {}), ("SGD", {}), ("SGD", {"momentum": 0.9}),
                                        ("RMSprop", {}), ("Adagrad", {})])
@pytest.mark.parametrize("master", [False, True], ids=["", "master"])
def test_resume_continues_the_stream(name, hyper, master, rng):
    """4 steps, state_dict through torch.save/torch.load(weights_only=True) into a new
    optimizer (seed=None there: the saved seed wins), 4 more: the bits of 8 steps in one
    run (the stream is keyed by the saved seed and the parameters' 'step')."""
    whole, _ = _run(name, hyper, 5, 8, 3, stochastic_rounding=True, master_weights=master)
    params, opt = _run(name, hyper, 5, 4, 3, stochastic_rounding=True, master_weights=master)
    saved = _save_load(opt.state_dict())
    assert saved["param_groups"][0]["seed"] == 5 and saved["param_groups"][0]["stochastic_rounding"]
    assert float(saved["state"][0]["step"]) == 4
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = getattr(ft, name)(copies, lr=0.01, stochastic_rounding=True, master_weights=master, **hyper)
    resumed.load_state_dict(saved)
    if master:
        assert resumed.state[copies[0]]["master_param"].dtype == torch.float32
    rng = np.random.default_rng(3)
    _params(rng, [torch.bfloat16, torch.float16, torch.bfloat16])
    for _ in range(4):
        _grads(rng, copies)  # the first 4 steps' gradients
    for _ in range(4):
        for p, g in zip(copies, _grads(rng, copies)):
            p.grad = g
        resumed.step()
    for a, b in zip(copies, whole):
        _assert_same(a, b)


def test_seed_none_is_torch_initial_seed_plus_group_index():
    torch.manual_seed(77)
    a, b = torch.zeros(3, dtype=torch.bfloat16), torch.zeros(3, dtype=torch.bfloat16)
    state = torch.random.get_rng_state()
    opt = ft.AdamW([{"params": [a]}, {"params": [b], "seed": 9}], stochastic_rounding=True)
    assert [g["seed"] for g in opt.param_groups] == [77, 9]
    assert opt.defaults["seed"] is None and opt.defaults["stochastic_rounding"] is True
    assert torch.equal(torch.random.get_rng_state(), state)  # torch's stream not drawn from
    opt.add_param_group({"params": [torch.zeros(2)]})
    assert opt.param_groups[2]["seed"] == 79


def test_small_updates_land_on_average():
    """SGD steps of a quarter of bfloat16's spacing at 1.5: lost to nearest, kept on average."""
    w1, w2 = (torch.full((100_000,), 1.5, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    nearest, stochastic = ft.SGD([w1], lr=2**-9), ft.SGD([w2], lr=2**-9, stochastic_rounding=True, seed=0)
    for _ in range(8):
        w1.grad = torch.ones_like(w1)
        w2.grad = torch.ones_like(w2)
        nearest.step()
        stochastic.step()
    assert torch.all(w1 == 1.5)
    assert abs(w2.double().mean().item() - (1.5 - 8 * 2**-9)) < 0.05 * 8 * 2**-9
    assert float(stochastic.state[w2]["step"]) == 8  # SGD keeps the stream's position with stochastic rounding


@pytest.mark.parametrize("name,hyper", [("AdamW", {"weight_decay": 0.1}), ("SGD", {"momentum": 0.9}), ("SGD", {}),
                                        ("Adagrad", {}), ("RMSprop", {"momentum": 0.5})])
@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
def test_master_weights(name, hyper, stochastic, rng):
    """The masters follow fusedopt.torch's float32 trajectory bit for bit; each parameter is
    its master rounded to nearest (stochastically: fusedopt.optim's bits); the slots are
    float32; a float32 parameter in the same group has no master."""
    dtypes = [torch.bfloat16, torch.float16, torch.float32]
    low = _params(rng, dtypes, SHAPES[:3])
    wide = [torch.nn.Parameter(p.detach().float()) for p in low]
    arrays = [as_numpy(p) for p in low]
    opt = getattr(ft, name)(low, lr=0.01, master_weights=True, stochastic_rounding=stochastic, seed=3, **hyper)
    ref32 = getattr(ft, name)(wide, lr=0.01, **hyper)
    ref = getattr(optim, name)(lr=0.01, master_weights=True, stochastic_rounding=stochastic, seed=3, **hyper)
    for k in range(5):
        grads = _grads(rng, low)
        for a, b, g in zip(low, wide, grads):
            a.grad, b.grad = g, g.float()
        if k == 2:
            opt.load_state_dict(_save_load(opt.state_dict()))  # new arenas from the saved masters
        opt.step()
        ref32.step()
        ref.step(arrays, [as_numpy(g) for g in grads])
        for i, (a, b) in enumerate(zip(low, wide)):
            if a.dtype == torch.float32:
                assert "master_param" not in opt.state[a]
                _assert_same(a, b)
                continue
            master = opt.state[a]["master_param"]
            _assert_same(master, b)
            if not stochastic:
                _assert_same(a, b.detach().to(a.dtype))
            np.testing.assert_array_equal(bits(a), arrays[i].reshape(-1).view(np.uint8))
            for slot in ref32.state[b]:
                if slot != "step":
                    _assert_same(opt.state[a][slot], ref32.state[b][slot])


def test_master_weights_state_dict_round_trip(rng):
    p = _params(rng, [torch.bfloat16], SHAPES[:1])
    opt = ft.AdamW(p, master_weights=True)
    p[0].grad = _grads(rng, p)[0]
    opt.step()
    saved = _save_load(opt.state_dict())
    assert saved["state"][0]["master_param"].dtype == saved["state"][0]["exp_avg"].dtype == torch.float32
    q = [torch.nn.Parameter(p[0].detach().clone())]
    other = ft.AdamW(q, master_weights=True)
    other.load_state_dict(saved)
    for key in ("master_param", "exp_avg", "exp_avg_sq"):
        _assert_same(other.state[q[0]][key], opt.state[p[0]][key])
    g = _grads(rng, p)[0]
    p[0].grad, q[0].grad = g, g.clone()
    opt.step()
    other.step()
    _assert_same(q[0], p[0])
    _assert_same(other.state[q[0]]["master_param"], opt.state[p[0]]["master_param"])


def _snapshot(opt, params):
    return [as_numpy(p).copy() for p in params], {k: dict(v) for k, v in opt.state_dict()["state"].items()}


def _assert_unchanged(before, opt, params):
    for a, b in zip(before[0], [as_numpy(p) for p in params]):
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
    after = opt.state_dict()["state"]
    assert after.keys() == before[1].keys()
    for k, entry in after.items():
        for slot, value in entry.items():
            assert torch.equal(value, before[1][k][slot])


@pytest.mark.parametrize("grad_dtype", [torch.float64, torch.float32, torch.float16])
def test_gradient_of_another_dtype_is_refused(grad_dtype, rng):
    params = _params(rng, [torch.float32, torch.bfloat16], SHAPES[:2])
    opt = ft.AdamW(params, stochastic_rounding=True)
    for p, g in zip(params, _grads(rng, params)):
        p.grad = g
    opt.step()
    before = _snapshot(opt, params)
    params[1].grad_dtype = None  # torch refuses the assignment otherwise
    params[1].grad = params[1].grad.to(grad_dtype)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[1\]: the gradient is"):
        opt.step()
    _assert_unchanged(before, opt, params)


@pytest.mark.parametrize("dtype", [torch.int32, torch.complex64, torch.float8_e4m3fn])
def test_other_parameter_dtypes_are_refused(dtype):
    good = torch.zeros(3, dtype=torch.bfloat16, requires_grad=True)
    bad = torch.zeros(3).to(dtype)
    opt = ft.SGD([good, bad], lr=0.1)
    good.grad = torch.ones_like(good)
    bad.grad = torch.ones_like(bad)
    with pytest.raises(TypeError, match=r"\['params'\]\[1\] is torch\.\w+; fusedopt.torch.SGD steps float32"):
        opt.step()
    assert torch.all(good == 0) and not opt.state


@pytest.mark.parametrize("seed,exc", [(-1, ValueError), (2**64, ValueError), (1.5, TypeError), ("1", TypeError),
                                      (True, TypeError)])
def test_bad_seed(seed, exc):
    p = torch.zeros(3, dtype=torch.bfloat16, requires_grad=True)
    with pytest.raises(exc, match="seed"):
        ft.AdamW([p], stochastic_rounding=True, seed=seed)
    opt = ft.AdamW([p], stochastic_rounding=True, seed=1)
    with pytest.raises(exc, match=r"param_groups\[1\]\['seed'\]"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "seed": seed})
    assert len(opt.param_groups) == 1
    p.grad = torch.ones_like(p)
    opt.step()
    before = _snapshot(opt, [p])
    opt.param_groups[0]["seed"] = seed
    with pytest.raises(exc, match=r"param_groups\[0\]\['seed'\]"):
        opt.step()
    _assert_unchanged(before, opt, [p])


@pytest.mark.parametrize("key", ["stochastic_rounding", "stochastic_state", "master_weights"])
def test_bad_flags(key):
    with pytest.raises(TypeError, match=key):
        ft.AdamW([torch.zeros(2, requires_grad=True)], **{key: 1})


def test_torch_state_loads_as_nearest_without_masters(rng):
    """A state saved by torch.optim's fused AdamW on bfloat16 parameters (no options keys)
    loads with fusedopt.optim's defaults for them (nearest, seed 0, no master weights)
    and continues as torch's fused step within the tolerance."""
    params = _params(rng, [torch.bfloat16], SHAPES[:1])
    topt = torch.optim.AdamW(params, fused=True)
    params[0].grad = _grads(rng, params)[0]
    topt.step()
    opt = ft.AdamW([torch.nn.Parameter(params[0].detach().clone())], master_weights=True, stochastic_rounding=True)
    opt.load_state_dict(_save_load(topt.state_dict()))
    group = opt.param_groups[0]
    assert (group["stochastic_rounding"], group["stochastic_state"], group["seed"], group["master_weights"]) == \
        (False, False, 0, False)
    assert opt.state[opt.param_groups[0]["params"][0]]["exp_avg"].dtype == torch.bfloat16


@pytest.mark.parametrize("saved", [False, True])
def test_group_saved_before_stochastic_state_rounds_slots_as_then(saved, rng):
    """stochastic_rounding used to round the slots too: a loaded group without the
    stochastic_state key takes its stochastic_rounding's value, and steps as fusedopt.optim
    does with both set so."""
    params = _params(rng, [torch.bfloat16], SHAPES[:1])
    arrays = [as_numpy(params[0].detach().clone())]
    opt = ft.AdamW(params, lr=0.01, stochastic_rounding=saved, seed=8)
    ref = optim.AdamW(lr=0.01, stochastic_rounding=saved, seed=8)
    first = params[0].grad = _grads(rng, params)[0]
    opt.step()
    ref.step(arrays, [as_numpy(first)])
    state = _save_load(opt.state_dict())
    for group in state["param_groups"]:
        del group["stochastic_state"]
    copy = torch.nn.Parameter(params[0].detach().clone())
    other = ft.AdamW([copy], lr=0.01, stochastic_state=not saved)
    other.load_state_dict(state)
    assert (other.param_groups[0]["stochastic_rounding"], other.param_groups[0]["stochastic_state"]) == (saved, saved)
    grad = _grads(rng, params)[0]
    copy.grad = grad
    other.step()
    ref.stochastic_state = saved
    ref.step(arrays, [as_numpy(grad)])
    np.testing.assert_array_equal(bits(copy), arrays[0].reshape(-1).view(np.uint8))
    for slot, leaves in ref.state_arrays().items():
        np.testing.assert_array_equal(bits(other.state[copy][slot]), leaves[0].reshape(-1).view(np.uint8))


def test_a_bad_master_is_refused_naming_its_parameter_and_nothing_changes(rng):
    params = _params(rng, [torch.float32, torch.bfloat16], [(3,), (4, 2)])
    opt = ft.AdamW(params, lr=1e-2, master_weights=True)
    for p, g in zip(params, _grads(rng, params)):
        p.grad = g
    opt.step()
    opt.state[params[1]]["master_param"] = torch.zeros(3)  # not the parameter's shape
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match=r"param_groups\[0\]: state of \['params'\]\[1\]\['master_param'\]: "
                                         r"expected a floating-point tensor of the parameter's shape \(4, 2\)"):
        opt.step()
    for a, b in zip(params, before):
        _assert_same(a.detach(), b)
