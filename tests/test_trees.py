"""Trees (docs/guide.md, "Trees"): whatever fusedopt hands back has the input's structure and
container types, leaves keep their shapes and dtypes, and a tree's structure is
fixed while moments exist."""
import collections
import math

import numpy as np
import pytest

from fusedopt import optimizers
from reference import (Gradient, MockModel, ParamsBernoulli, ParamsGaussian, ParamsWeights, assert_leaves_equal,
                       flatten, like_tree, random_tree, structure, tree_bytes, tree_copy)

Pair = collections.namedtuple("Pair", ["first", "second"])

LR = 0.0625  # a power of two: lr * g is exact, so delta can be checked by value alone


def nested_tree(rng):
    """Every container kind nested in every other, with 0-d, empty and mixed-dtype leaves."""
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    f64 = lambda *shape: np.asarray(rng.standard_normal(shape))  # noqa: E731
    return {
        "z_last": [Pair(f32(3), (f64(2, 2), [f32()])), {"inner": f64(0)}],
        "a_first": (Pair(first=f32(4, 0), second=f64()), ),
        "m": Gradient(layers=[[ParamsBernoulli(f32(5))]], weights=[[ParamsWeights(f64(5, 3))]]),
    }


def test_delta_and_moments_keep_every_container_type(rng):
    grad = nested_tree(rng)
    opt = optimizers.ADAM(stepsize=0.01)
    model = MockModel(grad)
    opt.update(model, grad)
    for tree in (opt.delta, model.received, opt.memory.mean_gradient, opt.memory.mean_square_gradient):
        assert structure(tree) == structure(grad)
    pair = opt.delta["z_last"][0]
    assert type(pair) is Pair and type(pair[1]) is tuple and type(pair[1][1]) is list
    assert type(opt.delta["m"]) is Gradient
    assert type(opt.delta["m"].layers[0][0]) is ParamsBernoulli
    assert type(opt.delta["m"].weights[0][0]) is ParamsWeights
    assert set(opt.delta) == set(grad)


@pytest.mark.parametrize("in_place", [False, True])
def test_leaves_are_matched_by_position_and_key(in_place, rng):
    # With a power-of-two rate, Gradient's delta is exactly LR * g: each delta leaf must
    # come from the gradient leaf at the same path (dict keys in any insertion order).
    grad = nested_tree(rng)
    expected = [np.asarray(np.asarray(g).dtype.type(LR) * g) for g in flatten(grad)]
    opt = optimizers.Gradient(stepsize=LR, keep_delta=True)
    if in_place:
        params = tree_copy(grad)
        opt.update(params, grad)
        assert_leaves_equal(params, [g - d for g, d in zip(flatten(grad), expected)])
    else:
        opt.update(MockModel(grad), grad)
    assert_leaves_equal(opt.delta, expected)
    assert opt.delta["z_last"][0].first.shape == (3,)
    assert opt.delta["a_first"][0].first.shape == (4, 0)
    assert opt.delta["a_first"][0].second.shape == ()
    assert opt.delta["a_first"][0].second.dtype == np.float64


def test_single_array_tree(rng):
    grad = rng.standard_normal((4, 5)).astype(np.float32)
    opt = optimizers.Momentum(stepsize=LR)
    model = MockModel(grad)
    opt.update(model, grad)
    assert isinstance(opt.delta, np.ndarray) and opt.delta.shape == (4, 5) and opt.delta.dtype == np.float32
    assert isinstance(opt.memory.mean_gradient, np.ndarray) and opt.memory.mean_gradient.shape == (4, 5)
    params = grad.copy()
    optimizers.Gradient(stepsize=LR).update(params, grad)
    assert np.array_equal(params, grad - np.float32(LR) * grad)


