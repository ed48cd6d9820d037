"""Issue 22, items 5, 6 and 9 for fusedopt.torch: a refused step changes
nothing (everything is checked before any kernel runs), in-place edits of the
state tensors are what the next step uses (as in torch), torch's errors for a
tensor lr or mixed betas, state dicts that round-trip exactly, and
load_state_dict in torch's order (pre-hooks, check, load, post-hooks).

References: torch.optim 2.13 (foreach=False) at torch_cases.TOL, or an exact
value explained at the assertion."""
import copy
import io
import itertools
import pickle

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

torch = pytest.importorskip("torch")

import fusedopt.torch as ft  # noqa: E402
from fusedopt.torch import _plan  # noqa: E402
import torch_cases as tc  # noqa: E402

Parameter = torch.nn.Parameter
ALWAYS = lambda i, k: False  # noqa: E731  (every leaf has a gradient at every step)


def pair(name, dtype=torch.float64, config=None, none=ALWAYS, steps=3):
    """torch's optimizer (or LionReference) and fusedopt's, same parameters
    and groups, after `steps` steps."""
    config = tc.CONFIGS[name][1] if config is None else config
    ref_params = tc.make_params(dtype)
    our_params = tc.clone_params(ref_params)
    ref = tc.reference_class(name)(tc.groups(ref_params, name, config), **config)
    ours = getattr(ft, name)(tc.groups(our_params, name, config), **config)
    tc.train(ref, ref_params, steps, none=none)
    tc.train(ours, our_params, steps, none=none)
    return ref, ref_params, ours, our_params


def assert_same(ref, ref_params, ours, our_params, dtype=torch.float64):
    rtol, atol = tc.TOL[dtype]
    for i, (a, b) in enumerate(zip(ref_params, our_params)):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=rtol, atol=atol, msg=lambda m: f"param {i}: {m}")
        ra, rb = ref.state.get(a, {}), ours.state.get(b, {})
        assert set(ra) == set(rb)
        for slot in ra:
            torch.testing.assert_close(rb[slot], ra[slot], rtol=rtol, atol=atol, msg=lambda m: f"{i} {slot}: {m}")


# -- item 6: a refused step changes nothing ------------------------------------------------

def test_issue_item_6_an_expanded_parameter_is_refused_before_anything_is_stepped():
    q = Parameter(torch.ones(3))
    q.grad = torch.ones(3)
    e = Parameter(torch.zeros(1).expand(4))
    e.grad = torch.ones(4)
    opt = ft.Adam([q, e])
    for _ in range(2):  # a retry is refused alike
        with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[1\] has elements that share memory"):
            opt.step()
        assert torch.equal(q.detach(), torch.ones(3)) and torch.equal(e.detach(), torch.zeros(4))
        assert dict(opt.state) == {}
    # without the bad parameter the step is a first step, as torch's
    opt.param_groups[0]["params"].pop()
    ref_q = Parameter(torch.ones(3))
    ref_q.grad = torch.ones(3)
    ref = torch.optim.Adam([ref_q], foreach=False)
    opt.step()
    ref.step()
    assert torch.equal(q.detach(), ref_q.detach()) and float(opt.state[q]["step"]) == 1.0


@pytest.mark.parametrize("name", tc.NAMES)
def test_a_self_overlapping_parameter_in_a_later_group_changes_nothing(name):
    """Groups already stepped (with state) and a bad parameter in the second
    group: nothing of the first group moves either."""
    opt, params = _trained(name)
    bad = Parameter(torch.zeros(2, 1).expand(2, 3))
    bad.grad = torch.ones(2, 3)
    opt.param_groups[1]["params"].append(bad)
    before = tc.snapshot(opt, params)
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['params'\]\[3\] has elements that share memory"):
        opt.step()
    assert tc.unchanged(before, tc.snapshot(opt, params))


def _trained(name):
    params = tc.make_params(torch.float32)
    opt = getattr(ft, name)(tc.groups(params, name, tc.CONFIGS[name][1]), **tc.CONFIGS[name][1])
    tc.train(opt, params, 3)
    tc.set_grads(params, tc.grads_for(params, 3, none=ALWAYS))
    return opt, params


def _offsets_repeat(shape, strides):
    """The reference: whether two index tuples of the layout reach one offset."""
    seen = set()
    for index in itertools.product(*map(range, shape)):
        offset = sum(i * s for i, s in zip(index, strides))
        if offset in seen:
            return True
        seen.add(offset)
    return False


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(0, 7)), min_size=1, max_size=3))
def test_overlaps_itself_is_exact(dims):
    """As listing every element's offset says, for any strided layout
    (broadcast, overlapping, or interleaved without overlap)."""
    shape, strides = [s for s, _ in dims], [st_ for _, st_ in dims]
    span = 1 + sum((s - 1) * st_ for s, st_ in dims)
    t = torch.zeros(span).as_strided(shape, strides)
    assert _plan.overlaps_itself(t) == _offsets_repeat(shape, strides)


