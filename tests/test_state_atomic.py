"""load_state_dict, reset and moment assignment check everything before they change anything:
a refused call leaves the optimizer exactly as it was (issue 12, item 4)."""
import pickle
import warnings

import numpy as np
import pytest

from fusedopt import optimizers, schedules

import reference as ref


def fingerprint(obj):
    """Everything a state_dict() shows, as comparable bytes (moments waiting for a structure included)."""
    out = []
    for key, value in sorted(obj.state_dict().items()):
        out.append((key, value.dtype.str, value.shape, value.tobytes()) if isinstance(value, np.ndarray)
                   else (key, type(value), repr(value)))
    return out


def snapshot(opt):
    return (fingerprint(opt), repr(opt.lr), opt.check_convergence(),
            None if opt.memory.mean_gradient is None else ref.tree_bytes(opt.memory.mean_gradient))


def trained(rng, steps=3):
    params = ref.random_tree("paysage", rng, "mixed")
    opt = optimizers.ADAM(schedules.ExponentialDecay(initial=0.05, coefficient=0.9), check_finite=True)
    p = ref.tree_copy(params)
    for _ in range(steps):
        opt.update_lr()
        opt.update(p, ref.like_tree(params, rng))
    return opt, params


@pytest.mark.parametrize("name", ["Schedule", "_Decay", "schedule_from_config", "np", "sys"])
def test_a_state_naming_no_schedule_class_changes_nothing(name, rng):
    opt, params = trained(rng)
    source, _ = trained(np.random.default_rng(3), steps=5)
    bad = dict(source.state_dict(), schedule=name)
    before = snapshot(opt)
    with pytest.raises(ValueError, match=rf"schedule {name} cannot be rebuilt.*unknown schedule class"):
        opt.load_state_dict(bad)
    assert snapshot(opt) == before


@pytest.mark.parametrize("lr", [1e39, -1e39, 3.5e38])
def test_a_rate_beyond_float32_changes_nothing(lr, rng):
    opt, _ = trained(rng)
    source, _ = trained(np.random.default_rng(3), steps=5)
    bad = dict(source.state_dict(), lr=lr)
    before = snapshot(opt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as in the project's pytest settings, and said here again
        with pytest.raises(ValueError, match=r"state\['lr'\] must be a float32 value.*beyond float32's range"):
            opt.load_state_dict(bad)
    assert snapshot(opt) == before


@pytest.mark.parametrize("lr", [float(np.finfo(np.float32).max), float("inf"), float("nan")])
def test_every_float32_rate_loads(lr, rng):
    opt, _ = trained(rng)
    state = dict(opt.state_dict(), lr=lr)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.load_state_dict(state)
    assert type(opt.lr) is np.float32 and repr(float(opt.lr)) == repr(lr)


def test_assigning_a_wrong_moment_while_loaded_moments_wait_changes_nothing(rng):
    tree = ref.random_tree("list", rng, "float32")
    mem = optimizers.GradientMemory(0.5, 0.5)
    mem.update(tree)
    waiting = optimizers.GradientMemory()
    waiting.load_state_dict(mem.state_dict())
    before = fingerprint(waiting)
    wrong = ref.tree_map(lambda a: np.zeros(np.shape(a), np.float64), tree)  # the structure fits, the dtype not
    with pytest.raises(ValueError, match=r"grad at \[0\]: the loaded state has float32 of shape \(2, 2\), got float64"):
        waiting.mean_gradient = wrong
    assert fingerprint(waiting) == before and waiting.mean_square_gradient is None  # still waiting


def test_assigning_a_moment_of_another_shape_changes_nothing(rng):
    tree = ref.random_tree("dict", rng, "mixed")
    mem = optimizers.GradientMemory(0.5, 0.5)
    mem.update(tree)
    before = fingerprint(mem)
    wrong = ref.tree_map(lambda a: np.zeros(np.shape(a) + (1,), a.dtype), tree)
    with pytest.raises(ValueError, match=r"moment at .*: expected"):
        mem.mean_square_gradient = wrong
    assert fingerprint(mem) == before


def test_reset_of_a_waiting_state_and_pickle_of_every_stage(rng):
    opt, params = trained(rng)
    fresh = optimizers.ADAM()
    fresh.load_state_dict(opt.state_dict())
    for obj in (opt, fresh):
        assert fingerprint(pickle.loads(pickle.dumps(obj))) == fingerprint(obj)
    fresh.reset()
    assert fresh.state_dict()["has_mean_gradient"] is False and fresh.memory.mean_gradient is None
    assert fingerprint(pickle.loads(pickle.dumps(fresh))) == fingerprint(fresh)
