"""fusedopt.torch against torch.optim 2.13 (foreach=False, the single-tensor
reference) over many steps, with two parameter groups of different
hyper-parameters, an lr scheduler that changes every group's lr at every step,
and gradients that are None now and then (so step counts within a group drift
apart). Lion, which torch lacks, runs against torch_cases.LionReference.

Tolerances: torch_cases.TOL (float64 tight, float32 stated there)."""
import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings, strategies as st  # noqa: E402

import fusedopt.torch as ft  # noqa: E402
import torch_cases as tc  # noqa: E402

CASES = [(name, i) for name in tc.NAMES for i in range(len(tc.CONFIGS[name]))]


def run_pair(name, config, dtype, steps=tc.STEPS, with_scheduler=True, none=tc.none_at):
    ref_params = tc.make_params(dtype)
    our_params = tc.clone_params(ref_params)
    ref = tc.reference_class(name)(tc.groups(ref_params, name, config), **config)
    ours = getattr(ft, name)(tc.groups(our_params, name, config), **config)
    ref_sched = tc.scheduler(ref) if with_scheduler else None
    our_sched = tc.scheduler(ours) if with_scheduler else None
    tc.train(ref, ref_params, steps, sched=ref_sched, none=none)
    tc.train(ours, our_params, steps, sched=our_sched, none=none)
    return ref, ref_params, ours, our_params


def assert_same_training(name, ref, ref_params, ours, our_params, dtype):
    rtol, atol = tc.TOL[dtype]
    for i, (a, b) in enumerate(zip(ref_params, our_params)):
        assert b.dtype == dtype and b.shape == a.shape
        torch.testing.assert_close(b.detach(), a.detach(), rtol=rtol, atol=atol, msg=lambda m: f"param {i}: {m}")
        ra, rb = ref.state.get(a, {}), ours.state.get(b, {})
        assert set(rb) == set(ra), f"param {i}: state slots {sorted(rb)} != torch's {sorted(ra)}"
        for slot, va in ra.items():
            vb = rb[slot]
            if slot == "step":
                assert float(vb) == float(va), f"param {i}: step {float(vb)} != {float(va)}"
                assert vb.dtype == va.dtype and vb.shape == va.shape
            else:
                torch.testing.assert_close(vb, va, rtol=rtol, atol=atol, msg=lambda m: f"param {i} {slot}: {m}")
    for ga, gb in zip(ref.param_groups, ours.param_groups):
        assert gb["lr"] == ga["lr"]


@pytest.mark.parametrize("none", [tc.none_at, tc.none_once], ids=["none-drifting", "none-once"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name,index", CASES, ids=[f"{n}-{i}" for n, i in CASES])
def test_parity_with_groups_scheduler_and_none_grads(name, index, dtype, none):
    """Drifting: a new set of parameters with gradients almost every step (the
    plan is rebuilt); once: one missing gradient, then steady steps on the plan."""
    config = tc.CONFIGS[name][index]
    ref, ref_params, ours, our_params = run_pair(name, config, dtype, none=none)
    assert_same_training(name, ref, ref_params, ours, our_params, dtype)
    # The parameters moved: a test that steps nothing would pass the comparison.
    start = tc.make_params(dtype)
    assert all(not torch.equal(p.detach(), s) for p, s in zip(our_params, start))


@pytest.mark.parametrize("name", tc.NAMES)
def test_defaults_match_torch(name):
    """Constructor defaults: torch 2.13's (Lion: fusedopt.optim's)."""
    p = [torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))]
    ours = getattr(ft, name)(p)
    if name == "Lion":
        expected = {"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0, "maximize": False}
    else:
        expected = {k: v for k, v in getattr(torch.optim, name)(p).defaults.items()}
    for key, value in expected.items():
        assert ours.defaults[key] == value, key
    assert set(ours.defaults) >= set(expected)


def test_mixed_dtypes_in_one_group():
    """float32 and float64 leaves in one group step like torch's, each in its dtype."""
    ref_params = tc.make_params(torch.float64)
    for i in (0, 3):
        ref_params[i] = torch.nn.Parameter(ref_params[i].detach().float())
    our_params = tc.clone_params(ref_params)
    ref = torch.optim.Adam(ref_params, lr=0.01, weight_decay=0.1, foreach=False)
    ours = ft.Adam(our_params, lr=0.01, weight_decay=0.1)
    tc.train(ref, ref_params, 12)
    tc.train(ours, our_params, 12)
    for a, b in zip(ref_params, our_params):
        rtol, atol = tc.TOL[a.dtype]
        assert b.dtype == a.dtype
        torch.testing.assert_close(b.detach(), a.detach(), rtol=rtol, atol=atol)


def test_assigned_hyper_parameters_are_read_at_every_step():
    """Values written into param_groups between steps (as schedulers of momentum
    and betas do) take effect at the next step, as in torch."""
    ref_params = tc.make_params(torch.float64)
    our_params = tc.clone_params(ref_params)
    ref = torch.optim.AdamW(ref_params, lr=0.01, foreach=False)
    ours = ft.AdamW(our_params, lr=0.01)
    for k in range(12):
        for opt in (ref, ours):
            opt.param_groups[0]["betas"] = (0.9 - 0.02 * k, 0.999 - 0.01 * k)
            opt.param_groups[0]["weight_decay"] = 0.01 * k
            opt.param_groups[0]["eps"] = 10.0 ** -(4 + k % 5)
        tc.set_grads(ref_params, tc.grads_for(ref_params, k, none=tc.none_once))
        tc.set_grads(our_params, tc.grads_for(our_params, k, none=tc.none_once))
        ref.step()
        ours.step()
    for a, b in zip(ref_params, our_params):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=tc.TOL[torch.float64][0], atol=tc.TOL[torch.float64][1])


