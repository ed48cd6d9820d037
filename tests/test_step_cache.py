"""Optimizer.update is one call of its memory's native state (_core.State.step),
which keeps plan, moments and weights from step to step, and float32(stepsize.value) for
updates before update_lr() (fusedopt._paysage.native_step.unset_rate). Anything changed between two steps must still take effect: each test
changes one thing mid-run and checks every step bit for bit against the NumPy
reference (tests/reference.py)."""
import numpy as np
import pytest

from fusedopt import _core, optimizers, schedules
from reference import (RATE_GENERATORS, RefMemory, RefOptimizer, Runner, flatten, like_tree, memory_weights,
                       random_tree)

f32 = np.float32


def test_rate_before_update_lr_follows_the_schedule_value(rng):
    # Gradient in place: p - (float32(value) * g), with the rate read from stepsize.value every step.
    opt = optimizers.Gradient(stepsize=schedules.Constant(initial=0.5))
    p = rng.standard_normal(33).astype(f32)
    for value, ascent in ((None, False), (None, False), (0.1, False), (np.float64(0.7), False), (0.7, True)):
        if value is not None:
            opt.stepsize.value = value  # the same schedule object, a new value: the cache must see it
        opt.ascent = ascent
        rate = f32(opt.stepsize.value) * (f32(-1) if ascent else f32(1))
        g = rng.standard_normal(33).astype(f32)
        want = p - (rate * g)
        opt.update(p, g)
        assert np.array_equal(p, want)
    opt.stepsize = 0.3  # a new schedule
    g = rng.standard_normal(33).astype(f32)
    want = p - ((-f32(0.3)) * g)
    opt.update(p, g)
    assert np.array_equal(p, want)
    assert opt.lr is None


CHANGES = ("keep_delta", "ascent", "update_lr", "path", "new_memory", "mean_weight", "mean_square_weight", "reset")


# Weights an optimizer keeps (Gradient has no memory; Momentum has no mean square, RMSProp no mean).
_HAS = {"gradient": (), "momentum": ("new_memory", "mean_weight"), "rmsprop": ("new_memory", "mean_square_weight"),
        "adam": ("new_memory", "mean_weight", "mean_square_weight")}


@pytest.mark.parametrize("kind,change", [(k, c) for k in _HAS for c in CHANGES
                                         if c not in ("new_memory", "mean_weight", "mean_square_weight")
                                         or c in _HAS[k]])
def test_a_change_between_steady_steps_takes_effect(kind, change, rng):
    cls = {"gradient": optimizers.Gradient, "momentum": optimizers.Momentum,
           "rmsprop": optimizers.RMSProp, "adam": optimizers.ADAM}[kind]
    params = random_tree("dict", rng, "mixed")
    opt = cls(stepsize=schedules.ExponentialDecay(initial=0.05, coefficient=0.8))
    ref = RefOptimizer(kind, RATE_GENERATORS["ExponentialDecay"](initial=0.05, coefficient=0.8),
                       unstepped_value=0.05)
    runner = Runner(opt, ref, "inplace", params)
    for _ in range(3):  # the third step is a steady one
        runner.step(like_tree(params, rng))
    assert opt.step_count == 3
    keep_delta = False
    if change == "keep_delta":
        opt.keep_delta = keep_delta = True
    elif change == "ascent":
        opt.ascent = ref.ascent = True
    elif change == "update_lr":
        runner.update_lr()
        runner.update_lr()
    elif change == "path":  # the same optimizer now steps a paysage-like model
        runner = Runner(opt, ref, "paysage", runner.params)
    elif change == "new_memory":
        opt.memory = optimizers.GradientMemory(*memory_weights(kind))
        ref.memory = RefMemory(*memory_weights(kind))
    elif change in ("mean_weight", "mean_square_weight"):
        setattr(opt.memory, change, 0.5)
        setattr(ref.memory, "w" if change == "mean_weight" else "w2", f32(0.5))
    elif change == "reset":
        opt.reset()
        ref.memory.mean = ref.memory.mean_square = None
    runner.keep_delta = keep_delta
    for _ in range(3):
        runner.step(like_tree(params, rng))


