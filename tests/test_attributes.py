"""Public attributes are checked when they are assigned: a bad value raises a TypeError or
ValueError naming the attribute and changes nothing; a good one is stored as the step uses it
(issue 12, item 8)."""
import pickle

import numpy as np
import pytest

from fusedopt import optimizers, schedules

import reference as ref

BAD = [
    ("check_finite", "yes", TypeError), ("check_finite", 1, TypeError), ("check_finite", None, TypeError),
    ("check_finite", np.array([True]), TypeError),
    ("keep_delta", "no", TypeError), ("keep_delta", 0, TypeError),
    ("ascent", 1.0, TypeError), ("ascent", "False", TypeError),
    ("tolerance", float("nan"), ValueError), ("tolerance", "x", TypeError), ("tolerance", -1e-9, ValueError),
    ("tolerance", True, TypeError), ("tolerance", None, TypeError),
    ("lr", "0.1", TypeError), ("lr", np.array([0.1]), TypeError), ("lr", 0.1 + 0j, TypeError), ("lr", True, TypeError),
    ("stepsize", "0.1", TypeError), ("stepsize", None, TypeError), ("stepsize", False, TypeError),
    ("step_count", -1, ValueError), ("step_count", 1.5, TypeError), ("step_count", "3", TypeError),
    ("memory", object(), TypeError), ("memory", None, TypeError),
]


def fingerprint(opt):
    out = []
    for key, value in sorted(opt.state_dict().items()):
        out.append((key, value.tobytes()) if isinstance(value, np.ndarray) else (key, repr(value)))
    return out, repr(opt.lr), opt.check_convergence()


@pytest.mark.parametrize("name,value,error", BAD, ids=[f"{n}={v!r}"[:30] for n, v, _ in BAD])
def test_a_bad_value_names_the_attribute_and_changes_nothing(name, value, error, rng):
    params = ref.random_tree("paysage", rng, "mixed")
    grads = [ref.like_tree(params, rng) for _ in range(3)]
    opt, twin = optimizers.ADAM(0.01, check_finite=True), optimizers.ADAM(0.01, check_finite=True)
    p, q = ref.tree_copy(params), ref.tree_copy(params)
    opt.update(p, grads[0])
    twin.update(q, grads[0])
    before = fingerprint(opt)
    with pytest.raises(error, match=name):
        setattr(opt, name, value)
    assert fingerprint(opt) == before
    for g in grads[1:]:  # and it steps as the twin does
        opt.update(p, g)
        twin.update(q, g)
    assert ref.tree_bytes(p) == ref.tree_bytes(q)


@pytest.mark.parametrize("name,value", [("mean_weight", 1.0), ("mean_square_weight", -0.1),
                                        ("mean_weight", "0.5"), ("mean_gradient", "x")])
def test_memory_attributes_are_checked(name, value, rng):
    mem = optimizers.GradientMemory(0.5, 0.5)
    mem.update(ref.random_tree("list", rng, "float32"))
    before = pickle.dumps(mem.state_dict())
    with pytest.raises((TypeError, ValueError), match=name if name != "mean_gradient" else "moment does not match"):
        setattr(mem, name, value)
    assert pickle.dumps(mem.state_dict()) == before


def test_good_values_are_stored_as_the_step_uses_them():
    opt = optimizers.Momentum(0.1)
    opt.check_finite = np.True_
    opt.ascent = np.bool_(False)
    assert opt.check_finite is True and opt.ascent is False
    opt.lr = 0.1
    assert type(opt.lr) is np.float32 and opt.lr == np.float32(0.1)
    opt.lr = np.array(0.25)
    assert type(opt.lr) is np.float32 and opt.lr == np.float32(0.25)
    opt.lr = None
    assert opt.lr is None
    opt.tolerance = float("inf")  # always converged
    opt.step_count = np.int64(4)
    assert type(opt.step_count) is int and opt.step_count == 4
    opt.stepsize = 0.5
    assert isinstance(opt.stepsize, schedules.Constant) and opt.stepsize.value == 0.5
    opt.memory = optimizers.GradientMemory(0.25)
    p = np.ones(3, np.float32)
    opt.update(p, np.ones(3, np.float32))
    assert opt.memory.mean_gradient.tobytes() == np.ones(3, np.float32).tobytes()


def test_assigned_switches_take_effect_at_the_next_step(rng):
    p, g = rng.standard_normal(40).astype(np.float32), rng.standard_normal(40).astype(np.float32)
    opt = optimizers.Gradient(0.5)
    q = p.copy()
    opt.update(q, g)
    opt.ascent = True
    opt.keep_delta = True
    opt.update(q, g)
    assert q.tobytes() == ((p - np.float32(0.5) * g) - np.float32(-0.5) * g).tobytes()
    assert opt.delta.tobytes() == (np.float32(-0.5) * g).tobytes()
    opt.check_finite = True
    bad = g.copy()
    bad[3] = np.nan
    with pytest.raises(FloatingPointError):
        opt.update(q, bad)
