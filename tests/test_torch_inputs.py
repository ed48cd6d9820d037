"""PyTorch's own optimizer test inputs run on fusedopt.torch (issue 22).

For every fusedopt.torch class with a torch.optim twin, every entry of its
``optim_inputs_func`` in ``torch.testing._internal.common_optimizers.optim_db``
(the CPU entries, and the CUDA and MPS ones, which are CPU-runnable kwargs
apart from ``capturable``), in float32 and float64: two parameter groups (the
second with half the lr), a transposed and a sliced (non-contiguous)
parameter, a 0-d one, and one without a gradient on every third step, against
torch.optim (``foreach=False``) after each of STEPS steps, parameters and
every state tensor at torch_cases.TOL. Then every ``scheduler_inputs`` entry
(with the default input), the ``supported_impls`` flags, and torch's
``optim_error_inputs_func`` (the error type, and torch's message where
fusedopt does not refuse the input for a reason of its own).

An input fusedopt refuses is checked to be refused as docs/torch.md says
(REFUSED), and, where dropping the refused flag leaves a runnable input, the
rest is run against torch. docs/torch.md's coverage table lists the counts.
"""
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
common = pytest.importorskip("torch.testing._internal.common_optimizers")  # imports expecttest

import fusedopt.torch as ft  # noqa: E402
import torch_cases as tc  # noqa: E402

STEPS = 12
DTYPES = [torch.float32, torch.float64]
INFOS = {info.optim_cls.__name__: info for info in common.optim_db if info.optim_cls.__name__ in tc.TORCH_NAMES}
# torch's implementation flags: fusedopt has one implementation (docs/torch.md, "What is refused").
REFUSED_FLAGS = ("foreach", "fused", "capturable", "differentiable")


def refused_flags(kwargs):
    return [k for k in REFUSED_FLAGS if kwargs.get(k)]


def inputs_of(name):
    """(device of origin, OptimizerInput) for every entry, each desc once, CPU's first."""
    seen, out = set(), []
    for device in ("cpu", "cuda", "mps"):
        for oi in INFOS[name].optim_inputs_func(device=device, dtype=torch.float32):
            if oi.desc not in seen:
                seen.add(oi.desc)
                out.append((device, oi))
    return out


INPUTS = [(name, device, oi) for name in tc.TORCH_NAMES for device, oi in inputs_of(name)]
INPUT_IDS = [f"{name}-{device}-{oi.desc}" for name, device, oi in INPUTS]


