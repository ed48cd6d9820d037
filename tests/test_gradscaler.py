"""torch.amp.GradScaler("cpu") with fusedopt.torch's optimizers (docs/torch.md,
"GradScaler"): the scaler passes grad_scale and found_inf to the step, which
unscales in the kernel and skips on an inf, as torch's fused optimizers do."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fusedopt.torch as ft  # noqa: E402

CASES = [("AdamW", {"weight_decay": 0.01}), ("Adam", {"amsgrad": True}), ("SGD", {"momentum": 0.9}),
         ("Adagrad", {}), ("RMSprop", {}), ("Lion", {})]


def _data(seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(64, 8, generator=g).to(dtype))
    b = torch.nn.Parameter(torch.randn(8, generator=g).to(dtype))
    batches = [(torch.randn(16, 64, generator=g).to(dtype), torch.randn(16, 8, generator=g).to(dtype))
               for _ in range(12)]
    return [w, b], batches


def _loss(params, batch):
    w, b = params
    x, y = batch
    return ((x @ w + b - y) ** 2).float().mean()


def _train(opt, params, batches, scaler=None, inf_at=()):
    for k, batch in enumerate(batches):
        opt.zero_grad()
        loss = _loss(params, batch)
        (scaler.scale(loss) if scaler else loss).backward()
        if k in inf_at:
            params[0].grad[3, 1] = float("inf")
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()


def _bits(t):
    t = t.detach().contiguous()
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32)


@pytest.mark.parametrize("name,hyper", CASES, ids=[c[0] for c in CASES])
def test_scaled_run_is_the_unscaled_run(name, hyper):
    """GradScaler's scales are powers of two: unscaling in the kernel (g * (1/scale))
    is exact, so a scaled run without overflow has the bits of the same run unscaled."""
    params, batches = _data(1)
    ref, _ = _data(1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=3)
    _train(getattr(ft, name)(params, lr=1e-2, **hyper), params, batches, scaler)
    _train(getattr(ft, name)(ref, lr=1e-2, **hyper), ref, batches)
    assert scaler.get_scale() == 2.0**16  # grew 4 times: the scales changed during the run
    for a, b in zip(params, ref):
        assert torch.equal(_bits(a), _bits(b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_injected_inf_skips_the_step_and_halves_the_scale_as_torch_fused(dtype):
    """Steps 3 and 7 have an inf gradient: each changes neither parameters nor state and
    halves the scale; the run stays within torch's fused AdamW under its own scaler
    (float32: 1e-6 relative; bfloat16: tests/test_lowp_torch.py's tolerance, 1 ulp)."""
    ours, batches = _data(2, dtype)
    theirs, _ = _data(2, dtype)
    opt, topt = ft.AdamW(ours, lr=1e-2), torch.optim.AdamW(theirs, lr=1e-2, fused=True)
    s1, s2 = torch.amp.GradScaler("cpu", init_scale=2.0**10), torch.amp.GradScaler("cpu", init_scale=2.0**10)
    _train(opt, ours, batches[:3], s1)
    _train(topt, theirs, batches[:3], s2)
    before = [p.detach().clone() for p in ours]
    state = {k: v.clone() for k, v in opt.state[ours[0]].items()}
    _train(opt, ours, batches[3:4], s1, inf_at=(0,))
    _train(topt, theirs, batches[3:4], s2, inf_at=(0,))
    assert s1.get_scale() == s2.get_scale() == 2.0**9
    for p, q in zip(ours, before):
        assert torch.equal(_bits(p), _bits(q))
    for k, v in opt.state[ours[0]].items():
        assert torch.equal(v, state[k]), k
    assert float(opt.state[ours[0]]["step"]) == float(topt.state[theirs[0]]["step"]) == 3
    _train(opt, ours, batches[4:], s1, inf_at=(3,))
    _train(topt, theirs, batches[4:], s2, inf_at=(3,))
    assert s1.get_scale() == s2.get_scale() == 2.0**8
    assert float(opt.state[ours[0]]["step"]) == float(topt.state[theirs[0]]["step"]) == 10
    for a, b in zip(ours, theirs):
        a64, b64 = a.detach().double(), b.detach().double()
        if dtype == torch.float32:
            torch.testing.assert_close(a64, b64, rtol=1e-6, atol=1e-7)
        else:
            ulp = torch.from_numpy(np.spacing(np.abs(b64.numpy()).astype(np.float32)) * 2**16)
            assert torch.all((a64 - b64).abs() <= ulp + 1e-8)


def test_explicit_unscale_then_clip():
    """scaler.unscale_(opt) first (for clipping): the step then gets no grad_scale and
    steps the unscaled gradients, as the unscaled run."""
    params, batches = _data(3)
    ref, _ = _data(3)
    opt, ropt = ft.AdamW(params, lr=1e-2), ft.AdamW(ref, lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    for batch in batches:
        opt.zero_grad()
        ropt.zero_grad()
        scaler.scale(_loss(params, batch)).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 0.5)
        scaler.step(opt)
        scaler.update()
        _loss(ref, batch).backward()
        torch.nn.utils.clip_grad_norm_(ref, 0.5)
        ropt.step()
    for a, b in zip(params, ref):
        assert torch.equal(a, b)


def test_bad_grad_scale_changes_nothing():
    params, batches = _data(4)
    opt = ft.SGD(params, lr=0.1)
    _loss(params, batches[0]).backward()
    before = [p.detach().clone() for p in params]
    for bad, exc in ((torch.tensor(0.0), ValueError), (torch.tensor(float("nan")), ValueError),
                     (torch.ones(2), ValueError), ("2", TypeError)):
        opt.grad_scale = bad
        with pytest.raises(exc, match="grad_scale"):
            opt.step()
        for p, q in zip(params, before):
            assert torch.equal(p, q)
    del opt.grad_scale
    opt.step()
    assert not torch.equal(params[0], before[0])


def test_fusedopt_optim_grad_scale():
    """fusedopt.optim's grad_scale: grads * 2**k stepped with grad_scale=2**k give the bits
    of the unscaled step (float32 and float64 leaves; also AdamW8bit's); refused with max_grad_norm,
    and when not finite and > 0, nothing changed (the 8-bit classes take it too)."""
    from fusedopt import optim
    rng = np.random.default_rng(5)
    params = [rng.standard_normal(100).astype(np.float32), rng.standard_normal(7)]
    ref = [p.copy() for p in params]
    opt, ropt = optim.Adam(lr=1e-2, weight_decay=0.1), optim.Adam(lr=1e-2, weight_decay=0.1)
    for k in range(4):
        grads = [rng.standard_normal(p.shape).astype(p.dtype) for p in params]
        opt.grad_scale = 2.0 ** (10 + k)
        opt.step(params, [g * p.dtype.type(2.0 ** (10 + k)) for g, p in zip(grads, params)])
        ropt.step(ref, grads)
    for a, b in zip(params, ref):
        np.testing.assert_array_equal(a, b)
    q = [rng.standard_normal(300).astype(np.float32)]
    rq = [q[0].copy()]
    opt8, ropt8 = optim.AdamW8bit(lr=1e-2, min_8bit_size=64), optim.AdamW8bit(lr=1e-2, min_8bit_size=64)
    for k in range(3):
        g = rng.standard_normal(300).astype(np.float32)
        opt8.grad_scale = 2.0 ** (8 + k)
        opt8.step(q, [g * np.float32(2.0 ** (8 + k))])
        ropt8.step(rq, [g])
    np.testing.assert_array_equal(q[0], rq[0])
    with pytest.raises(ValueError, match="max_grad_norm"):
        opt.max_grad_norm = 1.0
    assert opt.max_grad_norm is None
    opt.grad_scale = None
    opt.max_grad_norm = 1.0
    with pytest.raises(ValueError, match="grad_scale"):
        opt.grad_scale = 2.0
    assert opt.grad_scale is None
    for bad, exc in ((0.0, ValueError), (float("inf"), ValueError), ("2", TypeError)):
        with pytest.raises(exc, match="grad_scale"):
            ropt.grad_scale = bad
        assert ropt.grad_scale is None


def test_native_state_refuses_clipping_with_grad_scale():
    """The native step has one gradient factor: hyper-parameters set around the Python
    setters (the public _core.OptimHyper) with both clipping and grad_scale are refused
    before anything changes."""
    from fusedopt import optim
    params = [np.arange(1.0, 5.0, dtype=np.float32)]
    opt = optim.AdamW(lr=1e-2, max_grad_norm=1.0)
    opt.step(params, [np.ones(4, np.float32)])
    before = params[0].copy(), opt.state_dict()
    opt._hyper["grad_scale"] = 4.0
    with pytest.raises(ValueError, match="max_grad_norm and grad_scale"):
        opt.step(params, [np.ones(4, np.float32)])
    np.testing.assert_array_equal(params[0], before[0])
    assert opt.step_count == before[1]["step_count"]


def _fixed_grads(params, seed, scale, inf=False):
    """Each parameter's .grad: standard normal values (rounded to its dtype) times scale, a
    power of two (exact); with inf, one element of the first is inf. Returns the unscaled values."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for p in params:
        v = torch.randn(p.shape, generator=g).to(p.dtype)
        p.grad = v * scale
        out.append(v)
    if inf:
        params[0].grad.view(-1)[5] = float("inf")
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_grad_after_the_step_is_unscaled_as_torch_fused(dtype):
    """torch's fused AdamW under GradScaler divides each gradient by the scale in its kernel
    and leaves .grad so; at an inf step it changes nothing, .grad included (still scaled).
    fusedopt's kernels write g * (1/scale) back in the same pass: the same bits for
    GradScaler's powers of two, at every step (the sizes leave a tail past the last vector)."""
    def make():
        g = torch.Generator().manual_seed(9)
        return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in [(37, 5), (13,), (64,)]]

    ours, theirs = make(), make()
    opt, topt = ft.AdamW(ours, lr=1e-2), torch.optim.AdamW(theirs, lr=1e-2, fused=True)
    s1, s2 = (torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2) for _ in range(2))
    for s in (s1, s2):
        s.scale(torch.ones(()))  # the scale is made at the first scale()
    for k in range(7):
        inf = k == 4
        scale = s1.get_scale()
        assert scale == s2.get_scale()
        grads = _fixed_grads(ours, k, scale, inf)
        _fixed_grads(theirs, k, scale, inf)
        scaled = [p.grad.clone() for p in ours]
        s1.step(opt)
        s2.step(topt)
        s1.update()
        s2.update()
        for a, b, v, before in zip(ours, theirs, grads, scaled):
            assert torch.equal(_bits(a.grad), _bits(b.grad)), (k, dtype)
            assert torch.equal(_bits(a.grad), _bits(before if inf else v))
    assert s1.get_scale() == s2.get_scale() == 2.0**12  # grew three times, halved once


