"""fusedopt.optim state: N steps + save + N steps == 2N steps bit for bit, through
np.savez and pickle; hyper-parameters travel with the state; loading is atomic;
state_arrays() views are the state; lr schedules and callables."""
import copy
import io
import os
import pickle
import sys

import numpy as np
import pytest

from fusedopt import optim, schedules
from optim_cases import ENTRIES, OPTIM, RICH
from optim_reference import Reference

def _params(rng):
    return {"w": rng.standard_normal((4, 9)).astype(np.float32), "b": rng.standard_normal(9),
            "deep": [rng.standard_normal(20).astype(np.float32)]}


def _grads(rng, params):
    return {"w": rng.standard_normal((4, 9)).astype(np.float32), "b": rng.standard_normal(9),
            "deep": [rng.standard_normal(20).astype(np.float32)]}


def _leaves(tree):
    return [tree["w"], tree["b"], tree["deep"][0]]


def _savez_roundtrip(state):
    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    return dict(np.load(buf))


@pytest.mark.parametrize("kind,hyper", RICH)
@pytest.mark.parametrize("how", ["savez", "pickle", "state_dict"])
def test_resume_is_exact(kind, hyper, how, rng):
    params = _params(rng)
    grads = [_grads(rng, params) for _ in range(8)]
    straight = {k: (v.copy() if k != "deep" else [v[0].copy()]) for k, v in params.items()}
    opt = getattr(optim, kind)(lr=schedules.ExponentialDecay(initial=0.05, coefficient=0.9), max_grad_norm=3.0, **hyper)
    for g in grads:
        opt.step(straight, g)
    resumed = {k: (v.copy() if k != "deep" else [v[0].copy()]) for k, v in params.items()}
    first = getattr(optim, kind)(lr=schedules.ExponentialDecay(initial=0.05, coefficient=0.9), max_grad_norm=3.0, **hyper)
    for g in grads[:4]:
        first.step(resumed, g)
    if how == "pickle":
        second = pickle.loads(pickle.dumps(first))
    else:
        state = first.state_dict()
        if how == "savez":
            state = _savez_roundtrip(state)
        second = getattr(optim, kind)(lr=1.0)  # other arguments: the state restores them
        second.load_state_dict(state)
    assert second.step_count == 4
    for g in grads[4:]:
        second.step(resumed, g)
    for a, b in zip(_leaves(straight), _leaves(resumed)):
        np.testing.assert_array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))
    assert repr(second) == repr(opt)


def test_state_restores_hyper_parameters(rng):
    opt = optim.Adam(lr=0.123, betas=(0.5, 0.6), eps=1e-3, weight_decay=0.2, maximize=True)
    other = optim.Adam()
    other.load_state_dict(_savez_roundtrip(opt.state_dict()))
    assert (other.lr, other.betas, other.eps, other.weight_decay, other.maximize) == (0.123, (0.5, 0.6), 1e-3, 0.2, True)
    assert other.step_count == 0 and other.state_arrays() == {}


def test_load_is_atomic(rng):
    params = _params(rng)
    opt = optim.Adam(lr=0.1)
    opt.step(params, _grads(rng, params))
    state = opt.state_dict()
    target = optim.Adam(lr=0.2, betas=(0.8, 0.9))
    p2 = _params(rng)
    target.step(p2, _grads(rng, p2))
    before = {k: np.array(v[0] if isinstance(v, list) else v, copy=True) for k, v in target.state_arrays()["exp_avg"].items()}
    for broken in ({**state, "exp_avg.1": state["exp_avg.1"][:3]},               # wrong shape
                   {**state, "exp_avg_sq.0": state["exp_avg_sq.0"].astype(np.float64)},  # wrong dtype
                   {**state, "hyper.betas": np.array([0.9, 1.5])},              # bad hyper-parameter
                   {**state, "kind": "SGD"},
                   {k: v for k, v in state.items() if k != "exp_avg.2"}):
        with pytest.raises((TypeError, ValueError)):
            target.load_state_dict(broken)
        assert target.lr == 0.2 and target.betas == (0.8, 0.9) and target.step_count == 1
        after = target.state_arrays()["exp_avg"]
        for k, v in before.items():
            np.testing.assert_array_equal(after[k][0] if k == "deep" else after[k], v)


