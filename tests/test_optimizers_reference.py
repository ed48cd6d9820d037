"""The four optimizers against the NumPy reference of docs/semantics.md: bit for bit in the
leaf's dtype, and within a tolerance of a float64 evaluation of the formulas."""
import inspect

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusedopt import optimizers, schedules
from paysage_cases import CLASSES, KINDS
from reference import (RATE_GENERATORS, SCHEDULE_ARGS, TREE_KINDS, MockModel, RefOptimizer, Runner, as_float64,
                       assert_leaves_close, assert_leaves_equal, flatten, like_tree, random_tree,
                       rms_of_deltas, tree_copy, unflatten)

PATHS = ("paysage", "inplace")


def make_pair(kind, schedule="ExponentialDecay", ascent=False, options=None, **weights):
    """A fusedopt optimizer and its reference twin with the same schedule and weights."""
    args = SCHEDULE_ARGS[schedule]
    opt = CLASSES[kind](stepsize=getattr(schedules, schedule)(**args), ascent=ascent, **weights, **(options or {}))
    ref = RefOptimizer(kind, RATE_GENERATORS[schedule](**args), unstepped_value=args["initial"],
                       ascent=ascent, **weights)
    return opt, ref


def lr_due(step):
    """update_lr before most steps (not before the first, and some epochs share a rate)."""
    return step > 0 and step % 4 != 3


def run(runner, grad0, rng, steps):
    for i in range(steps):
        if lr_due(i):
            runner.update_lr()
        # The scale varies so that the moments see changing, non-zero gradients.
        grad = like_tree(grad0, rng, scale=0.3 + 0.2 * (i % 5))
        runner.step(grad)
    return runner


@pytest.mark.parametrize("dtype", ["float32", "float64", "mixed"])
@pytest.mark.parametrize("tree_kind", TREE_KINDS)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", KINDS)
def test_sequence_is_bit_identical_to_reference(kind, path, tree_kind, dtype, rng):
    params = random_tree(tree_kind, rng, dtype)
    opt, ref = make_pair(kind)
    run(Runner(opt, ref, path, params), params, rng, steps=22)
    assert opt.step_count == 22


