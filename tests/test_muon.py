"""Muon: the native passes bit for bit against NumPy in the documented order
(every SIMD level and thread count), a whole fusedopt.optim step against a
NumPy reference through the same BLAS, parity with torch.optim.Muon on torch's
own inputs (torch.testing's default tolerances), state dicts, bad input."""
import copy

import numpy as np
import pytest

import fusedopt
from fusedopt import _core, optim
from flat_reference import fixed_sum

torch = pytest.importorskip("torch")
import fusedopt.torch as ft  # noqa: E402
from torch.testing._internal.common_optimizers import optim_inputs_func_muon  # noqa: E402

COEFFS = (3.4445, -4.7750, 2.0315)


def bf16(x):
    """float32 -> nearest bfloat16 (ties to even), NaN -> 0x7FC00000, as float32."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    r = np.where(np.isnan(np.asarray(x, np.float32)), np.uint32(0x7FC00000), r)
    return r.view(np.float32)


def lerp(a, b, w):
    w = a.dtype.type(w)
    return a + w * (b - a) if abs(w) < 0.5 else b - (b - a) * (a.dtype.type(1) - w)


def reference_step(p, g, buf, lr, wd, momentum, nesterov, coeffs, eps, ns_steps):
    """The documented order, with numpy's matmul for the products."""
    buf = lerp(buf, g, 1 - momentum)
    u = lerp(g, buf, momentum) if nesterov else buf
    tr = p.shape[0] > p.shape[1]
    x = bf16(u.astype(np.float32))
    norm = bf16(np.float32(np.sqrt(fixed_sum(x.ravel().astype(np.float64) ** 2))))  # in the parameter's order
    x = np.ascontiguousarray(x.T if tr else x)
    x = bf16(x / max(norm, bf16(np.float32(eps))))
    a, b, c = (np.float32(v) for v in coeffs)
    for _ in range(ns_steps):
        gram = bf16(np.matmul(x, x.T))
        upd = bf16(b * gram + c * np.matmul(gram, gram))
        x = bf16(a * x + np.float32(1) * np.matmul(upd, x))
    o = (x.T if tr else x).astype(p.dtype)
    ratio = np.sqrt(max(1, p.shape[0] / p.shape[1]))
    q = p * p.dtype.type(1 - lr * wd)
    return q + p.dtype.type(-(lr * ratio)) * o, buf


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 5), (40, 17), (300, 200)])
@pytest.mark.parametrize("nesterov,momentum", [(True, 0.95), (False, 0.3)])
def test_whole_step_bit_for_bit_at_every_level_and_thread_count(dtype, shape, nesterov, momentum, rng,
                                                                 restore_simd_level, restore_num_threads):
    p0 = rng.standard_normal(shape).astype(dtype)
    grads = [rng.standard_normal(shape).astype(dtype) for _ in range(3)]
    ref_p, ref_buf = p0, np.zeros_like(p0)
    for g in grads:
        ref_p, ref_buf = reference_step(ref_p, g, ref_buf, 0.02, 0.1, momentum, nesterov, COEFFS, 1e-7, 5)
    for level in _core.simd_levels_supported():
        _core._set_simd_level(level)
        for threads in (1, 2):
            fusedopt.set_num_threads(threads)
            p = p0.copy()
            opt = optim.Muon(lr=0.02, momentum=momentum, nesterov=nesterov)
            for g in grads:
                opt.step([p], [g])
            assert p.tobytes() == ref_p.tobytes()
            assert opt.state_arrays()["momentum_buffer"]["[0]"].tobytes() == ref_buf.tobytes()


def test_rounding_matches_the_bit_formula(rng):
    x = np.concatenate([rng.standard_normal(5000).astype(np.float32) * 1e3,
                        np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1 + 2**-8, 1 + 3 * 2**-8], np.float32)])
    y = x.copy()
    _core.muon_round(y)
    assert y.tobytes() == bf16(x).tobytes()


def test_shared_memory_is_refused():
    x = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match=r"muon_combine: out must not share memory with muon_combine: c"):
        _core.muon_combine(x.ravel()[:8], x.ravel()[4:12], np.zeros(8, np.float32), 1.0, 1.0)
    with pytest.raises(ValueError, match=r"muon_update: params\[0\] must not share memory with muon_update: os\[0\]"):
        _core.muon_update([x], [x], [False], 1.0, [-1.0])


def _torch_run(cls, kwargs, dtype, shapes=((6, 4), (4, 9)), steps=4):
    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(*s, dtype=dtype, generator=gen).requires_grad_() for s in shapes]
    opt = cls(ps, **kwargs)
    for k in range(steps):
        for p in ps:
            p.grad = None if (k == 1 and p is ps[1]) else torch.randn(p.shape, dtype=dtype, generator=gen)
        opt.step()
    return ps, opt


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("inp", optim_inputs_func_muon("cpu"), ids=lambda i: i.desc)
def test_parity_with_torch_on_torchs_inputs(inp, dtype):
    """torch states no Muon tolerance of its own: torch.testing's defaults, except
    that the products' summation order (torch's bfloat16 GEMMs on transposed
    views, numpy's or torch's float32 GEMM here) may flip a bfloat16 rounding
    of the orthogonalised update: one bfloat16 unit (2**-8 relative, entries
    below 2) of the adjusted lr per step is allowed on the parameters."""
    steps = 4
    mine, opt = _torch_run(ft.Muon, inp.kwargs, dtype, steps=steps)
    ref, ref_opt = _torch_run(torch.optim.Muon, inp.kwargs, dtype, steps=steps)
    lr = float(inp.kwargs.get("lr", 1e-3))
    for a, b in zip(mine, ref):
        ratio = max(1.0, a.shape[0] / a.shape[1]) ** 0.5
        torch.testing.assert_close(a, b, rtol=1.3e-6, atol=steps * lr * ratio * 2 * 2**-8)
        torch.testing.assert_close(opt.state[a]["momentum_buffer"], ref_opt.state[b]["momentum_buffer"])


