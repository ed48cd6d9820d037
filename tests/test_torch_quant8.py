"""fusedopt.torch.Adam8bit, AdamW8bit and Lion8bit (docs/lowbit.md, "fusedopt.torch"):
exactly fusedopt.optim's 8-bit bits, state memory, state dicts in torch's format, and
the conversion from and to the float32 class's state (torch.optim.Adam/AdamW's,
fusedopt.torch.Lion's: torch has no Lion)."""
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fusedopt.torch as ft  # noqa: E402
from fusedopt import optim  # noqa: E402
from quant8_reference import dequantize, quantize  # noqa: E402

SHAPES = [(5000,), (10,), (70, 80), (4096,)]
CASES = [("Adam8bit", {}), ("AdamW8bit", {"weight_decay": 0.1, "maximize": True}),
         ("Adam8bit", {"weight_decay": 0.01, "block_size": 64, "min_8bit_size": 100}),
         ("Lion8bit", {}), ("Lion8bit", {"weight_decay": 0.1, "maximize": True, "block_size": 64, "min_8bit_size": 100})]
IDS = ["Adam8bit", "AdamW8bit", "Adam8bit-small-blocks", "Lion8bit", "Lion8bit-small-blocks"]
MOMENTS = {"Adam8bit": (("exp_avg", True), ("exp_avg_sq", False)),
           "AdamW8bit": (("exp_avg", True), ("exp_avg_sq", False)), "Lion8bit": (("exp_avg", True),)}
# The float32 class of each one's state: torch.optim's, fusedopt.torch's Lion (torch has none).
FLOAT32 = {"Adam8bit": torch.optim.Adam, "AdamW8bit": torch.optim.AdamW, "Lion8bit": ft.Lion}


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


@pytest.mark.parametrize("name,hyper", CASES, ids=IDS)
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


@pytest.mark.parametrize("name,theirs", [("AdamW8bit", ft.AdamW), ("Lion8bit", ft.Lion)])
def test_state_memory_is_at_most_27_percent_of_the_float32_class(name, theirs):
    params = [torch.nn.Parameter(torch.zeros(200_000)), torch.nn.Parameter(torch.zeros(512, 256))]
    small, full = getattr(ft, name)(params), theirs(params)
    for opt in (small, full):
        _train(opt, params, 1)
    nbytes = [sum(t.numel() * t.element_size() for s in opt.state.values() for k, t in s.items() if k != "step")
              for opt in (small, full)]
    assert nbytes[0] <= 0.27 * nbytes[1]
    # per moment: n codes + 4 bytes per block
    assert nbytes[0] == len(MOMENTS[name]) * ((200_000 + 512 * 256) + 4 * (-(-200_000 // 256) + 512 * 256 // 256))


@pytest.mark.parametrize("name,hyper", CASES[:2] + CASES[3:], ids=IDS[:2] + IDS[3:])
def test_state_dict_resume(name, hyper):
    """3 steps, torch.save/torch.load(weights_only=True), 3 more: the bits of 6 steps; the
    loaded codes stay uint8 (torch's load would make them float32)."""
    straight = _params(2)
    _train(getattr(ft, name)(straight, lr=1e-2, **hyper), straight, 6)
    params = _params(2)
    opt = getattr(ft, name)(params, lr=1e-2, **hyper)
    _train(opt, params, 3)
    saved = _save_load(opt.state_dict())
    assert saved["param_groups"][0]["block_size"] == hyper.get("block_size", 256)
    resumed = getattr(ft, name)(params, lr=0.5)
    resumed.load_state_dict(saved)
    assert resumed.state[params[0]]["exp_avg"].dtype == torch.uint8
    assert resumed.param_groups[0]["lr"] == 1e-2
    _train(resumed, params, 3, first=3)
    for a, b in zip(params, straight):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["Adam8bit", "AdamW8bit", "Lion8bit"])
def test_conversion_from_and_to_the_float32_class(name):
    """The float32 class's state (torch.optim's, fusedopt.torch.Lion's) loads quantized (the
    NumPy reference's codes, leaves below min_8bit_size kept float32); float32_state_dict()
    decodes (the reference's values) and loads into that class, which steps on."""
    params = _params(3)
    topt = FLOAT32[name](params, lr=1e-2)
    _train(topt, params, 2)
    opt = getattr(ft, name)(params, lr=1e-2)
    opt.load_state_dict(_save_load(topt.state_dict()))
    for p in params:
        s, t = opt.state[p], topt.state[p]
        for slot, signed in MOMENTS[name]:
            m = t[slot].numpy().reshape(-1)
            if m.size >= 4096:
                codes, absmax = quantize(m, signed, 256)
                np.testing.assert_array_equal(s[slot].numpy().reshape(-1), codes)
                np.testing.assert_array_equal(s[f"{slot}_absmax"].numpy(), absmax)
            else:
                assert torch.equal(s[slot], t[slot]) and s[f"{slot}_absmax"].numel() == 0
    back = opt.float32_state_dict()
    for i, p in enumerate(params):
        for slot, signed in MOMENTS[name]:
            s = opt.state[p]
            want = dequantize(s[slot].numpy().reshape(-1), s[f"{slot}_absmax"].numpy(), signed, 256) \
                if s[slot].dtype == torch.uint8 else s[slot].numpy().reshape(-1)
            np.testing.assert_array_equal(back["state"][i][slot].numpy().reshape(-1), want)
            assert f"{slot}_absmax" not in back["state"][i]
    assert back["param_groups"][0].keys() == topt.state_dict()["param_groups"][0].keys()
    again = FLOAT32[name](params, lr=1e-2)
    again.load_state_dict(_save_load(back))
    _train(again, params, 1, first=2)
    assert float(again.state[params[0]]["step"]) == 3


# Per class: a float32 state of another optimizer it refuses, and the message.
FOREIGN = {"Adam8bit": (torch.optim.AdamW, "a state of torch.optim.AdamW"),
           "Lion8bit": (torch.optim.Adam, "'exp_avg_sq' is no slot of fusedopt.torch.Lion")}


@pytest.mark.parametrize("name", ["Adam8bit", "Lion8bit"])
def test_bad_input_changes_nothing(name):
    cls = getattr(ft, name)
    with pytest.raises(ValueError, match="block_size"):
        cls([torch.nn.Parameter(torch.zeros(3))], block_size=100)
    p = torch.nn.Parameter(torch.zeros(5000, dtype=torch.bfloat16))
    p.grad = torch.ones_like(p)
    opt = cls([p])
    with pytest.raises(TypeError, match=r"param_groups\[0\]"):
        opt.step()
    assert not opt.state and torch.all(p == 0)
    params = _params(4)
    opt = cls(params)
    _train(opt, params, 1)
    before = [p.detach().clone() for p in params]
    saved = opt.state_dict()
    saved["state"][0]["exp_avg_absmax"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"exp_avg_absmax.*1-d float32"):
        opt.load_state_dict(saved)
    foreign, message = FOREIGN[name]
    other = foreign([torch.nn.Parameter(p.detach().clone()) for p in params])
    _train(other, other.param_groups[0]["params"], 1)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(other.state_dict())
    for p, q in zip(params, before):
        assert torch.equal(p, q)
    assert opt.state[params[0]]["exp_avg"].dtype == torch.uint8