@pytest.mark.parametrize("dtype", ["float32", "float64", "mixed"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", KINDS)
def test_ascent_is_bit_identical_and_mirrors_descent(kind, path, dtype, rng):
    params = random_tree("paysage", rng, dtype)
    up = Runner(*make_pair(kind, "Linear", ascent=True), path, params)
    down = Runner(*make_pair(kind, "Linear", ascent=False), path, params)
    for i in range(20):
        if lr_due(i):
            up.update_lr()
            down.update_lr()
        grad = like_tree(params, rng)
        up.step(grad)
        down.step(grad)
        # Negating lr is exact, so the ascent delta is exactly minus the descent delta.
        assert_leaves_equal(unflatten(params, [-d for d in up.ref_deltas]), down.ref_deltas)


@pytest.mark.parametrize("tree_kind", ["paysage", "sizes"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", KINDS)
def test_float32_sequence_is_close_to_float64_formulas(kind, path, tree_kind, rng):
    params = random_tree(tree_kind, rng, "float32")
    opt, ref = make_pair(kind, "PowerLawDecay")
    runner = Runner(opt, ref, path, params)
    exact = make_pair(kind, "PowerLawDecay")[1]  # fed float64 copies: the formulas in float64
    exact_params = as_float64(flatten(params))
    for i in range(25):
        if lr_due(i):
            runner.update_lr()
            exact.update_lr()
        grad = like_tree(params, rng, scale=0.5 + 0.1 * i)
        runner.step(grad)
        exact_deltas = exact.step(as_float64(flatten(grad)))
        exact_params = [p - d for p, d in zip(exact_params, exact_deltas)]
        assert_leaves_close(runner.ref_deltas, exact_deltas, 1e-4, "delta")
    assert_leaves_close(runner.params, exact_params, 1e-4, "param")
    if kind != "gradient":
        mem = opt.memory
        if exact.memory.mean is not None:
            assert_leaves_close(mem.mean_gradient, exact.memory.mean, 1e-4, "mean")
        if exact.memory.mean_square is not None:
            assert_leaves_close(mem.mean_square_gradient, exact.memory.mean_square, 1e-4, "mean square")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", KINDS)
def test_million_element_leaf_few_steps(kind, path, rng):
    # 1000003 = odd tail for every SIMD width, and above the OpenMP serial threshold.
    params = [rng.standard_normal(1000003).astype(np.float32), rng.standard_normal(5).astype(np.float64)]
    runner = Runner(*make_pair(kind), path, params)
    for i in range(3):
        runner.update_lr()
        runner.step([rng.standard_normal(1000003).astype(np.float32), rng.standard_normal(5)])


def test_million_element_float64_adam_in_place(rng):
    params = rng.standard_normal(1000003)
    runner = Runner(*make_pair("adam"), "inplace", params)
    for i in range(3):
        runner.update_lr()
        runner.step(rng.standard_normal(1000003))


@pytest.mark.parametrize("schedule", list(SCHEDULE_ARGS))
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["gradient", "adam"])
def test_every_schedule_with_copy_mid_sequence(kind, path, schedule, rng):
    params = random_tree("dict", rng, "float32")
    opt, ref = make_pair(kind, schedule)
    runner = Runner(opt, ref, path, params)
    for i in range(24):
        if i == 10:
            # A copy keeps the current value (and Step's counter): the sequence goes on unchanged.
            opt.stepsize = opt.stepsize.copy()
        runner.update_lr()
        runner.step(like_tree(params, rng))


@pytest.mark.parametrize("path", PATHS)
def test_stepsize_reassigned_between_epochs(path, rng):
    params = random_tree("list", rng, "float32")
    opt, ref = make_pair("momentum", "Step")
    runner = Runner(opt, ref, path, params)
    for i in range(20):
        if i == 8:
            opt.stepsize = schedules.ExponentialDecay(initial=0.2, coefficient=0.5)
            ref.rates = RATE_GENERATORS["ExponentialDecay"](initial=0.2, coefficient=0.5)
        runner.update_lr()
        runner.step(like_tree(params, rng))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", KINDS)
def test_update_before_update_lr_uses_value_without_advancing(kind, path, rng):
    params = random_tree("paysage", rng, "float32")
    opt = CLASSES[kind](stepsize=schedules.ExponentialDecay(initial=0.5, coefficient=0.9))
    ref = RefOptimizer(kind, RATE_GENERATORS["ExponentialDecay"](initial=0.5, coefficient=0.9), unstepped_value=0.5)
    runner = Runner(opt, ref, path, params)
    runner.step(like_tree(params, rng))
    runner.step(like_tree(params, rng))
    assert opt.lr is None
    assert opt.stepsize.value == 0.5  # not advanced by the updates
    runner.update_lr()
    assert opt.lr == np.float32(0.5)
    runner.step(like_tree(params, rng))
    runner.update_lr()
    assert opt.lr == np.float32(0.5 * 0.9)
    runner.step(like_tree(params, rng))


@pytest.mark.parametrize("path", PATHS)
def test_float_stepsize_becomes_constant(path, rng):
    opt = optimizers.Gradient(stepsize=0.01)
    assert isinstance(opt.stepsize, schedules.Constant)
    assert next(opt.stepsize) == np.float32(0.01)
    opt.stepsize = 0.02
    assert isinstance(opt.stepsize, schedules.Constant)
    params = random_tree("array", rng, "float32")
    ref = RefOptimizer("gradient", RATE_GENERATORS["Constant"](initial=0.02), unstepped_value=0.02)
    runner = Runner(opt, ref, path, params)
    runner.step(like_tree(params, rng))  # before update_lr: float32(0.02)
    runner.update_lr()
    assert opt.lr == np.float32(0.02)
    runner.step(like_tree(params, rng))


@pytest.mark.parametrize("dtype", ["float32", "mixed"])
@pytest.mark.parametrize("kind", KINDS)
def test_keep_delta_on_in_place_path(kind, dtype, rng):
    params = random_tree("paysage", rng, dtype)
    opt, ref = make_pair(kind, options=dict(keep_delta=True))
    run(Runner(opt, ref, "inplace", params, keep_delta=True), params, rng, steps=20)


def test_in_place_delta_is_none_by_default(rng):
    params = random_tree("dict", rng, "float32")
    opt = optimizers.ADAM(stepsize=0.1)
    opt.update(params, like_tree(params, rng))
    assert opt.delta is None


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["momentum", "rmsprop", "adam"])
def test_reset_restarts_moments_and_allows_a_new_structure(kind, path, rng):
    first = random_tree("paysage", rng, "float32")
    opt, ref = make_pair(kind, "Constant")
    runner = Runner(opt, ref, path, first)
    run(runner, first, rng, steps=6)
    other = random_tree("sizes", rng, "mixed")
    with pytest.raises(ValueError):  # moments exist: a different structure is refused
        opt.update(tree_target(path, other), like_tree(other, rng))
    opt.reset()
    ref.memory.reset()
    assert opt.memory.mean_gradient is None and opt.memory.mean_square_gradient is None
    # Same optimizer (lr and schedule carry on), fresh moments, new tree.
    second = Runner(opt, ref, path, other)
    for i in range(6):
        second.update_lr()
        second.step(like_tree(other, rng))


def tree_target(path, params):
    return MockModel(params) if path == "paysage" else tree_copy(params)


@pytest.mark.parametrize("path", PATHS)
def test_gradient_accepts_a_new_structure_any_time(path, rng):
    opt, ref = make_pair("gradient")
    for tree_kind in ("paysage", "dict", "array", "paysage"):
        params = random_tree(tree_kind, rng, "float32")
        runner = Runner(opt, ref, path, params)
        runner.update_lr()
        runner.step(like_tree(params, rng))
    opt.reset()  # does nothing, but exists


@pytest.mark.parametrize("tree_kind", TREE_KINDS)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", KINDS)
def test_check_convergence_around_the_reference_value(kind, path, tree_kind, rng):
    params = random_tree(tree_kind, rng, "float32")
    opt, ref = make_pair(kind)
    opt.tolerance = 1e30
    assert opt.check_convergence() is False  # no update yet, whatever the tolerance
    runner = Runner(opt, ref, path, params)
    # paysage Gradient: n = len(layers) + len(weights) = 3 (it has 4 leaves); others: leaf count.
    n = 3 if tree_kind == "paysage" else len(flatten(params))
    # The sum of delta**2 may be accumulated in float32 (paysage itself takes a float32 mean):
    # with 16 running sums, each adds at most size/16 + 1 terms, each adding <= 2**-24 relative error.
    margin = 2 * (max(np.size(a) for a in flatten(params)) / 16 + 2) * 2.0 ** -24
    for i in range(21):
        if lr_due(i):
            runner.update_lr()
        runner.step(like_tree(params, rng, scale=0.2 + 0.1 * i))
        value = rms_of_deltas(runner.ref_deltas, n)
        assert value > 0
        opt.tolerance = value * (1 + margin)
        assert opt.check_convergence() is True
        opt.tolerance = value * (1 - margin)
        assert opt.check_convergence() is False


def test_check_convergence_with_zero_gradient_and_zero_tolerance():
    opt = optimizers.Gradient(stepsize=0.1, tolerance=0.0)
    params = [np.ones(5, np.float32), np.ones((), np.float32)]
    opt.update(params, [np.zeros(5, np.float32), np.zeros((), np.float32)])
    assert opt.check_convergence() is True  # sqrt(0) <= 0


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind,weights", [
    ("momentum", dict(momentum=0.0)),
    ("rmsprop", dict(mean_square_weight=0.0)),
])
def test_zero_weight_steps_plain_gradient(kind, weights, path, rng):
    # Momentum(momentum=0) and RMSProp(mean_square_weight=0) step exactly lr * g.
    params = random_tree("paysage", rng, "mixed")
    opt, ref = make_pair(kind, **weights)
    plain = RefOptimizer("gradient", RATE_GENERATORS["ExponentialDecay"](**SCHEDULE_ARGS["ExponentialDecay"]),
                         unstepped_value=SCHEDULE_ARGS["ExponentialDecay"]["initial"])
    runner = Runner(opt, ref, path, params)
    for i in range(20):
        if lr_due(i):
            runner.update_lr()
            plain.update_lr()
        grad = like_tree(params, rng)
        runner.step(grad)
        assert_leaves_equal(unflatten(params, runner.ref_deltas), plain.step(flatten(grad)))
        assert opt.memory.mean_gradient is None and opt.memory.mean_square_gradient is None


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("weights,has_mean,has_square", [
    (dict(mean_weight=0.0), False, True),          # lr * g / sqrt(EPS + v / (1 - w2))
    (dict(mean_square_weight=0.0), True, False),   # lr * m
    (dict(mean_weight=0.0, mean_square_weight=0.0), False, False),  # lr * g
])
def test_adam_degenerate_weights(weights, has_mean, has_square, path, rng):
    params = random_tree("dict", rng, "mixed")
    opt, ref = make_pair("adam", **weights)
    runner = Runner(opt, ref, path, params)
    run(runner, params, rng, steps=20)
    assert (opt.memory.mean_gradient is not None) == has_mean
    assert (opt.memory.mean_square_gradient is not None) == has_square


