"""Untrusted state and refused calls (issue 22, items 7 and 8): a loaded state is checked against
the layout before anything of its size is allocated, its counts are in range, a step that would
overflow the count is refused, and a refused step changes nothing observable."""
import tracemalloc

import numpy as np
import pytest

from fusedopt import optim, optimizers

HUGE = [2 ** 26, 2 ** 31]  # a broadcast view of one element claiming 256 MiB, 8 GiB of float32


def peak_of(call):
    """The peak of memory traced (numpy's buffers included) while `call` runs; (peak, its exception)."""
    tracemalloc.start()
    try:
        try:
            call()
            error = None
        except Exception as exc:  # noqa: BLE001 - returned to the test
            error = exc
        return tracemalloc.get_traced_memory()[1], error
    finally:
        tracemalloc.stop()


def adam_optim():
    opt = optim.Adam(lr=0.1)
    p = [np.zeros(3, np.float32)]
    opt.step(p, [np.ones(3, np.float32)])
    return opt, p


def same_state(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("n", HUGE)
def test_optim_broadcast_moments_are_refused_by_shape_before_any_allocation(n):
    opt, p = adam_optim()
    state, before = opt.state_dict(), opt.state_dict()
    state["exp_avg.0"] = np.broadcast_to(np.float32(0), (n,))
    peak, error = peak_of(lambda: opt.load_state_dict(state))
    assert isinstance(error, ValueError) and "expected a float32 array of shape (3,)" in str(error)
    assert peak < 2 ** 20 and same_state(opt.state_dict(), before)
    fresh = optim.Adam(lr=0.1)  # no layout yet: the state waits, compact, for the first step's
    peak, error = peak_of(lambda: fresh.load_state_dict(state))
    assert error is None and peak < 2 ** 20
    peak, error = peak_of(lambda: fresh.step(p, [np.ones(3, np.float32)]))
    assert isinstance(error, ValueError) and peak < 2 ** 20 and fresh.step_count == 1


@pytest.mark.parametrize("n", HUGE)
def test_paysage_broadcast_moments_are_refused_by_shape_before_any_allocation(n):
    opt = optimizers.ADAM(0.1)
    p = np.zeros(3, np.float32)
    opt.update(p, np.ones(3, np.float32))
    state, before = opt.state_dict(), opt.state_dict()
    for key in ("mean_gradient.0", "mean_square_gradient.0"):
        state[key] = np.broadcast_to(np.float32(0), (n,))
    peak, error = peak_of(lambda: opt.load_state_dict(state))
    assert isinstance(error, ValueError) and "(3,)" in str(error) and peak < 2 ** 20
    assert same_state(opt.state_dict(), before)
    fresh = optimizers.ADAM(0.1)
    peak, error = peak_of(lambda: fresh.load_state_dict(state))
    assert error is None and peak < 2 ** 20
    peak, error = peak_of(lambda: fresh.update(p, np.ones(3, np.float32)))
    assert isinstance(error, ValueError) and peak < 2 ** 20
    assert fresh.memory.mean_gradient is None and fresh.step_count == 1


@pytest.mark.parametrize("count", [2 ** 63, 2 ** 70, -1])
def test_optim_step_count_out_of_range_is_a_clear_error(count):
    opt, _ = adam_optim()
    state, before = opt.state_dict(), opt.state_dict()
    state["step_count"] = count
    with pytest.raises(ValueError, match=rf"state\['step_count'\] must be in \[0, 2\*\*63 - 1\], got {count}"):
        opt.load_state_dict(state)
    assert same_state(opt.state_dict(), before)


def test_optim_a_step_that_would_overflow_the_count_is_refused():
    opt, p = adam_optim()
    state = opt.state_dict()
    state["step_count"] = 2 ** 63 - 1
    opt.load_state_dict(state)
    before, params = opt.state_dict(), [a.copy() for a in p]
    with pytest.raises(ValueError, match=r"step_count is 2\*\*63 - 1.*no further step"):
        opt.step(p, [np.ones(3, np.float32)])
    assert same_state(opt.state_dict(), before) and np.array_equal(p[0], params[0])
    opt.load_state_dict(opt.state_dict())  # and the state still loads


def test_paysage_refused_step_leaves_loaded_moments_waiting():
    """Item 8: update, state_dict, reset, load_state_dict, then a refused NaN step: mean_gradient
    stays None, the state the same; the next good step equals a twin's that had no refusal."""
    opt, twin = optimizers.ADAM(0.1), optimizers.ADAM(0.1)
    p, tp = np.zeros(3, np.float32), np.zeros(3, np.float32)
    g = np.array([1.0, -2.0, 0.5], np.float32)
    opt.update(p, g)
    twin.update(tp, g)
    saved = opt.state_dict()
    opt.reset()
    opt.load_state_dict(saved)
    twin.reset()
    twin.load_state_dict(saved)
    opt.check_finite = twin.check_finite = True
    bad = np.array([np.nan, 1.0, 1.0], np.float32)
    with pytest.raises(FloatingPointError, match="nothing was modified"):
        opt.update(p, bad)
    assert opt.memory.mean_gradient is None and opt.memory.mean_square_gradient is None
    assert same_state(opt.state_dict(), twin.state_dict()) and opt.step_count == twin.step_count
    opt.update(p, g)
    twin.update(tp, g)
    assert np.array_equal(p, tp)
    assert np.array_equal(opt.memory.mean_gradient, twin.memory.mean_gradient)