def test_param_groups_and_state_dict_interchange():
    groups = lambda ps: [{"params": [ps[0]]}, {"params": [ps[1]], "lr": 0.05, "nesterov": False}]  # noqa: E731
    results = []
    for first, second in ((ft.Muon, torch.optim.Muon), (torch.optim.Muon, ft.Muon)):
        gen = torch.Generator().manual_seed(1)
        ps = [torch.randn(5, 3, dtype=torch.float64, generator=gen), torch.randn(3, 7, dtype=torch.float64,
                                                                                generator=gen)]
        a = first(groups(ps))
        for p in ps:
            p.grad = torch.randn(p.shape, dtype=torch.float64, generator=gen)
        a.step()
        b = second(groups(ps))
        b.load_state_dict(copy.deepcopy(a.state_dict()))
        for p in ps:
            p.grad = torch.randn(p.shape, dtype=torch.float64, generator=gen)
        b.step()
        results.append([p.clone() for p in ps])
    for x, y in zip(*results):
        torch.testing.assert_close(x, y)


def test_numpy_state_dict_resumes_exactly(rng):
    p = rng.standard_normal((6, 3))
    grads = [rng.standard_normal((6, 3)) for _ in range(4)]
    full = p.copy()
    o = optim.Muon(lr=0.1)
    for g in grads:
        o.step({"w": full}, {"w": g})
    part = p.copy()
    o = optim.Muon(lr=0.1)
    for g in grads[:2]:
        o.step({"w": part}, {"w": g})
    o2 = optim.Muon()
    o2.load_state_dict(o.state_dict())
    for g in grads[2:]:
        o2.step({"w": part}, {"w": g})
    assert part.tobytes() == full.tobytes()


@pytest.mark.parametrize("kw,error,match", [
    (dict(lr=-1.0), ValueError, "Learning rate should be >= 0"),
    (dict(momentum=-0.1), ValueError, "momentum must be >= 0"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay must be >= 0"),
    (dict(adjust_lr_fn="arbitrary"), ValueError, "Adjust learning rate function arbitrary is not supported"),
    (dict(ns_steps=100), ValueError, "Number of steps must be less than 100"),
    (dict(ns_coefficients=(1.0, 2.0)), ValueError, "exactly 3 values"),
])
def test_bad_arguments(kw, error, match):
    with pytest.raises(error, match=match):
        ft.Muon([torch.zeros(2, 3)], **kw)
    with pytest.raises(error, match=match):
        optim.Muon(**kw)


def test_refusals_change_nothing(rng):
    with pytest.raises(ValueError, match="Muon only supports 2D parameters"):
        ft.Muon([torch.zeros(2, 3, 4)])
    c = torch.zeros(2, 3, dtype=torch.complex64)
    c.grad = torch.ones_like(c)
    with pytest.raises(RuntimeError, match="complex"):
        ft.Muon([c]).step()
    p = torch.ones(2, 3)
    q = torch.ones(3, 2)
    opt = ft.Muon([p, q])
    p.grad = torch.ones(2, 3)
    q.grad = torch.ones(3, 2).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert torch.equal(p, torch.ones(2, 3)) and len(opt.state) == 0
    x = rng.standard_normal((3, 4))
    o = optim.Muon()
    with pytest.raises(TypeError, match=r"grads at \['w'\]: expected a float64 array of shape \(3, 4\)"):
        o.step({"w": x}, {"w": np.zeros((4, 3))})
    with pytest.raises(ValueError, match="only supports 2D"):
        o.step({"w": np.zeros(3)}, {"w": np.zeros(3)})
    assert o.state_arrays() == {}


def test_torch_iterations_sum_in_float32_and_round_once():
    """fusedopt.torch.Muon's iterations run in torch's bfloat16 GEMMs. With small
    integers and coefficients (1, 1, 1) every float32 sum is exact whatever its
    order, so each stage must be the float64 value rounded once to bfloat16; a
    product rounded before its term is added (double rounding) fails here."""
    from fusedopt.torch._muon import _newton_schulz
    rng = np.random.default_rng(7)
    for _ in range(20):
        x = rng.integers(-3, 4, size=(4, 6)).astype(np.float32)
        gram = bf16(x.astype(np.float64) @ x.T)
        upd = bf16(gram + gram.astype(np.float64) @ gram)
        want = bf16(x + upd.astype(np.float64) @ x)
        assert np.abs(upd).max() > 256  # beyond bfloat16's 8 bits: the rounding is exercised
        assert _newton_schulz(x, (1.0, 1.0, 1.0), 1).tobytes() == want.tobytes()