def test_closure_is_called_with_grad_enabled_and_its_loss_returned():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    w_ref = torch.nn.Parameter(w.detach().clone())
    ours, ref = ft.SGD([w], lr=0.1, momentum=0.9), torch.optim.SGD([w_ref], lr=0.1, momentum=0.9, foreach=False)

    def closure_for(param, opt):
        def closure():
            opt.zero_grad()
            assert torch.is_grad_enabled()
            loss = (param ** 2).sum()
            loss.backward()
            return loss
        return closure

    for _ in range(5):
        with torch.no_grad():
            loss = ours.step(closure_for(w, ours))
        loss_ref = ref.step(closure_for(w_ref, ref))
        torch.testing.assert_close(loss.detach(), loss_ref.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(w.detach(), w_ref.detach(), rtol=1e-12, atol=1e-14)


def test_zero_grad_as_torch():
    p = tc.make_params(torch.float32)
    opt = ft.Adam(p)
    tc.set_grads(p, tc.grads_for(p, 1, none=lambda i, k: False))
    opt.step()
    opt.zero_grad(set_to_none=False)
    assert all(q.grad is not None and not q.grad.any() for q in p)
    opt.zero_grad()
    assert all(q.grad is None for q in p)
    before = [q.detach().clone() for q in p]
    opt.step()  # no gradients: nothing steps, as in torch
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, p))


def test_real_model_training_matches_torch():
    """A small MLP trained by backward() and the documented loop."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()
    model_ref = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()
    model_ref.load_state_dict(model.state_dict())
    x, y = torch.randn(64, 8, dtype=torch.float64), torch.randn(64, 1, dtype=torch.float64)
    ours = ft.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    ref = torch.optim.AdamW(model_ref.parameters(), lr=1e-2, weight_decay=1e-2, foreach=False)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(ours, T_max=20)
    sched_ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref, T_max=20)
    for _ in range(20):
        for m, opt, s in ((model, ours, sched), (model_ref, ref, sched_ref)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            opt.step()
            s.step()
    for a, b in zip(model_ref.parameters(), model.parameters()):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=tc.TOL[torch.float64][0], atol=tc.TOL[torch.float64][1])


@settings(max_examples=15, deadline=None)
@given(name=st.sampled_from(tc.TORCH_NAMES), pattern=st.lists(st.lists(st.booleans(), min_size=6, max_size=6),
                                                               min_size=1, max_size=10),
       split=st.integers(0, 6))
def test_any_none_pattern_and_grouping_matches_torch(name, pattern, split):
    """Any pattern of missing gradients over up to 10 steps (a whole group may
    lack gradients at a step), any split of the leaves into two groups."""
    split = max(1, min(split, 5))
    config = tc.CONFIGS[name][1]
    ref_params = tc.make_params(torch.float64)
    our_params = tc.clone_params(ref_params)
    ref = tc.reference_class(name)(tc.groups(ref_params, name, config, split), **config)
    ours = getattr(ft, name)(tc.groups(our_params, name, config, split), **config)

    def none(i, k):
        return not pattern[k][i]
    tc.train(ref, ref_params, len(pattern), none=none)
    tc.train(ours, our_params, len(pattern), none=none)
    assert_same_training(name, ref, ref_params, ours, our_params, torch.float64)


def test_tensor_lr_as_torch():
    """lr as a 1-element tensor (torch allows it), changed in place by a
    scheduler (every gradient present, so that nothing else re-plans). float64, as torch then computes its step scalars from the tensor
    in the tensor's dtype (a float32 lr would round them to float32 in torch)."""
    ref_params = tc.make_params(torch.float64)
    our_params = tc.clone_params(ref_params)
    ref = torch.optim.Adam(ref_params, lr=torch.tensor(0.01, dtype=torch.float64), foreach=False)
    ours = ft.Adam(our_params, lr=torch.tensor(0.01, dtype=torch.float64))
    ref_sched, our_sched = (torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.8) for o in (ref, ours))
    always = lambda i, k: False  # noqa: E731
    tc.train(ref, ref_params, 8, sched=ref_sched, none=always)
    tc.train(ours, our_params, 8, sched=our_sched, none=always)
    rtol, atol = tc.TOL[torch.float64]
    for a, b in zip(ref_params, our_params):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=rtol, atol=atol)


