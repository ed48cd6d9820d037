"""fusedopt.optim's bad-input contract: a TypeError/ValueError naming the leaf (or
the hyper-parameter) and what was expected, and nothing modified."""
import numpy as np
import pytest

from fusedopt import _core, optim
from optim_cases import OPTIM

CLASSES = [getattr(optim, e.name) for e in OPTIM]


def _fresh():
    params = {"a": np.ones((2, 3), np.float32), "b": [np.ones(5)]}
    grads = {"a": np.full((2, 3), 0.5, np.float32), "b": [np.full(5, 0.5)]}
    return params, grads


def _stepped(cls):
    opt = cls(lr=0.1)
    params, grads = _fresh()
    opt.step(params, grads)
    return opt, params, grads


def _snapshot(opt, params):
    state = {k: [np.array(x, copy=True) for x in _core.Plan(params, "p").flatten(v)] for k, v in opt.state_arrays().items()}
    return [params["a"].copy(), params["b"][0].copy()], state, opt.step_count


def _unchanged(opt, params, snap):
    again = _snapshot(opt, params)
    for a, b in zip(snap[0], again[0]):
        np.testing.assert_array_equal(a, b)
    for k in snap[1]:
        for a, b in zip(snap[1][k], again[1][k]):
            np.testing.assert_array_equal(a, b)
    assert snap[2] == again[2]


BAD_STEPS = [
    (lambda p, g: (p, {**g, "b": [np.full(5, 0.5, np.float32)]}), TypeError, r"grads at \['b'\]\[0\]: expected a float64"),
    (lambda p, g: (p, {**g, "a": np.ones((3, 2), np.float32)}), ValueError, r"grads at \['a'\]: expected a float32 array of shape \(2, 3\)"),
    (lambda p, g: (p, {**g, "a": [1.0]}), TypeError, r"grads at \['a'\]"),
    (lambda p, g: (p, {"a": g["a"]}), ValueError, "does not match the structure"),
    (lambda p, g: ({**p, "a": p["a"].T.copy().T}, g), ValueError, r"params at \['a'\]: the array must be C-contiguous"),
    (lambda p, g: ({**p, "b": [np.ones(5, np.float32)]}, g), TypeError, r"params at \['b'\]\[0\]"),
]


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("case", range(len(BAD_STEPS)))
def test_bad_step_names_the_leaf_and_changes_nothing(cls, case):
    opt, params, grads = _stepped(cls)
    snap = _snapshot(opt, params)
    make, exc, match = BAD_STEPS[case]
    bad_params, bad_grads = make(params, grads)
    with pytest.raises(exc, match=match):
        opt.step(bad_params, bad_grads)
    _unchanged(opt, params, snap)


def test_read_only_and_shared_params_are_refused():
    opt, params, grads = _stepped(optim.Adam)
    snap = _snapshot(opt, params)
    ro = params["a"].copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        opt.step({**params, "a": ro}, grads)
    shared = np.ones(6)
    opt2 = optim.SGD(lr=0.1)
    with pytest.raises(ValueError, match="shares memory"):
        opt2.step([shared[:5], shared[1:6]], [np.ones(5), np.ones(5)])
    np.testing.assert_array_equal(shared, np.ones(6))
    _unchanged(opt, params, snap)


@pytest.mark.parametrize("cls", CLASSES)
def test_check_finite(cls):
    opt = cls(lr=0.1, check_finite=True)
    params, grads = _fresh()
    opt.step(params, grads)
    snap = _snapshot(opt, params)
    grads["b"][0][2] = np.inf
    with pytest.raises(FloatingPointError, match=r"grads at \['b'\]\[0\] contains NaN or Inf"):
        opt.step(params, grads)
    _unchanged(opt, params, snap)


def test_first_step_failure_leaves_no_state():
    opt = optim.Adam()
    params, grads = _fresh()
    with pytest.raises(ValueError):
        opt.step(params, {**grads, "a": np.ones(4, np.float32)})
    assert opt.state_arrays() == {} and opt.step_count == 0
    opt.step({"x": np.ones(3)}, {"x": np.ones(3)})  # any structure may still start


BAD_HYPER = [(getattr(optim, e.name), kwargs, exc) for e in OPTIM for kwargs, exc in e.bad]


@pytest.mark.parametrize("cls,kwargs,exc", BAD_HYPER)
def test_bad_hyper_parameters_at_construction(cls, kwargs, exc):
    name = "nesterov" if "nesterov" in kwargs else next(iter(kwargs))  # the message names the parameter
    with pytest.raises(exc, match=name):
        cls(**kwargs)


@pytest.mark.parametrize("cls,kwargs,exc", BAD_HYPER)
def test_bad_hyper_parameters_on_assignment_change_nothing(cls, kwargs, exc):
    opt = cls()
    before = repr(opt)
    with pytest.raises(exc):
        for k, v in kwargs.items():
            setattr(opt, k, v)
    if len(kwargs) == 1:
        assert repr(opt) == before


def test_rule_choosing_options_are_fixed_while_there_is_state():
    opt, params, grads = _stepped(optim.Adam)
    with pytest.raises(ValueError, match="amsgrad"):
        opt.amsgrad = True
    assert opt.amsgrad is False
    opt.betas = (0.5, 0.5)  # others change between steps
    opt.step(params, grads)
    opt.reset()
    opt.amsgrad = True
    opt.step(params, grads)
    assert "max_exp_avg_sq" in opt.state_arrays()


def test_bad_masks():
    params, grads = _fresh()
    with pytest.raises(ValueError, match=r"no entry at \['b'\]\[0\]"):
        optim.AdamW(weight_decay_mask={"a": True}).step(params, grads)
    with pytest.raises(TypeError, match="expected a bool"):
        optim.AdamW(weight_decay_mask={"a": 1, "b": [True]}).step(params, grads)
    with pytest.raises(TypeError, match="expected a bool"):
        optim.AdamW(weight_decay_mask=lambda path, a: None).step(params, grads)
    np.testing.assert_array_equal(params["a"], np.ones((2, 3), np.float32))
