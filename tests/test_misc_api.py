"""Smaller API contracts: parameters that share memory are refused before
anything changes; a schedule without a current value asks for update_lr()
first; the module names of the reference documentation exist."""
import numpy as np
import pytest

from fusedopt import optimizers


def test_the_same_array_twice_is_refused_and_nothing_changes():
    a = np.arange(10, dtype=np.float32)
    before = a.copy()
    opt = optimizers.ADAM(stepsize=0.1)
    with pytest.raises(ValueError, match=r"params at \[1\]: shares memory with params at \[0\]"):
        opt.update([a, a], [np.ones(10, np.float32), np.ones(10, np.float32)])
    assert np.array_equal(a, before) and opt.step_count == 0 and opt.memory.mean_gradient is None


def test_overlapping_views_are_refused_but_adjacent_ones_step():
    a = np.zeros(10, np.float32)
    grads = {"x": np.ones(6, np.float32), "y": np.ones(6, np.float32)}
    with pytest.raises(ValueError, match=r"params at \['y'\]: shares memory with params at \['x'\]"):
        optimizers.Gradient(stepsize=0.5).update({"x": a[:6], "y": a[4:]}, grads)
    assert not a.any()
    optimizers.Gradient(stepsize=0.5).update({"x": a[:5], "y": a[5:]},
                                              {"x": np.ones(5, np.float32), "y": np.ones(5, np.float32)})
    assert np.array_equal(a, np.full(10, -0.5, np.float32))  # 0 - float32(0.5) * 1


def test_a_schedule_without_value_needs_update_lr_first():
    class Halving:
        def __init__(self):
            self.rate = 1.0

        def __next__(self):
            self.rate /= 2
            return self.rate

    p = np.ones(3, np.float32)
    opt = optimizers.Gradient(stepsize=Halving())
    with pytest.raises(TypeError, match=r"call update_lr\(\) before update\(\)"):
        opt.update(p, np.ones(3, np.float32))
    assert np.array_equal(p, np.ones(3, np.float32))
    opt.update_lr()
    opt.update(p, np.ones(3, np.float32))
    assert np.array_equal(p, np.full(3, 0.5, np.float32))  # 1 - float32(0.5) * 1


def test_module_names_of_the_reference_documentation_exist():
    # paysage's optimizers module also exposes `partial` and `deepcopy`, and the
    # original documentation lists them: they behave as functools'/copy's.
    add = optimizers.partial(lambda a, b: a + b, 2)
    assert add(3) == 5
    tree = {"w": [np.ones(2, np.float32)]}
    copied = optimizers.deepcopy(tree)
    assert copied["w"][0] is not tree["w"][0] and np.array_equal(copied["w"][0], tree["w"][0])