def test_state_of_other_options_is_refused(rng):
    params = _params(rng)
    opt = optim.Adam(amsgrad=True)
    opt.step(params, _grads(rng, params))
    state = opt.state_dict()
    state["hyper.amsgrad"] = False  # slots now name max_exp_avg_sq, which Adam without amsgrad lacks
    with pytest.raises(ValueError, match="slots"):
        optim.Adam().load_state_dict(state)


def test_state_arrays_are_writable_views(rng):
    params = [np.zeros(5, np.float32)]
    opt = optim.SGD(lr=1.0, momentum=0.5)
    opt.init(params)
    assert opt.step_count == 0
    opt.step(params, [np.ones(5, np.float32)])  # first step: buf = g
    buf = opt.state_arrays()["momentum_buffer"][0]
    buf[...] = 10.0
    opt.step(params, [np.zeros(5, np.float32)])  # buf = 0.5 * 10, p = -1 - 5
    np.testing.assert_array_equal(params[0], np.full(5, -6.0, np.float32))
    np.testing.assert_array_equal(buf, np.full(5, 5.0, np.float32))


def test_step_count_set_through_load_state_dict(rng):
    params = [np.zeros(3)]
    opt = optim.Adam(lr=0.1)
    opt.init(params)
    state = opt.state_dict()
    state["step_count"] = 9  # the 10th step: bias corrections with t = 10
    opt.load_state_dict(state)
    opt.step(params, [np.ones(3)])
    m, v = 0.1, 0.001
    expected = -0.1 / (1 - 0.9 ** 10) * m / (np.sqrt(v) / (1 - 0.999 ** 10) ** 0.5 + 1e-8)
    np.testing.assert_allclose(params[0], expected, rtol=1e-15)
    assert opt.step_count == 10


def test_lr_callable_sees_steps_taken_and_schedule_advances_once_per_step():
    seen = []
    opt = optim.SGD(lr=lambda t: seen.append(t) or 0.5)
    p = [np.zeros(2)]
    for _ in range(3):
        opt.step(p, [np.ones(2)])
    assert seen == [0, 1, 2]
    np.testing.assert_array_equal(p[0], [-1.5, -1.5])
    sched = schedules.Linear(initial=1.0, delta=0.25)
    opt = optim.SGD(lr=sched)
    p = [np.zeros(1)]
    opt.step(p, [np.ones(1)])
    opt.step(p, [np.ones(1)])
    np.testing.assert_array_equal(p[0], [-1.75])
    assert sched.value == 0.5
    with pytest.raises(ValueError):  # a failing step does not advance the schedule
        opt.step(p, [np.ones(2)])
    assert sched.value == 0.5


def test_a_bad_lr_from_a_schedule_changes_nothing():
    opt = optim.SGD(lr=lambda t: -1.0)
    p = [np.ones(3)]
    with pytest.raises(ValueError, match="lr"):
        opt.step(p, [np.ones(3)])
    np.testing.assert_array_equal(p[0], np.ones(3))
    assert opt.step_count == 0


def test_reset_forgets_state_and_structure(rng):
    opt = optim.Adam()
    opt.step([np.ones(3)], [np.ones(3)])
    opt.reset()
    assert opt.step_count == 0 and opt.state_arrays() == {}
    opt.step({"a": np.ones(4)}, {"a": np.ones(4)})
    assert opt.step_count == 1