def test_step_hooks_run_once_per_step():
    params = tc.make_params(torch.float32)
    opt = ft.SGD(params, lr=0.1)
    seen = []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append("post"))
    tc.train(opt, params, 2)
    assert seen == ["pre", "post", "pre", "post"]


@pytest.mark.parametrize("name", tc.TORCH_NAMES)
def test_empty_tensors_and_a_group_added_later_as_torch(name):
    """Parameters with no elements step (their count advances) as in torch, and
    a group added after steps starts fresh; Adagrad's new 'sum' starts at the
    constructor's initial_accumulator_value, as torch's does, not the group's."""
    shapes = [(0,), (2, 0), (5,)]
    ref_params = tc.make_params(torch.float64, shapes=shapes)
    our_params = tc.clone_params(ref_params)
    config = tc.CONFIGS[name][1]
    ref = tc.reference_class(name)(ref_params, **config)
    ours = getattr(ft, name)(our_params, **config)
    always = lambda i, k: False  # noqa: E731
    tc.train(ref, ref_params, 2, none=always)
    tc.train(ours, our_params, 2, none=always)
    extra = {"initial_accumulator_value": 2.0} if name == "Adagrad" else {}
    for opt, params in ((ref, ref_params), (ours, our_params)):
        late = torch.nn.Parameter(torch.linspace(-1, 1, 4, dtype=torch.float64))
        opt.add_param_group({"params": [late], **extra})
        params.append(late)
    tc.train(ref, ref_params, 3, start=2, none=always)
    tc.train(ours, our_params, 3, start=2, none=always)
    rtol, atol = tc.TOL[torch.float64]
    for a, b in zip(ref_params, our_params):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=rtol, atol=atol)
        for slot, va in ref.state[a].items():
            torch.testing.assert_close(ours.state[b][slot], va, rtol=rtol, atol=atol)


def test_one_cycle_schedule_of_lr_and_betas_and_named_parameters():
    """OneCycleLR changes lr and beta1 at every step (cycle_momentum); the
    optimizer takes named parameters, as torch's does."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    model_ref = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    model_ref.load_state_dict(model.state_dict())
    ours = ft.AdamW(model.named_parameters(), lr=1e-2)
    ref = torch.optim.AdamW(model_ref.named_parameters(), lr=1e-2, foreach=False)
    assert ours.param_groups[0]["param_names"] == ref.param_groups[0]["param_names"]
    scheds = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=15) for o in (ours, ref)]
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    for _ in range(15):
        for m, opt, s in ((model, ours, scheds[0]), (model_ref, ref, scheds[1])):
            opt.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            opt.step()
            s.step()
    assert ours.param_groups[0]["betas"] == ref.param_groups[0]["betas"]
    rtol, atol = tc.TOL[torch.float64]
    for a, b in zip(model_ref.parameters(), model.parameters()):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", tc.TORCH_NAMES)
def test_non_finite_gradients_as_torch(name):
    """NaN and infinite gradient elements (and signed zeros) give torch's results:
    the NaN propagation of torch.maximum and clamp, and torch.sign's 0 for NaN
    (Rprop's step sizes then stay as they were)."""
    p0 = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, -1.5], dtype=torch.float64)
    ref_p, our_p = torch.nn.Parameter(p0.clone()), torch.nn.Parameter(p0.clone())
    config = tc.CONFIGS[name][1]
    ref = tc.reference_class(name)([ref_p], lr=tc.lr_of(name), **config)
    ours = getattr(ft, name)([our_p], lr=tc.lr_of(name), **config)
    nan, inf = float("nan"), float("inf")
    for g in ([0.5, -1.0, nan, 0.0, inf, -0.0], [-0.5, -1.0, 1.0, 0.0, 1.0, -inf], [0.5, 2.0, 1.0, -0.0, -1.0, 1.0]):
        for p in (ref_p, our_p):
            p.grad = torch.tensor(g, dtype=torch.float64)
        ref.step()
        ours.step()
        torch.testing.assert_close(our_p.detach(), ref_p.detach(), rtol=1e-12, atol=1e-14, equal_nan=True)


@pytest.mark.parametrize("name", tc.SCALAR_STATE)
@pytest.mark.parametrize("index", [0, 1, 2])
def test_scalar_state_under_a_float64_default_dtype(name, index):
    """Under torch.set_default_dtype(torch.float64) torch keeps NAdam's and ASGD's
    scalar state in float64, and so does fusedopt: the same float64 parity."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        config = tc.CONFIGS[name][index]
        ref_params = tc.make_params(torch.float64)
        our_params = tc.clone_params(ref_params)
        ref = tc.reference_class(name)(tc.groups(ref_params, name, config), **config)
        ours = getattr(ft, name)(tc.groups(our_params, name, config), **config)
        tc.train(ref, ref_params, tc.STEPS)
        tc.train(ours, our_params, tc.STEPS)
        assert_same_training(name, ref, ref_params, ours, our_params, torch.float64)
    finally:
        torch.set_default_dtype(saved)