def test_aliases_name_the_same_classes():
    assert optimizers.gradient is optimizers.Gradient
    assert optimizers.momentum is optimizers.Momentum
    assert optimizers.rmsprop is optimizers.RMSProp
    assert optimizers.adam is optimizers.ADAM
    for cls in CLASSES.values():
        assert issubclass(cls, optimizers.Optimizer)


@pytest.mark.parametrize("alias,kind", [("gradient", "gradient"), ("momentum", "momentum"),
                                        ("rmsprop", "rmsprop"), ("adam", "adam")])
def test_aliases_step_like_the_reference(alias, kind, rng):
    params = random_tree("tuple", rng, "float32")
    opt = getattr(optimizers, alias)(schedules.Constant(initial=0.01))
    ref = RefOptimizer(kind, RATE_GENERATORS["Constant"](initial=0.01), unstepped_value=0.01)
    run(Runner(opt, ref, "paysage", params), params, rng, steps=20)


def _defaults(fn):
    return [(p.name, p.default) for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD,)]


def test_signatures_and_defaults_match_paysage():
    # Positional parameters in paysage's order (stepsize's default is a Constant(0.001)).
    assert _defaults(optimizers.GradientMemory)[0:2] == [("mean_weight", 0.9), ("mean_square_weight", 0.0)]
    expected = {
        optimizers.Optimizer: ["stepsize", ("tolerance", 1e-7), ("ascent", False)],
        optimizers.Gradient: ["stepsize", ("tolerance", 1e-7), ("ascent", False)],
        optimizers.Momentum: ["stepsize", ("momentum", 0.9), ("tolerance", 1e-7), ("ascent", False)],
        optimizers.RMSProp: ["stepsize", ("mean_square_weight", 0.9), ("tolerance", 1e-7), ("ascent", False)],
        optimizers.ADAM: ["stepsize", ("mean_weight", 0.9), ("mean_square_weight", 0.999),
                          ("tolerance", 1e-7), ("ascent", False)],
    }
    for cls, params in expected.items():
        got = _defaults(cls)
        assert [name for name, _ in got] == [p if isinstance(p, str) else p[0] for p in params], cls
        for (name, default), want in zip(got, params):
            if isinstance(want, tuple):
                assert default == want[1], (cls, name)
            else:
                assert isinstance(default, schedules.Constant) and default.initial == 0.001
    opt = optimizers.ADAM()
    assert opt.tolerance == 1e-7 and opt.ascent is False
    assert opt.memory.mean_weight == np.float32(0.9)
    assert opt.memory.mean_square_weight == np.float32(0.999)
    opt.update_lr()
    assert opt.lr == np.float32(0.001)