def _u8(a):
    """An array's bytes, in C order."""
    return np.ascontiguousarray(a).view(np.uint8)


def test_unscale_in_place_of_fusedopt_optim():
    """fusedopt.optim's unscale_in_place: the step writes g * (1/grad_scale) into grads,
    through the contiguous copy for a strided gradient, float32, float64 and bfloat16;
    unset (the default) the gradients are untouched; a read-only gradient is refused
    before anything changes."""
    import ml_dtypes
    from fusedopt import optim

    rng = np.random.default_rng(6)
    params = {"a": rng.standard_normal((9, 7)).astype(np.float32), "b": rng.standard_normal(21),
              "c": rng.standard_normal(19).astype(ml_dtypes.bfloat16)}
    values = {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in params.items()}
    scaled = {k: (v.astype(np.float64) * 2.0**7).astype(v.dtype) for k, v in values.items()}
    scaled["a"] = np.asfortranarray(scaled["a"])  # strided in C order: the step reads a copy
    ref = {k: v.copy() for k, v in params.items()}
    opt, ropt = optim.Adam(lr=1e-2), optim.Adam(lr=1e-2)
    opt.grad_scale, opt.unscale_in_place = 2.0**7, True
    grads = {k: v.copy(order="K") for k, v in scaled.items()}
    opt.step(params, grads)
    ropt.step(ref, {k: v.copy() for k, v in values.items()})
    for k in params:
        np.testing.assert_array_equal(_u8(params[k]), _u8(ref[k]))
        np.testing.assert_array_equal(_u8(grads[k]), _u8(values[k]))
    opt.unscale_in_place = False
    grads = {k: v.copy(order="K") for k, v in scaled.items()}
    opt.step(params, grads)
    for k in params:
        np.testing.assert_array_equal(_u8(grads[k]), _u8(scaled[k]))
    opt.unscale_in_place = True
    grads["b"].flags.writeable = False
    before = {k: v.copy() for k, v in params.items()}
    with pytest.raises(ValueError, match=r"grads at \['b'\].*read-only"):
        opt.step(params, grads)
    for k in params:
        np.testing.assert_array_equal(_u8(params[k]), _u8(before[k]))
    np.testing.assert_array_equal(_u8(grads["a"]), _u8(scaled["a"]))


