"""Schedule values are real scalars; non-finite rates follow check_finite; the rate used before
any update_lr() follows stepsize.value however it changes (issue 12, item 7)."""
import numpy as np
import pytest

from fusedopt import optimizers, schedules

import reference as ref


class Returns:
    """A schedule whose __next__ returns the given value (and whose value is it too)."""

    def __init__(self, value):
        self.value = value

    def __next__(self):
        return self.value


ODD = [None, "0.5", b"0.5", np.array([0.5], np.float32), np.zeros((1, 1)), 0.5 + 0j, np.complex64(0.5), True,
       np.bool_(False), object(), [0.5], np.array("0.5"), np.array(0.5 + 1j)]
GOOD = [0.5, 2, np.float32(0.25), np.float64(0.1), np.int64(3), np.array(0.125), np.array(0.2, np.float32),
        np.array(7, np.int32)]


def short(value):
    return repr(value)[:20]


@pytest.mark.parametrize("value", ODD, ids=short)
def test_update_lr_refuses_what_is_not_a_real_scalar(value):
    opt = optimizers.ADAM(Returns(value))
    opt.lr = np.float32(0.01)
    with pytest.raises(TypeError, match=r"Returns\.__next__\(\).*must be a real scalar.*got " + type(value).__name__):
        opt.update_lr()
    assert opt.lr == np.float32(0.01)


@pytest.mark.parametrize("value", ODD, ids=short)
def test_a_first_update_refuses_a_value_that_is_not_a_real_scalar(value, rng):
    opt = optimizers.Gradient(Returns(value))
    p, g = np.ones(5, np.float32), np.ones(5, np.float32)
    pattern = (r"the schedule Returns has no current value" if value is None else
               r"Returns\.value \(the rate before any update_lr\(\)\) must be a real scalar")
    with pytest.raises(TypeError, match=pattern):
        opt.update(p, g)
    assert np.array_equal(p, np.ones(5, np.float32)) and opt.step_count == 0


@pytest.mark.parametrize("value", ["0.5", b"0.5", None, np.array([0.5])], ids=short)
@pytest.mark.parametrize("name", ["Constant", "ExponentialDecay", "PowerLawDecay", "Step", "Linear"])
def test_fusedopt_schedules_refuse_a_value_that_is_not_a_real_scalar(name, value):
    schedule = getattr(schedules, name)()
    schedule.value = value
    with pytest.raises(TypeError, match=rf"{name}\.value must be a real scalar"):
        next(schedule)


@pytest.mark.parametrize("value", GOOD, ids=short)
def test_real_scalars_give_their_float32_rate(value, rng):
    opt = optimizers.Gradient(Returns(value))
    p, g = rng.standard_normal(9).astype(np.float32), rng.standard_normal(9).astype(np.float32)
    expected = p - np.float32(value) * g
    q = p.copy()
    opt.update(q, g)  # before update_lr(): stepsize.value
    assert q.tobytes() == expected.tobytes()
    opt.update_lr()
    assert type(opt.lr) is np.float32 and opt.lr == np.float32(value)


def test_a_0d_array_value_changed_in_place_changes_the_rate(rng):
    value = np.array(0.5, np.float32)
    opt = optimizers.Gradient(schedules.Constant(initial=value))
    p, g = rng.standard_normal(33).astype(np.float32), rng.standard_normal(33).astype(np.float32)
    q = p.copy()
    opt.update(q, g)
    value[...] = 0.25  # the same object, another value
    opt.update(q, g)
    assert q.tobytes() == ((p - np.float32(0.5) * g) - np.float32(0.25) * g).tobytes()


def test_a_new_value_object_changes_the_rate(rng):
    opt = optimizers.Gradient(schedules.Constant(initial=0.5))
    p, g = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    q = p.copy()
    opt.update(q, g)
    opt.stepsize.value = 0.125
    opt.update(q, g)
    opt.stepsize = schedules.Constant(initial=2.0)
    opt.update(q, g)
    want = ((p - np.float32(0.5) * g) - np.float32(0.125) * g) - np.float32(2.0) * g
    assert q.tobytes() == want.tobytes()


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 1e39, 10 ** 400], ids=short)
@pytest.mark.parametrize("path", ["inplace", "paysage"])
def test_non_finite_rates_are_refused_with_check_finite(value, path, rng):
    params = ref.random_tree("paysage", rng, "mixed")
    grad = ref.like_tree(params, rng)
    opt = optimizers.ADAM(Returns(value), check_finite=True)
    target = ref.MockModel(params) if path == "paysage" else ref.tree_copy(params)
    opt.update_lr()  # kept: the check is where the rate is used
    assert not np.isfinite(opt.lr)
    with pytest.raises(FloatingPointError, match=r"learning rate is .* check_finite is True: nothing was modified"):
        opt.update(target, grad)
    stepped = target.params if path == "paysage" else target
    assert ref.tree_bytes(stepped) == ref.tree_bytes(params) and opt.step_count == 0
    assert opt.memory.mean_gradient is None and opt.delta is None
    if path == "paysage":
        assert target.calls == 0


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_rates_propagate_without_check_finite(value, rng):
    p, g = rng.standard_normal(17).astype(np.float32), rng.standard_normal(17).astype(np.float32)
    opt = optimizers.Gradient(Returns(value))
    q = p.copy()
    opt.update_lr()
    with np.errstate(all="ignore"):
        expected = p - np.float32(value) * g
        opt.update(q, g)
    assert q.tobytes() == expected.tobytes()