def test_default_schedules_are_not_shared():
    a, b = optimizers.Gradient(), optimizers.Gradient()
    a.stepsize.set_value(0.5)
    b.update_lr()
    assert b.lr == np.float32(0.001)


# Sizes drawn around the SIMD widths (16 float32 / 8 float64 per 512-bit vector) and a few larger.
sizes = st.one_of(st.integers(0, 70), st.sampled_from([127, 128, 129, 2047, 2048, 2049, 4111]))
weight = st.floats(0.0, 0.999, allow_nan=False)


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(KINDS), path=st.sampled_from(PATHS),
       shapes=st.lists(sizes, min_size=1, max_size=4),
       dtypes=st.lists(st.sampled_from(["float32", "float64"]), min_size=4, max_size=4),
       w=weight, w2=weight, lr=st.floats(1e-4, 2.0), ascent=st.booleans(),
       steps=st.integers(1, 6), seed=st.integers(0, 2 ** 32 - 1))
def test_random_sizes_weights_and_rates(kind, path, shapes, dtypes, w, w2, lr, ascent, steps, seed):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(dtypes[i]) for i, n in enumerate(shapes)]
    weights = {"gradient": {}, "momentum": dict(momentum=w), "rmsprop": dict(mean_square_weight=w2),
               "adam": dict(mean_weight=w, mean_square_weight=w2)}[kind]
    opt = CLASSES[kind](stepsize=lr, ascent=ascent, **weights)
    ref = RefOptimizer(kind, RATE_GENERATORS["Constant"](initial=lr), unstepped_value=lr, ascent=ascent, **weights)
    runner = Runner(opt, ref, path, params)
    for i in range(steps):
        if i % 2:
            runner.update_lr()
        runner.step(like_tree(params, rng))

