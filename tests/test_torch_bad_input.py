"""Bad input to fusedopt.torch: a clear TypeError/ValueError naming the
offending parameter or setting, and nothing modified (parameters, gradients,
state and param_groups of every group compared before and after)."""
import pytest
from hypothesis import given, settings, strategies as st

torch = pytest.importorskip("torch")

import fusedopt.torch as ft  # noqa: E402
import torch_cases as tc  # noqa: E402


def trained(name="Adam", dtype=torch.float32, **config):
    """An optimizer of two groups that has stepped (so it has state)."""
    params = tc.make_params(dtype)
    opt = getattr(ft, name)(tc.groups(params, name, config), **config)
    tc.train(opt, params, 3)
    tc.set_grads(params, tc.grads_for(params, 3, none=lambda i, k: False))
    return opt, params


def assert_refused(opt, params, error, match, call=None):
    before = tc.snapshot(opt, params)
    grads = [(p.grad, None if p.grad is None else p.grad.to_dense().clone()) for p in params]
    with pytest.raises(error, match=match):
        (call or opt.step)()
    assert tc.unchanged(before, tc.snapshot(opt, params))
    for (g, values), p in zip(grads, params):
        assert p.grad is g and (g is None or torch.equal(values, g.to_dense()))


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.complex64], ids=str)
def test_unsupported_dtype_in_the_second_group_changes_nothing(dtype):
    opt, params = trained()
    bad = torch.nn.Parameter(torch.zeros(4, dtype=dtype))
    bad.grad = torch.ones(4, dtype=dtype)
    opt.param_groups[1]["params"].append(bad)
    assert_refused(opt, params, TypeError, r"param_groups\[1\]\['params'\]\[3\].*float32, float64, bfloat16 and float16")


def test_sparse_gradient_changes_nothing():
    opt, params = trained()
    bad = torch.nn.Parameter(torch.zeros(4))
    bad.grad = torch.ones(4).to_sparse()
    opt.param_groups[0]["params"].append(bad)
    assert_refused(opt, params, TypeError, r"param_groups\[0\]\['params'\]\[3\].*sparse")


def test_tensor_on_another_device_changes_nothing():
    opt, params = trained()
    bad = torch.nn.Parameter(torch.empty(4, device="meta"))
    bad.grad = torch.empty(4, device="meta")
    opt.param_groups[1]["params"].insert(0, bad)
    assert_refused(opt, params, TypeError, r"param_groups\[1\]\['params'\]\[0\].*device meta.*CPU")


def test_a_scheduled_bad_value_changes_nothing():
    opt, params = trained()
    opt.param_groups[1]["lr"] = -0.5
    assert_refused(opt, params, ValueError, r"param_groups\[1\].*lr")
    opt.param_groups[1]["lr"] = 0.01
    opt.param_groups[0]["betas"] = (0.9, 1.0)
    assert_refused(opt, params, ValueError, r"param_groups\[0\].*beta")


@pytest.mark.parametrize("name", tc.NAMES)
@pytest.mark.parametrize("flag", ["foreach", "fused", "capturable", "differentiable"])
def test_implementation_flags_are_refused(name, flag):
    import inspect
    if flag not in inspect.signature(getattr(ft, name)).parameters:
        with pytest.raises(TypeError):
            getattr(ft, name)([torch.nn.Parameter(torch.zeros(2))], **{flag: True})
        return
    with pytest.raises(ValueError, match=f"{flag}=True"):
        getattr(ft, name)([torch.nn.Parameter(torch.zeros(2))], **{flag: True})
    # the values that mean "torch picks", or off, are accepted
    getattr(ft, name)([torch.nn.Parameter(torch.zeros(2))], **{flag: None if flag in ("foreach", "fused") else False})