def make_params(dtype, seed):
    """A transposed matrix, a vector, a 0-d scalar (group 0); a sliced matrix
    and a vector that has no gradient on every third step (group 1)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(7, 5, generator=g, dtype=dtype).t()
    b = torch.randn(5, generator=g, dtype=dtype)
    s = torch.randn((), generator=g, dtype=dtype)
    x = torch.randn(3, 8, generator=g, dtype=dtype)[:, ::2]
    n = torch.randn(6, generator=g, dtype=dtype)
    params = [torch.nn.Parameter(t) for t in (w, b, s, x, n)]
    assert not params[0].is_contiguous() and not params[3].is_contiguous()
    return params


def copies(params):
    return tc.clone_params(params)


def param_groups(params, kwargs):
    lr = kwargs.get("lr", None)
    second = {"params": params[3:]}
    if lr is not None:
        second["lr"] = lr / 2 if not torch.is_tensor(lr) else lr.clone() / 2
    return [{"params": params[:3]}, second]


def set_grads(params, k, dtype):
    g = torch.Generator().manual_seed(1000 + k)
    for i, p in enumerate(params):
        grad = torch.randn(p.shape, generator=g, dtype=dtype) * (0.5 + k % 3)
        p.grad = None if (i == 4 and k % 3 == 1) else grad


def tolerance(name, kwargs, dtype):
    """torch_cases.TOL; float32's for float64 parameters with a float32 tensor
    lr, from which torch computes Adam's and Adamax's step size (lr / bias correction),
    RAdam's decoupled decay factor (1 - lr * weight_decay) and ASGD's eta in float32
    (fusedopt reads the lr as a Python float: docs/torch.md)."""
    lr = kwargs.get("lr")
    if name in ("Adam", "AdamW", "Adamax", "RAdam", "ASGD") and torch.is_tensor(lr) and lr.dtype == torch.float32:
        return tc.TOL[torch.float32]
    return tc.TOL[dtype]


def assert_same(ref, ref_params, ours, our_params, tol, where):
    rtol, atol = tol
    for i, (a, b) in enumerate(zip(ref_params, our_params)):
        assert b.stride() == a.stride(), f"{where}: param {i} strides changed"
        torch.testing.assert_close(b.detach(), a.detach(), rtol=rtol, atol=atol,
                                   msg=lambda m: f"{where}, param {i}: {m}")
        ra, rb = ref.state.get(a, {}), ours.state.get(b, {})
        assert set(rb) == set(ra), f"{where}, param {i}: slots {sorted(rb)} != torch's {sorted(ra)}"
        for slot, va in ra.items():
            if slot == "step":
                assert float(rb[slot]) == float(va) and rb[slot].dtype == va.dtype, f"{where}, param {i}: step"
            else:
                torch.testing.assert_close(rb[slot], va, rtol=rtol, atol=atol,
                                           msg=lambda m: f"{where}, param {i} {slot}: {m}")


def run_against_torch(name, kwargs, dtype, schedulers=(), seed=0):
    """STEPS steps of torch's and fusedopt's optimizer (and schedulers), compared after each."""
    ref_params = make_params(dtype, seed)
    our_params = copies(ref_params)
    ref = getattr(torch.optim, name)(param_groups(ref_params, kwargs), **{**kwargs, "foreach": False})
    ours = getattr(ft, name)(param_groups(our_params, kwargs), **kwargs)
    ref_s, our_s = [make(ref) for make in schedulers], [make(ours) for make in schedulers]
    for k in range(STEPS):
        set_grads(ref_params, k, dtype)
        set_grads(our_params, k, dtype)
        ref.step()
        ours.step()
        for rs, os_ in zip(ref_s, our_s):
            if isinstance(rs, torch.optim.lr_scheduler.ReduceLROnPlateau):
                rs.step(1.0)  # a loss that never improves: the lr drops after `patience` steps
                os_.step(1.0)
            else:
                rs.step()
                os_.step()
        assert_same(ref, ref_params, ours, our_params, tolerance(name, kwargs, dtype), f"step {k + 1}")
        for ga, gb in zip(ref.param_groups, ours.param_groups):
            assert float(gb["lr"]) == float(ga["lr"])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name,device,oi", INPUTS, ids=INPUT_IDS)
def test_torch_optim_inputs(name, device, oi, dtype):
    kwargs = dict(oi.kwargs)
    flags = refused_flags(kwargs)
    if flags:  # refused at construction, as docs/torch.md says; the rest of the input then runs
        with pytest.raises(ValueError, match=f"does not take {flags[0]}=True"):
            getattr(ft, name)([torch.nn.Parameter(torch.zeros(2, dtype=dtype))], **kwargs)
        for flag in flags:
            del kwargs[flag]
    run_against_torch(name, kwargs, dtype)


SCHEDULERS = [(name, i) for name in tc.TORCH_NAMES for i in range(len(INFOS[name].scheduler_inputs))]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name,index", SCHEDULERS, ids=[f"{n}-{i}" for n, i in SCHEDULERS])
def test_torch_scheduler_inputs(name, index, dtype):
    run_against_torch(name, {}, dtype, schedulers=INFOS[name].scheduler_inputs[index])


IMPLS = [(name, flag) for name in tc.TORCH_NAMES for flag in INFOS[name].supported_impls]


@pytest.mark.parametrize("name,flag", IMPLS, ids=[f"{n}-{f}" for n, f in IMPLS])
def test_torch_supported_impls_are_refused_on_and_accepted_off(name, flag):
    """torch's tests run every input with each implementation flag on;
    fusedopt refuses them on (one implementation) and takes them off."""
    with pytest.raises(ValueError, match=f"does not take {flag}=True"):
        getattr(ft, name)([torch.nn.Parameter(torch.zeros(2))], **{flag: True})
    run_against_torch(name, {flag: False}, torch.float64)


def error_inputs(name):
    return [(name, i, e) for i, e in enumerate(INFOS[name].optim_error_inputs_func(device="cpu", dtype=torch.float32))]


ERRORS = [x for name in tc.TORCH_NAMES for x in error_inputs(name)]


@pytest.mark.parametrize("name,index,error", ERRORS,
                         ids=[f"{n}-{e.optimizer_error_input.desc}" for n, _, e in ERRORS])
def test_torch_error_inputs(name, index, error):
    """The error torch's test expects: its type, and its message unless the
    input sets a flag fusedopt refuses first (then fusedopt's message)."""
    oi = error.optimizer_error_input
    params = oi.params if oi.params is not None else [torch.nn.Parameter(torch.zeros(1, 1))]
    cls = getattr(ft, name)
    flags = refused_flags(oi.kwargs)
    regex = f"does not take {flags[0]}=True" if flags else error.error_regex
    assert error.error_on == common.OptimizerErrorEnum.CONSTRUCTION_ERROR
    if issubclass(error.error_type, Warning):
        with pytest.warns(error.error_type, match=regex):
            cls(params, **oi.kwargs)
    else:
        with pytest.raises(error.error_type, match=regex):
            cls(params, **oi.kwargs)


def test_docs_list_every_refused_input():
    """docs/torch.md's coverage table names every input fusedopt refuses."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "torch.md").read_text()
    table = doc[doc.index("## PyTorch's own test inputs"):]
    for name, device, oi in INPUTS:
        if refused_flags(oi.kwargs):
            assert re.search(rf"\| `{name}` \|[^\n]*{re.escape(oi.desc)}", table), (name, oi.desc)