@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (1,), (1, 1, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_degenerate_shapes_round_trip(shape, dtype, rng):
    grad = {"x": np.asarray(rng.standard_normal(shape)).astype(dtype), "y": np.ones(3, dtype)}
    opt = optimizers.RMSProp(stepsize=LR)
    opt.update(MockModel(grad), grad)
    for tree in (opt.delta, opt.memory.mean_square_gradient):
        assert structure(tree) == structure(grad)
    params = tree_copy(grad)
    optimizers.RMSProp(stepsize=LR).update(params, grad)
    assert params["x"].shape == shape


def test_delta_trees_are_fresh_each_step(rng):
    # The model may keep the delta it was given: a later step must not write into it.
    grad = random_tree("paysage", rng, "mixed")
    opt = optimizers.ADAM(stepsize=0.01)
    model = MockModel(grad)
    opt.update(model, grad)
    first, kept = opt.delta, tree_bytes(opt.delta)
    opt.update(model, like_tree(grad, rng))
    assert tree_bytes(first) == kept
    for a, b in zip(flatten(first), flatten(opt.delta)):
        assert not np.shares_memory(a, b)


def test_mean_gradient_tree_is_not_the_callers(rng):
    grad = random_tree("dict", rng, "float32")
    opt = optimizers.Momentum(stepsize=0.1)
    opt.update(MockModel(grad), grad)
    mean = tree_bytes(opt.memory.mean_gradient)
    for leaf in flatten(grad):
        leaf[...] = 7.0  # the caller reuses its buffers
    assert tree_bytes(opt.memory.mean_gradient) == mean


def changed_trees(rng):
    """Trees that differ from paysage_grad() in one respect each."""
    base = paysage_grad(rng)
    layers, weights = base.layers, base.weights
    return {
        "shape": Gradient(layers, [[ParamsWeights(np.zeros((7, 17), np.float32))]]),
        "dtype": Gradient(layers, [[ParamsWeights(np.zeros((17, 7), np.float64))]]),
        "leaf count": Gradient(layers + [[ParamsBernoulli(np.zeros(3, np.float32))]], weights),
        "container": Gradient(tuple(layers), weights),
        "namedtuple class": Gradient([[ParamsGaussian(layers[0][0].loc, layers[0][0].loc)]], weights),
    }


def paysage_grad(rng):
    return Gradient(layers=[[ParamsBernoulli(rng.standard_normal(17).astype(np.float32))]],
                    weights=[[ParamsWeights(rng.standard_normal((17, 7)).astype(np.float32))]])


@pytest.mark.parametrize("change", ["shape", "dtype", "leaf count", "container", "namedtuple class"])
@pytest.mark.parametrize("kind", [optimizers.Momentum, optimizers.RMSProp, optimizers.ADAM])
def test_structure_is_fixed_while_moments_exist(kind, change, rng):
    grad = paysage_grad(rng)
    opt = kind(stepsize=0.01)
    model = MockModel(grad)
    opt.update(model, grad)
    other = changed_trees(rng)[change]
    moments = [tree_bytes(t) for t in (opt.memory.mean_gradient, opt.memory.mean_square_gradient) if t is not None]
    with pytest.raises((TypeError, ValueError)):
        opt.update(MockModel(other), other)
    # Nothing was modified, and the original structure still steps.
    assert moments == [tree_bytes(t) for t in (opt.memory.mean_gradient, opt.memory.mean_square_gradient)
                       if t is not None]
    opt.update(model, like_tree(grad, rng))
    opt.reset()
    opt.update(MockModel(other), other)  # after reset any structure is accepted
    assert structure(opt.delta) == structure(other)


@pytest.mark.parametrize("change", ["shape", "dtype", "leaf count", "container", "namedtuple class"])
def test_gradient_takes_any_structure(change, rng):
    opt = optimizers.Gradient(stepsize=LR)
    grad = paysage_grad(rng)
    opt.update(MockModel(grad), grad)
    other = changed_trees(rng)[change]
    opt.update(MockModel(other), other)
    assert structure(opt.delta) == structure(other)


def test_convergence_count_uses_layers_and_weights_only_for_paysage_gradients(rng):
    # Same leaves, two trees: a paysage Gradient divides by len(layers) + len(weights) = 2,
    # a plain namedtuple by its 3 leaves. With delta**2 = 1 everywhere (g = 1, lr = 1):
    # paysage: sqrt((1 + 1 + 1) / 2) = 1.2247..., plain: sqrt(3 / 3) = 1.
    ones = lambda n: np.ones(n, np.float32)  # noqa: E731
    trees = {
        "paysage": (Gradient(layers=[[ParamsGaussian(ones(4), ones(5))]], weights=[[ParamsWeights(ones(6))]]),
                    math.sqrt(1.5)),
        "plain": (Pair(ones(4), (ones(5), ones(6))), 1.0),
    }
    for tree, value in trees.values():
        for tolerance, expected in ((value * (1 + 1e-6), True), (value * (1 - 1e-6), False)):
            opt = optimizers.Gradient(stepsize=1.0, tolerance=tolerance)
            opt.update(tree_copy(tree), tree)
            assert opt.check_convergence() is expected


def test_empty_leaves_count_but_contribute_zero():
    # Leaves: 4 ones and one empty -> n = 2, sum of means = 1: sqrt(1 / 2).
    tree = [np.ones(4, np.float32), np.zeros(0, np.float32)]
    for tolerance, expected in ((math.sqrt(0.5) * (1 + 1e-6), True), (math.sqrt(0.5) * (1 - 1e-6), False)):
        opt = optimizers.Gradient(stepsize=1.0, tolerance=tolerance)
        opt.update(tree_copy(tree), tree)
        assert opt.check_convergence() is expected


def test_non_float_leaves_are_refused(rng):
    for bad in ([np.ones(3, np.int64)], [np.ones(3, np.float16)], {"a": [1.0, 2.0]}):
        with pytest.raises((TypeError, ValueError)):
            optimizers.Gradient(stepsize=0.1).update(MockModel(bad), bad)


@pytest.mark.parametrize("tree", [
    [np.zeros(0, np.float32)],
    {"a": np.ones(3, np.float32), "b": np.zeros((2, 0))},  # every float64 leaf is empty
    (np.zeros((0, 4)), np.zeros(0, np.float32)),
], ids=["only-empty", "empty-float64-side", "all-empty-mixed"])
def test_trees_whose_leaves_of_a_dtype_are_all_empty(tree):
    # A dtype with no elements has a zero-size arena; delta trees must still be built.
    expected = [np.asarray(np.asarray(g).dtype.type(LR) * g) for g in flatten(tree)]
    opt = optimizers.Gradient(stepsize=LR)
    opt.update(MockModel(tree), tree)
    assert structure(opt.delta) == structure(tree)
    assert_leaves_equal(opt.delta, expected)
    keep = optimizers.ADAM(stepsize=LR, keep_delta=True)
    keep.update(tree_copy(tree), tree)
    assert structure(keep.delta) == structure(tree)
    mem = optimizers.GradientMemory(0.9, 0.9)
    mem.update(tree)
    assert structure(mem.normalize(tree)) == structure(tree)