def test_update_is_the_named_rule_on_a_native_state(rng):
    """ADAM's steady in-place update equals Rule.ADAM stepped on a separate State
    holding copies of the same plan, moments and weights."""
    opt = optimizers.ADAM(stepsize=0.01)
    params = random_tree("list", rng, "mixed")
    for _ in range(2):
        opt.update(params, like_tree(params, rng))
    mem = opt.memory
    grad = like_tree(params, rng)
    twin = mem._plan.unflatten([np.array(a, copy=True) for a in mem._plan.flatten(params)])
    state = _core.State()
    state.plan = mem._plan
    state.mean = tuple(np.array(a, copy=True) for a in mem._m)
    state.mean_square = tuple(np.array(a, copy=True) for a in mem._v)
    state.w, state.w2 = float(mem.mean_weight), float(mem.mean_square_weight)
    opt.update(params, grad)
    lr = float(f32(0.01))  # the rate of an update before any update_lr()
    assert state.step(None, _core.Rule.ADAM, _core.Output.IN_PLACE, grad, twin, lr, False) is None
    for a, b in zip(mem._plan.flatten(twin), mem._plan.flatten(params)):
        assert np.array_equal(a, b)
    for ours, theirs in ((state.mean_tree, mem.mean_gradient), (state.mean_square_tree, mem.mean_square_gradient)):
        for a, b in zip(mem._plan.flatten(ours), mem._plan.flatten(theirs)):  # leaves only: arena padding is never written
            assert np.array_equal(a, b)


def test_state_refuses_what_is_not_a_plan():
    with pytest.raises(TypeError, match="plan must be a fusedopt._core.Plan"):
        _core.State().plan = object()


def test_exact_reciprocal_is_stable_across_many_constants():
    # Several constants, each asked again in rotation (answers then come from the lock-free
    # table): every answer is the first one, and that is 1/c exactly when the check passes.
    constants = [float(f32(1) - f32(w)) for w in (0.9, 0.99, 0.999, 0.5, 0.7, 0.95, 0.3)] + [2.0 ** -30]
    first = [_core._exact_reciprocal(c) for c in constants]
    for _ in range(2):
        assert [_core._exact_reciprocal(c) for c in constants] == first
    for c, r in zip(constants, first):
        if _core._exact_division_active() and 2.0 ** -24 <= c <= 2.0 ** 24:
            assert r == float(f32(1) / f32(c)) and _core._check_divisor(c, r)
        else:
            assert r == 0.0


def test_state_step_takes_a_rule_and_output_as_their_int_values(rng):
    """update() passes int(Rule.X) and int(Output.Y) (no enum conversion per step): the same
    bits as the enums themselves; an int no rule or output has is refused, changing nothing."""
    grad = [rng.standard_normal(37).astype(np.float32)]
    by_enum, by_int = [np.zeros(37, np.float32)], [np.zeros(37, np.float32)]
    states = [_core.State(), _core.State()]
    for s in states:
        s.w, s.w2 = float(f32(0.9)), float(f32(0.999))
    for _ in range(3):
        states[0].step(None, _core.Rule.ADAM, _core.Output.IN_PLACE, grad, by_enum, 0.01, False)
        states[1].step(None, int(_core.Rule.ADAM), int(_core.Output.IN_PLACE), grad, by_int, 0.01, False)
    assert np.array_equal(by_enum[0], by_int[0])
    before = by_int[0].copy()
    for rule, output in ((len(_core.Rule.__members__), 2), (-1, 2), (3, 4)):
        with pytest.raises(ValueError, match="has the value"):
            states[1].step(None, rule, output, grad, by_int, 0.01, False)
    assert np.array_equal(by_int[0], before)


def test_native_update_reads_the_settings_python_would(rng):
    """Optimizer.update's native call reads lr, ascent, check_finite and keep_delta from the
    optimizer; a setting shadowed by a subclass's class attribute is read as Python reads it."""
    class Ascending(optimizers.Gradient):
        pass

    opt = Ascending(0.5)
    del opt.__dict__["ascent"]  # now the class's attribute
    Ascending.ascent = True
    p, g = rng.standard_normal(7).astype(f32), rng.standard_normal(7).astype(f32)
    want = p - ((-f32(0.5)) * g)
    opt.update(p, g)
    assert np.array_equal(p, want) and opt.step_count == 1


def test_bound_update_takes_five_arguments():
    opt = optimizers.ADAM(0.1)
    with pytest.raises(TypeError, match="takes exactly 5 arguments"):
        opt.memory._update(opt, np.zeros(3, f32), np.zeros(3, f32))