@pytest.mark.parametrize("name,kwargs,match", [
    ("SGD", {"lr": -1.0}, "learning rate"),
    ("SGD", {"momentum": -0.1}, "momentum"),
    ("SGD", {"nesterov": True}, "Nesterov"),
    ("Adam", {"betas": (1.0, 0.9)}, "beta"),
    ("Adam", {"eps": -1e-8}, "epsilon"),
    ("AdamW", {"weight_decay": -0.1}, "weight_decay"),
    ("RMSprop", {"alpha": -0.5}, "alpha"),
    ("Adagrad", {"lr_decay": -1.0}, "lr_decay"),
    ("Adagrad", {"initial_accumulator_value": -1.0}, "initial_accumulator_value"),
    ("Lion", {"betas": (0.9, 1.5)}, "beta"),
    ("Lion", {"lr": float("nan")}, "learning rate"),
    ("NAdam", {"momentum_decay": -1.0}, "momentum_decay"),
    ("RAdam", {"betas": (0.9, 1.0)}, "beta"),
    ("Adamax", {"eps": -1.0}, "epsilon"),
    ("Adadelta", {"rho": 1.5}, "rho"),
    ("ASGD", {"lambd": -1.0}, "lambd"),
    ("ASGD", {"t0": float("inf")}, "t0"),
    ("Rprop", {"etas": (1.2, 0.5)}, "eta values"),
    ("Rprop", {"step_sizes": (-1.0, 50)}, "step size"),
])
def test_bad_hyper_parameters_at_construction(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        getattr(ft, name)([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_bad_hyper_parameter_of_an_added_group():
    opt, params = trained()
    extra = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="beta"):
        opt.add_param_group({"params": [extra], "betas": (0.9, 2.0)})
    assert len(opt.param_groups) == 2


def load_case():
    opt, params = trained("Adam", amsgrad=True)
    state = opt.state_dict()
    state = {"state": {k: {s: v.clone() for s, v in d.items()} for k, d in state["state"].items()},
             "param_groups": [dict(g) for g in state["param_groups"]]}
    return opt, params, state


def _set(*path, value=None, delete=False):
    """An edit of a state dict: set (or delete) the entry at `path`."""
    def edit(state):
        node = state
        for key in path[:-1]:
            node = node[key]
        if delete:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return edit


@pytest.mark.parametrize("edit,match", [
    (_set("state", 4, "exp_avg_sq", value=torch.zeros(2)), r"state\[4\]\['exp_avg_sq'\].*shape"),
    (_set("state", 0, "max_exp_avg_sq", delete=True), r"state\[0\].*max_exp_avg_sq"),
    (_set("state", 1, "step", value=torch.tensor(2.5)), r"state\[1\]\['step'\]"),
    (_set("state", 3, "exp_avg", value=torch.zeros((3, 4, 5), dtype=torch.int64)), r"state\[3\]\['exp_avg'\]"),
    (_set("param_groups", 1, "eps", value=-1.0), r"param_groups\[1\].*eps"),
    (_set("param_groups", 0, "betas", value=(0.9, 1.0)), r"param_groups\[0\].*beta"),
], ids=["moment-shape", "missing-moment", "fractional-step", "integer-moment", "bad-eps", "bad-betas"])
def test_a_bad_loaded_state_changes_nothing(edit, match):
    opt, params, state = load_case()
    edit(state)
    assert_refused(opt, params, ValueError, match, lambda: opt.load_state_dict(state))


def test_load_with_other_groups_changes_nothing():
    opt, params, state = load_case()
    state["param_groups"] = state["param_groups"][:1]
    assert_refused(opt, params, ValueError, "parameter groups", lambda: opt.load_state_dict(state))


def test_load_of_another_optimizer_changes_nothing():
    """An SGD state has none of Adam's moments: refused by name, not half loaded."""
    opt, params = trained("Adam")
    other_params = tc.clone_params(params)
    sgd = ft.SGD(tc.groups(other_params, "SGD", {"momentum": 0.9}), momentum=0.9)
    tc.train(sgd, other_params, 2)
    assert_refused(opt, params, ValueError, "betas", lambda: opt.load_state_dict(sgd.state_dict()))


def test_parameters_sharing_memory_change_nothing():
    """Two parameters over one tensor's memory: refused before any group steps."""
    opt, params = trained()
    base = torch.zeros(6)
    shared = [torch.nn.Parameter(base), torch.nn.Parameter(base[2:])]
    for p in shared:
        p.grad = torch.ones_like(p)
    opt.add_param_group({"params": shared, "lr": 0.1})
    assert_refused(opt, params, ValueError, r"param_groups\[2\]\['params'\]\[1\] shares memory with "
                                            r"param_groups\[2\]\['params'\]\[0\]")
    assert torch.equal(base, torch.zeros(6))


def test_fusedopt_optim_ranges_apply_at_construction():
    with pytest.raises(ValueError, match="alpha"):
        ft.RMSprop([torch.nn.Parameter(torch.zeros(2))], alpha=1.5)
    opt = ft.RMSprop([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match=r"param_groups\[1\].*alpha"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "alpha": 2.0})
    assert len(opt.param_groups) == 1


BAD_KINDS = {
    "float8": lambda: (torch.zeros(3, dtype=torch.float8_e4m3fn), torch.ones(3, dtype=torch.float8_e4m3fn)),
    "complex": lambda: (torch.zeros(3, dtype=torch.complex128), torch.ones(3, dtype=torch.complex128)),
    "sparse grad": lambda: (torch.zeros(3), torch.ones(3).to_sparse()),
    "meta": lambda: (torch.empty(3, device="meta"), torch.empty(3, device="meta")),
}


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(tc.NAMES), kind=st.sampled_from(sorted(BAD_KINDS)), group=st.integers(0, 1),
       position=st.integers(0, 3), steps=st.integers(0, 3))
def test_a_bad_tensor_anywhere_changes_nothing(name, kind, group, position, steps):
    """Whatever the optimizer, the kind of bad tensor, its group and place and
    how many steps came before: TypeError naming it, nothing changed."""
    params = tc.make_params(torch.float32)
    opt = getattr(ft, name)(tc.groups(params, name, {}))
    tc.train(opt, params, steps)
    tc.set_grads(params, tc.grads_for(params, steps, none=lambda i, k: False))
    p, g = BAD_KINDS[kind]()
    bad = torch.nn.Parameter(p)
    bad.grad = g
    opt.param_groups[group]["params"].insert(position, bad)
    assert_refused(opt, params, TypeError, rf"param_groups\[{group}\]\['params'\]\[{position}\]")


@pytest.mark.parametrize("kind", ["float64", "sparse"])
def test_a_bad_new_gradient_on_a_planned_group_changes_nothing(kind):
    """A new gradient object of the wrong kind where the last step's plan
    still holds (only the gradient tensors changed) is refused like any other.
    (torch refuses gradients of another shape or device when .grad is set.)"""
    opt, params = trained()
    opt.step()  # planned with every gradient present
    tc.set_grads(params, tc.grads_for(params, 4, none=lambda i, k: False))
    if kind == "float64":
        params[4].grad_dtype = None  # torch's switch that lets .grad have another dtype
        params[4].grad = params[4].grad.double()
    else:
        params[4].grad = params[4].grad.to_sparse()
    assert_refused(opt, params, (TypeError, ValueError), r"param_groups\[1\]\['params'\]\[1\]")