def test_mask_assigned_between_steps_takes_effect():
    params = {"w": np.ones((2, 2)), "b": np.ones(2)}
    grads = {"w": np.zeros((2, 2)), "b": np.zeros(2)}
    opt = optim.SGD(lr=0.5, weight_decay=0.1)
    opt.step(params, grads)  # p = p - 0.5 * 0.1 * p everywhere
    opt.weight_decay_mask = lambda path, a: a.ndim == 2
    opt.step(params, grads)
    np.testing.assert_array_equal(params["w"], np.full((2, 2), 0.95 * 0.95))
    np.testing.assert_array_equal(params["b"], np.full(2, 0.95))
    opt.weight_decay_mask = {"w": False, "b": True}
    opt.step(params, grads)
    np.testing.assert_array_equal(params["w"], np.full((2, 2), 0.95 * 0.95))
    np.testing.assert_array_equal(params["b"], np.full(2, 0.95 * 0.95))
    with pytest.raises(ValueError, match="no entry"):
        opt.weight_decay_mask = {"w": False}
    assert opt.weight_decay_mask == {"w": False, "b": True}


# -- the checked-in states, one per format version --------------------------------------------------
@pytest.mark.parametrize("name", ["v1", "v2", "v2_nadam"])
def test_checked_in_state_keeps_loading(name):
    data = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
    sys.path.insert(0, data)
    try:
        from make_optim_fixture import fixture_optimizer, fixture_tree, path_of
    finally:
        sys.path.remove(data)
    with np.load(path_of(name)) as saved:
        state = {key: saved[key] for key in saved.files}
    made = fixture_optimizer(name)  # the optimizer the fixture was saved from, before any step
    opt = type(made)()
    opt.load_state_dict(state)
    assert opt.step_count == 4 and repr(opt).split("(")[0] == type(made).__name__
    assert state["version"] == int(name[1]) and opt.state_dict()["version"] >= state["version"]
    # One more step, against the NumPy reference started from the saved slots.
    rng = np.random.default_rng(7)
    params, grads = fixture_tree(rng), fixture_tree(rng)
    flat = [params["b"], params["w"], params["z"][0]]
    ref_params = [p.copy() for p in flat]
    hyper = {name: state[f"hyper.{name}"] for name in type(made)._hyper_names if f"hyper.{name}" in state}
    hyper = {k: tuple(v.tolist()) if v.ndim else v.item() for k, v in hyper.items()}
    lr = float(next(copy.deepcopy(opt.lr))) if isinstance(opt.lr, schedules.Schedule) else opt.lr
    ref = Reference(type(made).__name__, lr=lr, max_grad_norm=made.max_grad_norm,
                    mask=[bool(b) for b in state["decay_mask"]], **hyper)
    ref.t = 4
    ref.state = [{name: state[f"{name}.{i}"].copy() for name in state["slots"]} for i in range(3)]
    ref.scalars = {name: float(state[f"scalar.{name}"]) for name in state.get("scalars", [])}
    opt.step(params, grads)
    ref.step(ref_params, [grads["b"], grads["w"], grads["z"][0]], norm=opt.last_grad_norm)
    for a, b in zip(flat, ref_params):
        np.testing.assert_array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))


@pytest.mark.parametrize("kind,hyper", [(e.name, e.rich) for e in OPTIM if e.scalars])
def test_bad_scalar_state_is_refused_and_changes_nothing(kind, hyper, rng):
    params = _params(rng)
    opt = getattr(optim, kind)(lr=0.01, **hyper)
    opt.step(params, _grads(rng, params))
    state = opt.state_dict()
    name = next(iter(ENTRIES[kind].scalars))
    opt.step(params, _grads(rng, params))
    before = opt.state_dict()
    for broken, exc in (({**state, f"scalar.{name}": np.nan}, ValueError),
                        ({**state, f"scalar.{name}": "1.0"}, TypeError),
                        ({k: v for k, v in state.items() if k != f"scalar.{name}"}, ValueError),
                        ({**state, "scalars": np.array([name, "other"]), "scalar.other": 1.0}, ValueError),
                        ({**state, "version": 1}, ValueError)):  # version 1 has no scalar state
        with pytest.raises(exc):
            opt.load_state_dict(broken)
        after = opt.state_dict()
        assert after.keys() == before.keys()
        for key, value in before.items():
            np.testing.assert_array_equal(np.asarray(after[key]), np.asarray(value), err_msg=key)
