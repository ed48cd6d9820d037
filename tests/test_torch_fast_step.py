"""The steady-state step of fusedopt.torch (no hook, profiler off, nothing its
plan depends on changed: no check repeated) takes every change torch's step
would take, and torch's step wrapper runs as torch's when it has work to do.

Each test trains with gradients written into the same .grad tensors (as with
zero_grad(set_to_none=False)), so that the steps before the change run on the
fast path; a fast path that ignored the change fails the comparison.
References: torch.optim 2.13 AdamW (foreach=False) in float64 at torch_cases.TOL."""
import warnings

import pytest

torch = pytest.importorskip("torch")

import fusedopt.torch as ft  # noqa: E402
import torch_cases as tc  # noqa: E402
from test_torch_trust import assert_same  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook  # noqa: E402

CONFIG = {"lr": 0.05, "betas": (0.9, 0.99), "weight_decay": 0.1}


def kept_train(opt, params, steps, start=0):
    """`steps` steps whose gradients are copied into the existing .grad tensors."""
    for k in range(start, start + steps):
        for p, g in zip(params, tc.grads_for(params, k, none=lambda i, k: False)):
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        opt.step()


def make_pair(config=CONFIG, steps=3):
    ref_params = tc.make_params(torch.float64)
    our_params = tc.clone_params(ref_params)
    ref = torch.optim.AdamW(ref_params, foreach=False, **config)
    ours = ft.AdamW(our_params, **config)
    for opt, params in ((ref, ref_params), (ours, our_params)):
        kept_train(opt, params, steps)
    return ref, ref_params, ours, our_params


def both(pair, change, steps=2, start=3):
    """Apply `change(opt, params)` to both optimizers, then train both on."""
    ref, ref_params, ours, our_params = pair
    for opt, params in ((ref, ref_params), (ours, our_params)):
        change(opt, params)
        kept_train(opt, params, steps, start)
    assert_same(ref, ref_params, ours, our_params)


def test_a_swapped_grad_tensor_is_taken():
    def swap(opt, params):
        params[0].grad = params[0].grad * -3.0  # another tensor object, other memory, other values
        opt.step()
    both(make_pair(), swap)


def test_a_parameter_given_new_memory_is_stepped_there():
    def rebind(opt, params):
        with torch.no_grad():
            params[1].data = params[1].detach().clone() + 1.0
    both(make_pair(), rebind)


def test_a_plain_lr_assigned_to_the_group_is_taken():
    both(make_pair(), lambda opt, params: opt.param_groups[0].__setitem__("lr", 0.5))


def test_a_tensor_lr_changed_in_place_is_taken():
    config = {**CONFIG, "lr": torch.tensor(0.05, dtype=torch.float64)}

    def change(opt, params):
        opt.param_groups[0]["lr"].fill_(0.3)
    both(make_pair(config), change)


def test_betas_given_as_a_list_and_changed_in_place_are_taken():
    pair = make_pair()
    for opt in (pair[0], pair[2]):
        opt.param_groups[0]["betas"] = [0.9, 0.99]
    kept_train(pair[0], pair[1], 1, 3)
    kept_train(pair[2], pair[3], 1, 3)
    both(pair, lambda opt, params: opt.param_groups[0]["betas"].__setitem__(0, 0.5), start=4)


def test_a_state_tensor_edited_in_place_and_a_step_count_are_taken():
    def edit(opt, params):
        opt.state[params[0]]["exp_avg"].mul_(0.5)
        opt.state[params[2]]["step"].fill_(10)
    both(make_pair(), edit)


def test_an_assigned_state_tensor_is_taken():
    def assign(opt, params):
        opt.state[params[0]]["exp_avg_sq"] = torch.full_like(params[0], 0.25)
    both(make_pair(), assign)


def test_step_hooks_run_in_torchs_order_with_their_arguments():
    """Global pre, instance pre, the step, instance post, global post; a pre-hook's
    returned (args, kwargs) reach the step (here: a closure whose loss step returns)."""
    runs = {}
    for cls in (torch.optim.AdamW, ft.AdamW):
        params = tc.make_params(torch.float64)
        opt = cls(params, **CONFIG)
        kept_train(opt, params, 2)  # steady state before the hooks appear
        seen = []

        def global_pre(o, args, kwargs):
            seen.append("global pre")

        def pre(o, args, kwargs):
            seen.append("pre")
            return args, {"closure": lambda: seen.append("closure") or 7.0}

        handles = [register_optimizer_step_pre_hook(global_pre), opt.register_step_pre_hook(pre),
                   opt.register_step_post_hook(lambda o, a, k: seen.append("post")),
                   register_optimizer_step_post_hook(lambda o, a, k: seen.append("global post"))]
        try:
            loss = opt.step()
        finally:
            for h in handles:
                h.remove()
        opt.step()  # without hooks again: nothing more is seen
        runs[cls] = (seen, loss)
    assert runs[ft.AdamW] == runs[torch.optim.AdamW] == (["global pre", "pre", "closure", "post", "global post"], 7.0)