@pytest.mark.parametrize("name,hyper", [("Adam8bit", {}), ("AdamW8bit", {"maximize": True}), ("Lion8bit", {"weight_decay": 0.1})])
def test_8bit_scaled_run_is_the_unscaled_run(name, hyper):
    """The 8-bit kernels divide the scale out (g * (1/scale), exact for powers of two):
    a scaled run has the bits of the unscaled run, state included (min_8bit_size 64:
    the weight's moments are 8-bit codes, the bias's float32); .grad is left unscaled."""
    params, batches = _data(1)
    ref, _ = _data(1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=3)
    opt = getattr(ft, name)(params, lr=1e-2, min_8bit_size=64, block_size=64, **hyper)
    ropt = getattr(ft, name)(ref, lr=1e-2, min_8bit_size=64, block_size=64, **hyper)
    for batch in batches:
        opt.zero_grad()
        ropt.zero_grad()
        scaler.scale(_loss(params, batch)).backward()
        scaler.step(opt)
        scaler.update()
        _loss(ref, batch).backward()
        ropt.step()
        for a, b in zip(params, ref):
            assert torch.equal(_bits(a.grad), _bits(b.grad))
    assert scaler.get_scale() == 2.0**16
    assert opt.state[params[0]]["exp_avg"].dtype == torch.uint8
    for a, b in zip(params, ref):
        assert torch.equal(_bits(a), _bits(b))
        for k, v in opt.state[a].items():
            assert torch.equal(v, ropt.state[b][k]), k


