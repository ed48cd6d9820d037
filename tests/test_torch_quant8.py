"""fusedopt.torch.Adam8bit and AdamW8bit (docs/lowbit.md, "fusedopt.torch"): exactly
fusedopt.optim's 8-bit bits, state memory, state dicts in torch's format, and the
conversion from and to torch.optim.Adam/AdamW's state."""
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fusedopt.torch as ft  # noqa: E402
from fusedopt import optim  # noqa: E402
from quant8_reference import dequantize, quantize  # noqa: E402

SHAPES = [(5000,), (10,), (70, 80), (4096,)]
SLOTS = ("exp_avg", "exp_avg_sq", "exp_avg_absmax", "exp_avg_sq_absmax")
CASES = [("Adam8bit", {}), ("AdamW8bit", {"weight_decay": 0.1, "maximize": True}),
         ("Adam8bit", {"weight_decay": 0.01, "block_size": 64, "min_8bit_size": 100})]


def _params(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]


def _grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=g) for p in params]


def _train(opt, params, steps, first=0):
    for k in range(first, first + steps):
        for p, g in zip(params, _grads(params, 1000 + k)):
            p.grad = g
        opt.step()


def _save_load(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("name,hyper", CASES, ids=["Adam8bit", "AdamW8bit", "Adam8bit-small-blocks"])
def test_fusedopt_optim_bits(name, hyper):
    """Parameters, codes and absmax are exactly fusedopt.optim's on the same arrays."""
    params = _params(1)
    arrays = [p.detach().numpy().copy() for p in params]
    opt = getattr(ft, name)(params, lr=1e-2, **hyper)
    ref = getattr(optim, name)(lr=1e-2, **hyper)
    for k in range(6):
        grads = _grads(params, k)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        ref.step(arrays, [g.numpy() for g in grads])
    assert len(opt._plans[0].buckets) == 1
    for p, a in zip(params, arrays):
        np.testing.assert_array_equal(p.detach().numpy(), a)
    for slot, leaves in ref.state_arrays().items():
        for p, a in zip(params, leaves):
            np.testing.assert_array_equal(opt.state[p][slot].numpy(), a)
            assert opt.state[p][slot].numpy().dtype == a.dtype


def test_state_memory_is_at_most_27_percent_of_adam():
    params = [torch.nn.Parameter(torch.zeros(200_000)), torch.nn.Parameter(torch.zeros(512, 256))]
    small, full = ft.AdamW8bit(params), ft.AdamW(params)
    for opt in (small, full):
        _train(opt, params, 1)
    nbytes = [sum(t.numel() * t.element_size() for s in opt.state.values() for k, t in s.items() if k != "step")
              for opt in (small, full)]
    assert nbytes[0] <= 0.27 * nbytes[1]
    assert nbytes[0] == 2 * (200_000 + 512 * 256) + 8 * (-(-200_000 // 256) + 512 * 256 // 256)


@pytest.mark.parametrize("name,hyper", CASES[:2], ids=["Adam8bit", "AdamW8bit"])
def test_state_dict_resume(name, hyper):
    """3 steps, torch.save/torch.load(weights_only=True), 3 more: the bits of 6 steps; the
    loaded codes stay uint8 (torch's load would make them float32)."""
    straight = _params(2)
    _train(getattr(ft, name)(straight, lr=1e-2, **hyper), straight, 6)
    params = _params(2)
    opt = getattr(ft, name)(params, lr=1e-2, **hyper)
    _train(opt, params, 3)
    saved = _save_load(opt.state_dict())
    assert saved["param_groups"][0]["block_size"] == 256
    resumed = getattr(ft, name)(params, lr=0.5)
    resumed.load_state_dict(saved)
    assert resumed.state[params[0]]["exp_avg"].dtype == torch.uint8
    assert resumed.param_groups[0]["lr"] == 1e-2
    _train(resumed, params, 3, first=3)
    for a, b in zip(params, straight):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name,theirs", [("Adam8bit", "Adam"), ("AdamW8bit", "AdamW")])
def test_conversion_from_and_to_torch(name, theirs):
    """torch.optim's float32 state loads quantized (the NumPy reference's codes, leaves
    below min_8bit_size kept float32); float32_state_dict() decodes (the reference's
    values) and loads into torch.optim's class, which steps on."""
    params = _params(3)
    topt = getattr(torch.optim, theirs)(params, lr=1e-2)
    _train(topt, params, 2)
    opt = getattr(ft, name)(params, lr=1e-2)
    opt.load_state_dict(_save_load(topt.state_dict()))
    for p in params:
        s, t = opt.state[p], topt.state[p]
        for slot, signed in (("exp_avg", True), ("exp_avg_sq", False)):
            m = t[slot].numpy().reshape(-1)
            if m.size >= 4096:
                codes, absmax = quantize(m, signed, 256)
                np.testing.assert_array_equal(s[slot].numpy().reshape(-1), codes)
                np.testing.assert_array_equal(s[f"{slot}_absmax"].numpy(), absmax)
            else:
                assert torch.equal(s[slot], t[slot]) and s[f"{slot}_absmax"].numel() == 0
    back = opt.float32_state_dict()
    for i, p in enumerate(params):
        for slot, signed in (("exp_avg", True), ("exp_avg_sq", False)):
            s = opt.state[p]
            want = dequantize(s[slot].numpy().reshape(-1), s[f"{slot}_absmax"].numpy(), signed, 256) \
                if s[slot].dtype == torch.uint8 else s[slot].numpy().reshape(-1)
            np.testing.assert_array_equal(back["state"][i][slot].numpy().reshape(-1), want)
            assert f"{slot}_absmax" not in back["state"][i]
    again = getattr(torch.optim, theirs)(params, lr=1e-2)
    again.load_state_dict(_save_load(back))
    _train(again, params, 1, first=2)
    assert float(again.state[params[0]]["step"]) == 3


def test_bad_input_changes_nothing():
    with pytest.raises(ValueError, match="block_size"):
        ft.AdamW8bit([torch.nn.Parameter(torch.zeros(3))], block_size=100)
    p = torch.nn.Parameter(torch.zeros(5000, dtype=torch.bfloat16))
    p.grad = torch.ones_like(p)
    opt = ft.AdamW8bit([p])
    with pytest.raises(TypeError, match=r"param_groups\[0\]"):
        opt.step()
    assert not opt.state and torch.all(p == 0)
    params = _params(4)
    opt = ft.Adam8bit(params)
    _train(opt, params, 1)
    before = [p.detach().clone() for p in params]
    saved = opt.state_dict()
    saved["state"][0]["exp_avg_absmax"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"exp_avg_absmax.*1-d float32"):
        opt.load_state_dict(saved)
    torch_adamw = torch.optim.AdamW(params).state_dict()
    with pytest.raises(ValueError, match="torch.optim.AdamW"):
        opt.load_state_dict(torch_adamw)
    for p, q in zip(params, before):
        assert torch.equal(p, q)
    assert opt.state[params[0]]["exp_avg"].dtype == torch.uint8