def test_an_interleaved_layout_without_overlap_is_stepped_like_torch():
    """Strides (2, 3) over a 3x3 view reach 9 distinct offsets (0, 2, 3, 4, 5,
    6, 7, 8, 10): not refused, and stepped as torch steps it."""
    ref_base, our_base = torch.randn(11, dtype=torch.float64), None
    our_base = ref_base.clone()
    grad = torch.randn(3, 3, dtype=torch.float64)
    views = [Parameter(b.as_strided((3, 3), (2, 3))) for b in (ref_base, our_base)]
    for v in views:
        v.grad = grad.clone()
    ref, ours = torch.optim.Adam([views[0]], lr=0.1, foreach=False), ft.Adam([views[1]], lr=0.1)
    for _ in range(3):
        ref.step()
        ours.step()
    torch.testing.assert_close(our_base, ref_base, rtol=1e-12, atol=1e-14)


# -- item 5: in-place edits of the state tensors are what the next step uses -----------------

@pytest.mark.parametrize("name", [n for n in tc.NAMES if n != "SGD"])  # SGD keeps no step count
@pytest.mark.parametrize("value", [0.0, 1.0, 40.0])
def test_issue_item_5_an_edited_step_count_is_used(name, value):
    """opt.state[p]['step'].fill_(v) on every parameter, then more steps: the
    bias corrections (Adam, AdamW), the lr decay (Adagrad) and the counts
    shown (all) follow the edited count, as torch's."""
    ref, ref_params, ours, our_params = pair(name)
    for opt, params in ((ref, ref_params), (ours, our_params)):
        for p in params:
            opt.state[p]["step"].fill_(value)
    tc.train(ref, ref_params, 3, start=3, none=ALWAYS)
    tc.train(ours, our_params, 3, start=3, none=ALWAYS)
    assert_same(ref, ref_params, ours, our_params)
    assert all(float(ours.state[p]["step"]) == value + 3 for p in our_params)


def test_issue_item_5_exact_case():
    """The issue's case: the update after fill_(0) is a first step's again."""
    torch.manual_seed(0)
    ref_p = Parameter(torch.randn(5))
    our_p = Parameter(ref_p.detach().clone())
    ref, ours = torch.optim.Adam([ref_p], lr=0.1, foreach=False), ft.Adam([our_p], lr=0.1)
    for k in range(4):
        g = torch.randn(5)
        for p in (ref_p, our_p):
            p.grad = g.clone()
        if k == 3:
            ref.state[ref_p]["step"].fill_(0)
            ours.state[our_p]["step"].fill_(0)
        ref.step()
        ours.step()
    torch.testing.assert_close(our_p.detach(), ref_p.detach(), rtol=2e-5, atol=2e-6)
    assert float(ours.state[our_p]["step"]) == 1.0


@pytest.mark.parametrize("name", tc.SCALAR_STATE)
def test_an_edited_scalar_state_is_used_and_splits_its_bucket_as_torch(name):
    """opt.state[p][scalar].mul_(...) on one parameter (NAdam's mu_product):
    the next steps start from the edited value, as torch's do."""
    ref, ref_params, ours, our_params = pair(name, steps=4)
    for opt, params in ((ref, ref_params), (ours, our_params)):
        for key in opt.state[params[1]]:
            if key != "step" and opt.state[params[1]][key].dim() == 0:
                opt.state[params[1]][key].mul_(0.5)
    tc.train(ref, ref_params, 4, start=4, none=tc.none_at)
    tc.train(ours, our_params, 4, start=4, none=tc.none_at)
    assert_same(ref, ref_params, ours, our_params)


@pytest.mark.parametrize("name", ["Adam", "Adagrad", "RMSprop"])
def test_an_edit_of_one_parameter_s_count_splits_its_bucket_as_torch(name):
    ref, ref_params, ours, our_params = pair(name, steps=4)
    ref.state[ref_params[1]]["step"].sub_(3)
    ours.state[our_params[1]]["step"].sub_(3)
    ref.state[ref_params[4]]["step"].add_(5)
    ours.state[our_params[4]]["step"].add_(5)
    tc.train(ref, ref_params, 4, start=4, none=tc.none_at)
    tc.train(ours, our_params, 4, start=4, none=tc.none_at)
    assert_same(ref, ref_params, ours, our_params)


@pytest.mark.parametrize("name", tc.NAMES)
def test_in_place_edits_of_moments_are_used(name):
    ref, ref_params, ours, our_params = pair(name)
    for opt, params in ((ref, ref_params), (ours, our_params)):
        for i, p in enumerate(params):
            for slot, t in opt.state[p].items():
                if slot != "step":
                    t.mul_(0.5 if i % 2 else 3.0)  # positive: second moments stay >= 0
    tc.train(ref, ref_params, 3, start=3, none=ALWAYS)
    tc.train(ours, our_params, 3, start=3, none=ALWAYS)
    assert_same(ref, ref_params, ours, our_params)


