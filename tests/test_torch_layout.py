"""Memory of fusedopt.torch's steps: contiguous parameters are stepped in
their own memory, non-contiguous parameters and gradients (transposed,
sliced, channels_last) still step like torch's, and the work for a group is
one native call per dtype and step count."""
import pytest

torch = pytest.importorskip("torch")

import fusedopt.torch as ft  # noqa: E402
import torch_cases as tc  # noqa: E402


def odd_layouts(dtype):
    """Leaf parameters whose memory is not C-contiguous, and plain ones."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(6, 10, generator=g, dtype=dtype)
    return [
        torch.nn.Parameter(torch.randn(5, 7, generator=g, dtype=dtype).t()),          # transposed
        torch.nn.Parameter(base[:, ::2]),                                             # strided slice
        torch.nn.Parameter(torch.randn(2, 3, 4, 5, generator=g, dtype=dtype)
                           .to(memory_format=torch.channels_last)),                   # channels_last
        torch.nn.Parameter(torch.randn(9, generator=g, dtype=dtype)),                 # contiguous
        torch.nn.Parameter(torch.randn(8, 3, generator=g, dtype=dtype)[2:5]),         # contiguous, offset
    ]


def odd_grads(params, k):
    """Gradients of step k, half of them non-contiguous in their own way."""
    out = []
    for i, g in enumerate(tc.grads_for(params, k, none=lambda i, k: (i + k) % 4 == 0)):
        if g is not None and g.dim() == 2 and (i + k) % 2:
            g = g.t().contiguous().t()  # same values, Fortran order
        out.append(g)
    return out


@pytest.mark.parametrize("name", ["Adam", "SGD", "RMSprop"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_non_contiguous_parameters_and_gradients_step_like_torch(name, dtype):
    config = tc.CONFIGS[name][2]
    ref_params = odd_layouts(dtype)
    our_params = tc.clone_params(ref_params)
    assert [p.stride() for p in our_params] == [p.stride() for p in ref_params]
    pointers = [p.data_ptr() for p in our_params]
    ref = tc.reference_class(name)(ref_params, lr=0.01, **config)
    ours = getattr(ft, name)(our_params, lr=0.01, **config)
    for k in range(12):
        grads = odd_grads(ref_params, k)
        for params in (ref_params, our_params):
            for p, g in zip(params, grads):
                p.grad = None if g is None else g.clone(memory_format=torch.preserve_format)
        ref.step()
        ours.step()
    rtol, atol = tc.TOL[dtype]
    for i, (a, b) in enumerate(zip(ref_params, our_params)):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=rtol, atol=atol, msg=lambda m: f"param {i}: {m}")
        assert b.stride() == a.stride()
    assert [p.data_ptr() for p in our_params] == pointers  # stepped in place, never replaced


def test_contiguous_parameters_and_gradients_are_not_copied():
    """The arrays the native step writes are the parameters' own memory: a
    parameter changed in place between steps is what the next step reads, and
    a gradient changed in place (same tensor object) is the next gradient."""
    ref_params = tc.make_params(torch.float64)
    our_params = tc.clone_params(ref_params)
    ref = torch.optim.SGD(ref_params, lr=0.1, momentum=0.9, foreach=False)
    ours = ft.SGD(our_params, lr=0.1, momentum=0.9)
    tc.set_grads(ref_params, tc.grads_for(ref_params, 0, none=lambda i, k: False))
    tc.set_grads(our_params, tc.grads_for(our_params, 0, none=lambda i, k: False))
    for k in range(6):
        ref.step()
        ours.step()
        with torch.no_grad():
            for a, b in zip(ref_params, our_params):
                a.mul_(0.5)
                b.mul_(0.5)
                a.grad.add_(1.0)
                b.grad.add_(1.0)
    for a, b in zip(ref_params, our_params):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=1e-12, atol=1e-14)


def test_replaced_parameter_data_is_stepped():
    """p.data = ... (as Module.to() does) replaces a parameter's memory; the
    next step steps the new memory, as torch's optimizers do."""
    p = torch.nn.Parameter(torch.ones(5, dtype=torch.float64))
    opt = ft.SGD([p], lr=0.5)
    p.grad = torch.ones(5, dtype=torch.float64)
    opt.step()
    p.data = torch.full((5,), 10.0, dtype=torch.float64)
    opt.step()
    assert torch.equal(p.detach(), torch.full((5,), 9.5, dtype=torch.float64))


@pytest.fixture
def calls(monkeypatch):
    """The number of parameters of each fusedopt.optim step (each one native call)."""
    from fusedopt import optim
    seen = []
    original = optim.Optimizer.step

    def counting(self, params, grads):
        seen.append(len(params))
        return original(self, params, grads)
    monkeypatch.setattr(optim.Optimizer, "step", counting)
    return seen


def test_one_native_call_per_group_and_step_count(calls):
    """Each step is one fusedopt.optim step (one native call) per group, float32
    and float64 leaves together, and one more per distinct step count of a
    group after some parameters missed a step."""
    params = tc.make_params(torch.float64)
    params[1] = torch.nn.Parameter(params[1].detach().float())
    opt = ft.Adam(tc.groups(params, "Adam", {}))
    everyone = lambda i, k: False  # noqa: E731
    tc.train(opt, params, 2, none=everyone)
    assert calls == [3, 3, 3, 3]
    calls.clear()
    tc.train(opt, params, 1, start=2, none=lambda i, k: i == 0)  # leaf 0 misses step 3
    assert calls == [2, 3]
    calls.clear()
    tc.train(opt, params, 1, start=3, none=everyone)  # group 0: counts 3 and 4
    assert sorted(calls) == [1, 2, 3]


def test_step_counts_that_do_not_enter_the_update_share_a_call(calls):
    """RMSprop and Lion do not use the count: one call per group however the counts drift."""
    params = tc.make_params(torch.float64)
    opt = ft.RMSprop(params)
    tc.train(opt, params, 1, none=lambda i, k: i == 0)
    tc.train(opt, params, 1, start=1, none=lambda i, k: False)
    assert calls == [5, 6]
    assert [float(opt.state[p]["step"]) for p in params] == [1, 2, 2, 2, 2, 2]