def test_a_profiled_step_is_recorded_under_torchs_name():
    params = tc.make_params(torch.float32)
    opt = ft.AdamW(params, **CONFIG)
    kept_train(opt, params, 2)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    names = [e.name for e in prof.events()]
    assert names.count("Optimizer.step#AdamW.step") == 1


def test_the_profilers_step_entry_point_is_called_at_every_step():
    params = tc.make_params(torch.float32)
    opt = ft.AdamW(params, **CONFIG)
    calls = []
    opt._optimizer_step_code = lambda: calls.append(len(calls))
    kept_train(opt, params, 3)
    assert calls == [0, 1, 2]


def test_a_scheduler_sees_the_steps():
    """LRScheduler's wrapper marks _opt_called; with it unset, scheduler.step() warns."""
    params = tc.make_params(torch.float64)
    opt = ft.AdamW(params, **CONFIG)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for k in range(3):
            kept_train(opt, params, 1, k)
            sched.step()
    assert opt._opt_called is True
    assert opt.param_groups[0]["lr"] == CONFIG["lr"] * 0.5 ** 3


def test_the_class_step_is_not_wrapped_again():
    params = tc.make_params(torch.float32)
    step = ft.AdamW.step
    ft.AdamW(params, **CONFIG)
    assert ft.AdamW.step is step and step.hooked is True


def test_the_native_check_compares_grad_objects_and_addresses():
    from fusedopt import _core
    params = [torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)]
    params[0].grad = torch.ones(3)
    grads = [params[0].grad, None]
    ptrs = [p.data_ptr() for p in params]
    assert _core.same_grads_and_memory(params, grads, ptrs) is True
    assert _core.same_grads_and_memory(params, [torch.ones(3), None], ptrs) is False  # an equal, other tensor
    assert _core.same_grads_and_memory(params, grads, [ptrs[0], ptrs[1] + 4]) is False
    assert _core.same_grads_and_memory(params, grads[:1], ptrs) is False
    assert _core.same_grads_and_memory(params + [params[0]], grads + [grads[0]], ptrs + ptrs[:1]) is True
    assert _core.same_grads_and_memory(tuple(params), grads, ptrs) is False  # lists only: the plan's own
    with pytest.raises(AttributeError):
        _core.same_grads_and_memory([object()], [None], [0])  # no .grad: Python's own error


def test_the_native_check_looks_up_grad_and_data_ptr_as_python_does():
    from fusedopt import _core
    other = torch.ones(3)

    class OwnGrad(torch.Tensor):
        grad = property(lambda self: other)  # a Python property over torch's getter

    class Later(torch.Tensor):
        pass

    own = torch.zeros(3).as_subclass(OwnGrad)
    assert _core.same_grads_and_memory([own], [other], [own.data_ptr()]) is True
    assert _core.same_grads_and_memory([own], [None], [own.data_ptr()]) is False
    shadowed = torch.zeros(3, requires_grad=True)
    real = shadowed.data_ptr()
    assert _core.same_grads_and_memory([shadowed], [None], [real]) is True  # the type's lookups cached
    shadowed.data_ptr = lambda: 12345  # an instance attribute shadows the method, as in Python
    assert _core.same_grads_and_memory([shadowed], [None], [12345]) is True
    assert _core.same_grads_and_memory([shadowed], [None], [real]) is False
    later = torch.zeros(3).as_subclass(Later)
    for t in (later, torch.zeros(3), later):  # cached, then the type changes: looked up again
        assert _core.same_grads_and_memory([t], [None], [t.data_ptr()]) is True
    Later.data_ptr = lambda self: 7
    assert _core.same_grads_and_memory([later], [None], [7]) is True
    Later.grad = property(lambda self: other)
    assert _core.same_grads_and_memory([later], [other], [7]) is True