@pytest.mark.parametrize("value", [-1.0, 2.5, 1e30])
def test_an_edited_step_count_that_is_not_a_count_is_refused_at_the_next_step(value):
    opt, params = _trained("Adam")
    opt.state[params[4]]["step"].fill_(value)
    before = tc.snapshot(opt, params)
    with pytest.raises(ValueError, match=r"state of param_groups\[1\]\['params'\]\[1\]\['step'\]"):
        opt.step()
    assert tc.unchanged(before, tc.snapshot(opt, params))
    opt.state[params[4]]["step"].fill_(3)
    opt.step()  # a count again: stepped
    assert float(opt.state[params[4]]["step"]) == 4.0


def test_a_commit_cut_short_by_a_signal_handler_is_completed(monkeypatch):
    """An exception between the kernel and the rest of a bucket's commit (as a
    signal handler may raise there): the step happened (the engine counted
    it), so the next look at the optimizer shows it. Then as torch after the
    same steps."""
    ref, ref_params, ours, our_params = pair("Adam", none=ALWAYS)
    commit, calls = _plan.Bucket.commit, []

    def cut_short(self, state, *runs):
        calls.append(self)
        if len(calls) == 1:
            raise KeyboardInterrupt
        commit(self, state, *runs)

    monkeypatch.setattr(_plan.Bucket, "commit", cut_short)
    tc.set_grads(our_params, tc.grads_for(our_params, 3, none=ALWAYS))
    with pytest.raises(KeyboardInterrupt):
        ours.step()
    monkeypatch.setattr(_plan.Bucket, "commit", commit)
    saved = ours.state_dict()  # completes the commit
    assert [float(s["step"]) for s in saved["state"].values()] == [4.0] * 3 + [3.0] * 3
    tc.set_grads(ref_params, tc.grads_for(ref_params, 3, none=lambda i, k: i >= tc.SPLIT))
    ref.step()  # the first group's step alone: the exception left the second group's bucket unrun
    tc.train(ref, ref_params, 2, start=4, none=ALWAYS)
    tc.train(ours, our_params, 2, start=4, none=ALWAYS)
    assert_same(ref, ref_params, ours, our_params)


# -- item 9: torch's errors, exact round trips, load_state_dict's order ----------------------

@pytest.mark.parametrize("name", tc.TORCH_NAMES)
def test_issue_item_9_a_two_element_tensor_lr_is_torch_s_value_error(name):
    for cls in (getattr(torch.optim, name), getattr(ft, name)):
        with pytest.raises(ValueError, match="^Tensor lr must be 1-element$"):
            cls([Parameter(torch.zeros(2))], lr=torch.tensor([0.1, 0.2]))


def test_a_two_element_tensor_lr_of_an_added_or_scheduled_group_is_refused():
    opt, params = _trained("SGD")
    with pytest.raises(ValueError, match=r"param_groups\[2\]\['lr'\]: Tensor lr must be 1-element"):
        opt.add_param_group({"params": [Parameter(torch.zeros(2))], "lr": torch.tensor([0.1, 0.2])})
    assert len(opt.param_groups) == 2
    opt.param_groups[0]["lr"] = torch.tensor([0.1, 0.2])
    before = tc.snapshot(opt, params)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['lr'\]: Tensor lr must be 1-element"):
        opt.step()
    assert tc.unchanged(before, tc.snapshot(opt, params))


@pytest.mark.parametrize("name", ["Adam", "AdamW", "Lion"])
@pytest.mark.parametrize("betas", [(0.9, torch.tensor(0.99)), (torch.tensor(0.9), 0.99)], ids=["float-tensor", "tensor-float"])
def test_issue_item_9_mixed_float_and_tensor_betas_are_refused(name, betas):
    classes = [getattr(ft, name)] + ([getattr(torch.optim, name)] if name != "Lion" else [])
    for cls in classes:
        with pytest.raises(ValueError, match="^betas must be either both floats or both Tensors$"):
            cls([Parameter(torch.zeros(2))], betas=betas)


def test_tensor_betas_of_more_than_one_element_are_refused():
    """torch means to refuse them with this message (its check comes after a
    range check that fails first, with a RuntimeError)."""
    with pytest.raises(ValueError, match=r"^Tensor betas\[1\] must be 1-element$"):
        ft.Adam([Parameter(torch.zeros(2))], betas=(torch.tensor(0.9), torch.tensor([0.99, 0.9])))