@pytest.mark.parametrize("name", ["Adam8bit", "AdamW8bit", "Lion8bit"])
def test_8bit_injected_inf_skips_the_step_and_halves_the_scale(name):
    """An inf gradient: the step changes nothing (parameters, codes, absmax, step count,
    .grad) and the scaler halves its scale; the run then goes on as the unscaled run
    without that step."""
    params, batches = _data(2)
    ref, _ = _data(2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=100)
    opt = getattr(ft, name)(params, lr=1e-2, min_8bit_size=64, block_size=64)
    ropt = getattr(ft, name)(ref, lr=1e-2, min_8bit_size=64, block_size=64)
    for k, batch in enumerate(batches[:6]):
        opt.zero_grad()
        scaler.scale(_loss(params, batch)).backward()
        if k == 3:
            params[0].grad[3, 1] = float("inf")
            before = ([p.detach().clone() for p in params], [p.grad.clone() for p in params],
                      {k: v.clone() for k, v in opt.state[params[0]].items()})
        scaler.step(opt)
        scaler.update()
        if k == 3:
            assert scaler.get_scale() == 2.0**9
            for p, q, g in zip(params, before[0], before[1]):
                assert torch.equal(_bits(p), _bits(q))
                assert torch.equal(_bits(p.grad), _bits(g))
            for key, v in opt.state[params[0]].items():
                assert torch.equal(v, before[2][key]), key
            assert float(opt.state[params[0]]["step"]) == 3
            continue
        ropt.zero_grad()
        _loss(ref, batch).backward()
        ropt.step()
    for a, b in zip(params, ref):
        assert torch.equal(_bits(a), _bits(b))


@pytest.mark.parametrize("kind", ["float32", "float64", "bfloat16", "float16", "bfloat16-master", "8bit"])
def test_unscale_in_place_bits_at_every_level_and_thread_count(kind, restore_simd_level, restore_num_threads):
    """The gradient written back is NumPy's g * (1/scale) in the kernel's precision
    (float32 for the 16-bit and 8-bit kernels, rounded to nearest into a 16-bit
    gradient), for a scale that is not a power of two (the product rounds), at every
    SIMD level and thread count; the parameters are those of the step without it."""
    import ml_dtypes
    from fusedopt import optim
    from lowp_reference import levels_and_thread_counts

    dtype = {"float64": np.float64, "bfloat16": ml_dtypes.bfloat16, "bfloat16-master": ml_dtypes.bfloat16,
             "float16": np.float16}.get(kind, np.float32)
    rng = np.random.default_rng(11)
    sizes = [70001, 37, 5]  # several chunks, vector tails
    p0 = [rng.standard_normal(n).astype(dtype) for n in sizes]
    g0 = [(rng.standard_normal(n) * 100).astype(dtype) for n in sizes]
    scale = 3.0
    if kind == "float64":
        want = [g * (1 / scale) for g in g0]
    else:
        want = [(g.astype(np.float32) * np.float32(1 / scale)).astype(dtype) for g in g0]

    def make():
        if kind == "8bit":
            return optim.AdamW8bit(lr=1e-2, min_8bit_size=64)
        return optim.AdamW(lr=1e-2, master_weights=kind.endswith("master"))

    ref = make()
    ref.grad_scale = scale
    expected = [p.copy() for p in p0]
    ref.step(expected, [g.copy() for g in g0])
    for level, threads in levels_and_thread_counts():
        opt = make()
        opt.grad_scale, opt.unscale_in_place = scale, True
        params, grads = [p.copy() for p in p0], [g.copy() for g in g0]
        opt.step(params, grads)
        for a, b in zip(grads, want):
            assert a.tobytes() == b.tobytes(), (level, threads)
        for a, b in zip(params, expected):
            assert a.tobytes() == b.tobytes(), (level, threads)