def test_the_native_plan_check_compares_values_grads_addresses_and_counts():
    import numpy as np
    from fusedopt import _core
    params = [torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)]
    params[0].grad = torch.ones(3)
    grads = [params[0].grad, None]
    ptrs = [p.data_ptr() for p in params]
    counts = np.array([4.0, 4.0], dtype=np.float32)
    keys, lr = ("lr", "betas", "amsgrad"), 0.1
    raw = (lr, (0.9, 0.99), False)

    def check(group=None, grads=grads, ptrs=ptrs, watched=(counts,), shown=(counts.tobytes(),), raw=raw):
        group = {"params": params, "lr": lr, "betas": (0.9, 0.99), "amsgrad": False} if group is None else group
        return _core.plan_unchanged(group, keys, raw, grads, ptrs, list(watched), list(shown))

    def group(**changed):
        return {"params": params, "lr": lr, "betas": (0.9, 0.99), "amsgrad": False, **changed}

    assert check() is lr  # the remembered lr object itself: nothing to take
    assert check(group(betas=(0.9, 0.99))) is lr  # an equal tuple of the same types
    assert check(group(lr=0.2)) == 0.2 and check(group(lr=3)) == 3  # a scheduler's new plain lr
    for bad_lr in (-0.1, float("inf"), float("nan"), True, torch.tensor(0.1), 10 ** 400, "0.1"):
        assert check(group(lr=bad_lr)) is None  # the full check decides (and refuses or takes it)
    assert check(group(amsgrad=0)) is None  # equal, but an int where a bool was: the full check refuses it
    assert check(group(betas=(0.9, 0.98))) is None and check(group(betas=[0.9, 0.99])) is None
    assert check(group(betas=(torch.tensor([0.9, 0.8]), 0.99))) is None  # a comparison that raises: full check
    assert check({"params": params, "lr": lr, "betas": (0.9, 0.99)}) is None  # a key removed
    assert check({"lr": lr, "betas": (0.9, 0.99), "amsgrad": False}) is None  # no params
    assert check(grads=[torch.ones(3), None]) is None and check(ptrs=[ptrs[0], ptrs[1] + 4]) is None
    assert check(shown=(np.array([4.0, 5.0], dtype=np.float32).tobytes(),)) is None  # a count edited in place
    assert check(watched=(counts, counts)) is None  # lists of one length only
    assert check(raw=raw[:2]) is None


def test_a_subclass_step_calling_ours_runs_the_hooks_once():
    class Logged(ft.AdamW):
        def step(self, closure=None):
            seen.append("subclass step")
            return super().step(closure)

    seen = []
    params = tc.make_params(torch.float32)
    opt = Logged(params, **CONFIG)
    opt.register_step_pre_hook(lambda o, a, k: seen.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: seen.append("post"))
    kept_train(opt, params, 2)
    assert seen == ["pre", "subclass step", "post"] * 2


def test_a_bool_setting_given_an_equal_int_is_refused():
    """amsgrad=0 equals False, but torch's checks (and fusedopt's) want a bool."""
    params = tc.make_params(torch.float32)
    opt = ft.AdamW(params, **CONFIG)
    kept_train(opt, params, 2)
    opt.param_groups[0]["amsgrad"] = 0
    with pytest.raises(TypeError, match="amsgrad"):
        opt.step()


# -- a new plain lr every step (a scheduler's) stays on the steady-state path ---------------

@pytest.fixture
def full_checks(monkeypatch):
    """Counts the full path's hyper-parameter checks (the steady-state path makes none)."""
    import fusedopt.torch as module
    calls = []
    real = module.check_hyper
    monkeypatch.setattr(module, "check_hyper", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    return calls


def test_a_schedulers_lr_is_taken_without_the_full_check(full_checks):
    ref, ref_params, ours, our_params = make_pair()
    scheds = [torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.7) for opt in (ref, ours)]
    before = len(full_checks)
    for k in range(3, 8):
        for opt, params, sched in ((ref, ref_params, scheds[0]), (ours, our_params, scheds[1])):
            kept_train(opt, params, 1, k)
            sched.step()
    assert len(full_checks) == before  # every lr taken on the steady-state path
    assert_same(ref, ref_params, ours, our_params)


@pytest.mark.parametrize("lr", [-0.1, float("nan"), float("inf")])
def test_a_bad_plain_lr_is_refused_and_no_group_is_stepped(lr):
    params = tc.make_params(torch.float64)
    opt = ft.AdamW([{"params": params[:2]}, {"params": params[2:]}], **CONFIG)
    kept_train(opt, params, 2)
    opt.param_groups[0]["lr"] = 0.01  # a valid change in the first group
    opt.param_groups[1]["lr"] = lr
    snapshot = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['lr'\]: Invalid learning rate"):
        opt.step()
    for a, b in zip(params, snapshot):
        assert torch.equal(a.detach(), b)


def test_an_lr_taken_on_the_steady_state_path_is_not_lost_by_a_full_check():
    # lr 0.5 taken on the steady-state path, then back to the first value in a step that
    # takes the full path (a new .grad object): the engines must step with the first value again
    def change(opt, params):
        opt.param_groups[0]["lr"] = 0.5
        kept_train(opt, params, 1, 10)
        opt.param_groups[0]["lr"] = CONFIG["lr"]
        params[0].grad = params[0].grad.clone()
    both(make_pair(), change)
