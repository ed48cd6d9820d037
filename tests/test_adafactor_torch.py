"""fusedopt.torch.Adafactor against torch.optim.Adafactor (torch 2.13, its
single-tensor implementation): torch's own optim_db inputs, schedulers and
error inputs (test_torch_inputs.py's driver: two groups, a transposed and a
sliced parameter, a 0-d one, one without a gradient every third step), a
model of vectors, matrices and 3-d blocks with per-group options over 12
steps, state dicts both ways, exact resume, bad input.

Tolerances are torch_cases.TOL (float64 1e-12 relative): both sides evaluate
torch's formulas; the sums differ in order (torch's norms and means in the
parameter's dtype, fusedopt's in double in a fixed order), which moves the
last bits of alpha, the clipping denominator and the row and column means
(float32: a few ulps)."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
common = pytest.importorskip("torch.testing._internal.common_optimizers")

import fusedopt.torch as ft  # noqa: E402
import torch_cases as tc  # noqa: E402
from test_torch_inputs import refused_flags, run_against_torch  # noqa: E402

INFO = next(i for i in common.optim_db if i.optim_cls.__name__ == "Adafactor")
DTYPES = [torch.float32, torch.float64]


def inputs():
    seen, out = set(), []
    for device in ("cpu", "cuda", "mps"):
        for oi in INFO.optim_inputs_func(device=device, dtype=torch.float32):
            if oi.desc not in seen:
                seen.add(oi.desc)
                out.append(oi)
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("oi", inputs(), ids=lambda oi: oi.desc)
def test_torch_optim_inputs(oi, dtype):
    kwargs = dict(oi.kwargs)
    for flag in refused_flags(kwargs):
        with pytest.raises(ValueError, match=f"does not take {flag}=True"):
            ft.Adafactor([torch.nn.Parameter(torch.zeros(2, dtype=dtype))], **kwargs)
        del kwargs[flag]
    run_against_torch("Adafactor", kwargs, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("index", range(len(INFO.scheduler_inputs)))
def test_torch_scheduler_inputs(index, dtype):
    run_against_torch("Adafactor", {}, dtype, schedulers=INFO.scheduler_inputs[index])


def test_foreach_refused_on_and_accepted_off():
    assert INFO.supported_impls == ("foreach",)
    with pytest.raises(ValueError, match="does not take foreach=True"):
        ft.Adafactor([torch.nn.Parameter(torch.zeros(2))], foreach=True)
    run_against_torch("Adafactor", {"foreach": False}, torch.float64)


@pytest.mark.parametrize("index", range(len(INFO.optim_error_inputs_func(device="cpu", dtype=torch.float32))))
def test_torch_error_inputs(index):
    error = INFO.optim_error_inputs_func(device="cpu", dtype=torch.float32)[index]
    oi = error.optimizer_error_input
    params = oi.params if oi.params is not None else [torch.nn.Parameter(torch.zeros(1, 1))]
    if error.error_on == common.OptimizerErrorEnum.STEP_ERROR:
        opt = ft.Adafactor(params, **oi.kwargs)
        with pytest.raises(error.error_type, match=error.error_regex):
            opt.step()
    elif issubclass(error.error_type, Warning):
        with pytest.warns(error.error_type, match=error.error_regex):
            ft.Adafactor(params, **oi.kwargs)
    else:
        with pytest.raises(error.error_type, match=error.error_regex):
            ft.Adafactor(params, **oi.kwargs)


SHAPES = [(7, 13), (37,), (), (3, 4, 5), (1,), (70, 3), (2, 2, 3, 5)]
CONFIGS = [
    {},
    {"weight_decay": 0.1, "lr": 0.05},
    {"maximize": True, "weight_decay": 0.2, "eps": (1e-20, 1e-2), "d": 1.2},
    {"beta2_decay": -0.5, "lr": torch.tensor(0.02)},
]


def groups(params, config):
    second = {"lr": 0.03, "weight_decay": 0.05, "d": 2.0, "beta2_decay": -1.0}
    return [{"params": params[:3], **config}, {"params": params[3:], **second}]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_parity_with_torch(config, dtype):
    ref_params = tc.make_params(dtype, shapes=SHAPES)
    our_params = tc.clone_params(ref_params)
    ref = torch.optim.Adafactor(groups(ref_params, config))
    ours = ft.Adafactor(groups(our_params, config))
    # A float32 tensor lr: torch keeps it a tensor, so its rho and alpha are float32
    # products (fusedopt reads the lr as a Python float: docs/torch.md).
    rtol, atol = tc.TOL[torch.float32 if torch.is_tensor(config.get("lr")) else dtype]
    for k in range(12):
        grads = tc.grads_for(ref_params, k)
        tc.set_grads(ref_params, grads)
        tc.set_grads(our_params, grads)
        ref.step()
        ours.step()
        for i, (a, b) in enumerate(zip(ref_params, our_params)):
            torch.testing.assert_close(b, a, rtol=rtol, atol=atol, msg=lambda m: f"step {k}, param {i}: {m}")
            sa, sb = ref.state.get(a, {}), ours.state.get(b, {})
            assert set(sa) == set(sb)
            for slot in sa:
                if slot == "step":
                    assert float(sb[slot]) == float(sa[slot]) and sb[slot].dtype == sa[slot].dtype
                else:
                    torch.testing.assert_close(sb[slot], sa[slot], rtol=rtol, atol=atol)


@pytest.mark.parametrize("first,second", [(ft.Adafactor, torch.optim.Adafactor), (torch.optim.Adafactor, ft.Adafactor)],
                         ids=["to-torch", "from-torch"])
def test_state_dict_interchange(first, second):
    def run(a_cls, b_cls):
        ps = tc.make_params(torch.float64, shapes=SHAPES)
        a = a_cls(groups(ps, {"weight_decay": 0.1}))
        tc.train(a, ps, 4)
        b = b_cls(groups(ps, {"weight_decay": 0.1}))
        b.load_state_dict(copy.deepcopy(a.state_dict()))
        tc.train(b, ps, 4, start=4)
        return ps
    mixed = run(first, second)
    pure = run(torch.optim.Adafactor, torch.optim.Adafactor)
    for x, y in zip(mixed, pure):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)


def test_resume_exactly():
    full = tc.make_params(torch.float32, shapes=SHAPES)
    opt = ft.Adafactor(groups(full, {}))
    tc.train(opt, full, 8)
    part = tc.make_params(torch.float32, shapes=SHAPES)
    opt = ft.Adafactor(groups(part, {}))
    tc.train(opt, part, 3)
    saved = copy.deepcopy(opt.state_dict())
    opt2 = ft.Adafactor(groups(part, {}))
    opt2.load_state_dict(saved)
    tc.train(opt2, part, 5, start=3)
    for a, b in zip(full, part):
        assert torch.equal(a, b)


def _float32_grad(p):
    p.grad_dtype = None  # torch then takes a gradient of another dtype
    p.grad = torch.ones(p.shape, dtype=torch.float32)


def _snapshot(opt, params):
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())


def _unchanged(before, opt, params):
    for a, b in zip(before[0], params):
        assert torch.equal(a, b)
    after = opt.state_dict()["state"]
    assert after.keys() == before[1]["state"].keys()
    for k in after:
        for slot in after[k]:
            assert torch.equal(after[k][slot], before[1]["state"][k][slot])


@pytest.mark.parametrize("spoil,error,match", [
    (lambda o, ps: _float32_grad(ps[1]), TypeError,
     r"param_groups\[0\]\['params'\]\[1\].grad: expected a CPU torch.float64 tensor"),
    (lambda o, ps: o.state[ps[0]].__setitem__("row_var", torch.zeros(13, 1, dtype=torch.float64)), ValueError,
     r"param_groups\[0\]\['params'\]\[0\]: state\['row_var'\] must be a CPU torch.float64 tensor of shape \(7, 1\)"),
    (lambda o, ps: o.state[ps[1]].__setitem__("step", torch.tensor(-1.0)), ValueError, r"state\['step'\]: expected"),
    (lambda o, ps: setattr(ps[3], "grad", ps[3].detach()), ValueError,
     r"param_groups\[1\]\['params'\]\[0\] must not share memory with param_groups\[1\]\['params'\]\[0\].grad"),
    (lambda o, ps: o.param_groups[1].__setitem__("d", 0.5), ValueError, "Clipping threshold d should be >= 1"),
    (lambda o, ps: o.param_groups[1].__setitem__("foreach", True), ValueError, "does not take foreach=True"),
])
def test_bad_input_changes_nothing(spoil, error, match):
    ps = tc.make_params(torch.float64, shapes=SHAPES)
    opt = ft.Adafactor(groups(ps, {}))
    tc.train(opt, ps, 2, none=lambda i, k: False)
    tc.set_grads(ps, tc.grads_for(ps, 5, none=lambda i, k: False))
    before = _snapshot(opt, ps)
    spoil(opt, ps)
    with pytest.raises(error, match=match):
        opt.step()
    saved = before[1]["state"]
    for k, p in enumerate(ps):  # undo the spoiled state entries, then compare
        opt.state[p].update({s: v for s, v in saved[k].items()})
    _unchanged(before, opt, ps)


def test_unsupported_parameters():
    for p, error, match in [
        (torch.zeros(3, dtype=torch.bfloat16), TypeError, "dense CPU float32/float64"),
        (torch.zeros(2, 3, dtype=torch.complex64), RuntimeError, "does not support complex parameters"),
        (torch.zeros(0, 3), ValueError, "at least one element"),
    ]:
        p.grad = torch.ones_like(p)
        with pytest.raises(error, match=match):
            ft.Adafactor([p]).step()
    p = torch.zeros(3)
    p.grad = torch.ones(3).to_sparse()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        ft.Adafactor([p]).step()


def test_non_contiguous_parameters_are_stepped_in_their_own_memory():
    base = torch.randn(6, 8, dtype=torch.float64)
    p = base.t()
    q = base.t().clone()
    p.grad = q.grad = torch.randn(8, 6, dtype=torch.float64)
    ft.Adafactor([p]).step()
    torch.optim.Adafactor([q]).step()
    assert p.data_ptr() == base.data_ptr()
    torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    assert np.shares_memory(base.numpy(), p.detach().numpy())