def _sd_equal(a, b):
    """Two state dicts equal: the same groups (keys and values) and state
    (tensors equal in dtype, shape and bits)."""
    if a["param_groups"] != b["param_groups"] or set(a["state"]) != set(b["state"]):
        return False
    return tc.state_equal(a["state"], b["state"])


def _through_pickle(obj):
    return pickle.loads(pickle.dumps(obj))


def _through_torch_save(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("name", tc.NAMES)
@pytest.mark.parametrize("how", ["load", "deepcopy", "pickle", "torch.save", "load-after-deepcopy"])
def test_issue_item_9_state_dicts_round_trip_exactly(name, how):
    opt, params = _trained(name)
    saved = opt.state_dict()
    keys = [set(g) for g in opt.param_groups]
    if how == "load":
        other = opt
        other.load_state_dict(copy.deepcopy(saved))
    elif how == "deepcopy":
        other = copy.deepcopy(opt)
    elif how == "pickle":
        other = _through_pickle(opt)
    elif how == "torch.save":
        other = _through_torch_save(opt)
    else:
        other = copy.deepcopy(opt)
        other.load_state_dict(_through_pickle(saved))
    assert _sd_equal(other.state_dict(), saved)
    assert [set(g) for g in other.param_groups] == keys
    assert set(other.defaults) == set(opt.defaults)


def test_issue_item_9_lion_groups_gain_no_key():
    opt = ft.Lion([Parameter(torch.zeros(2))])
    opt.load_state_dict(opt.state_dict())
    assert "differentiable" not in opt.param_groups[0] and "differentiable" not in opt.defaults
    assert "differentiable" not in copy.deepcopy(opt).param_groups[0]


def test_issue_item_9_a_pre_hook_repairs_a_checkpoint_before_the_check():
    """A pre-hook that reshapes flattened moments back: torch lets it, so does fusedopt."""
    opt, params = _trained("Adam")
    saved = copy.deepcopy(opt.state_dict())
    flat = copy.deepcopy(saved)
    for entry in flat["state"].values():
        for slot in ("exp_avg", "exp_avg_sq"):
            entry[slot] = entry[slot].reshape(-1)
    shapes = {i: tuple(p.shape) for i, p in enumerate(params)}

    def unflatten(optimizer, state_dict):
        state_dict["state"] = {i: {k: v.reshape(shapes[i]) if k != "step" else v for k, v in e.items()}
                               for i, e in state_dict["state"].items()}

    fresh = ft.Adam(tc.groups(tc.clone_params(params), "Adam", {}))
    with pytest.raises(ValueError, match="shape"):
        fresh.load_state_dict(flat)  # without the hook: refused
    fresh.register_load_state_dict_pre_hook(unflatten)
    fresh.load_state_dict(flat)
    assert _sd_equal(fresh.state_dict(), saved)


def test_issue_item_9_what_a_pre_hook_returns_is_checked_and_refused_whole():
    opt, params = _trained("Adam")
    good = copy.deepcopy(opt.state_dict())
    bad = copy.deepcopy(good)
    bad["state"][4]["exp_avg"] = torch.zeros(7)
    opt.register_load_state_dict_pre_hook(lambda o, sd: bad)
    posts = []
    opt.register_load_state_dict_post_hook(lambda o: posts.append(o))
    before = tc.snapshot(opt, params)
    with pytest.raises(ValueError, match=r"state\[4\]\['exp_avg'\]: expected a floating-point tensor of shape"):
        opt.load_state_dict(good)
    assert tc.unchanged(before, tc.snapshot(opt, params)) and posts == []
    opt.step()  # and the optimizer steps on as before


@pytest.mark.parametrize("name", tc.TORCH_NAMES)
def test_load_state_dict_runs_hooks_in_torch_s_order_and_once(name):
    """Pre-hooks (in registration order, each seeing what the previous
    returned), then the load, then the post-hooks seeing the loaded state:
    the same events as torch's."""
    def events_of(cls, params):
        opt = cls(params, lr=0.5)
        events = []
        opt.register_load_state_dict_pre_hook(lambda o, sd: events.append(("pre1", o.param_groups[0]["lr"])))

        def pre2(o, sd):
            events.append(("pre2", sd["param_groups"][0]["lr"]))
            return {**sd, "param_groups": [{**sd["param_groups"][0], "lr": 0.25}]}

        opt.register_load_state_dict_pre_hook(pre2)
        opt.register_load_state_dict_post_hook(lambda o: events.append(("post", o.param_groups[0]["lr"])))
        saved = cls(params, lr=0.125).state_dict()
        opt.load_state_dict(saved)
        return events, opt.param_groups[0]["lr"]

    params = [Parameter(torch.zeros(2))]
    assert events_of(getattr(ft, name), params) == events_of(getattr(torch.optim, name), params) == \
        ([("pre1", 0.5), ("pre2", 0.125), ("post", 0.25)], 0.25)
