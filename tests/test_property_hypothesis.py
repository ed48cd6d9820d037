"""Property-based tests (hypothesis): random trees, shapes, dtypes, hyper-parameters and
step counts against the NumPy references; random malformed inputs always raise
TypeError/ValueError (FloatingPointError for check_finite) and change nothing."""
import io
import os
import pickle

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from fusedopt import optimizers, schedules

import reference as ref

# FUSEDOPT_HYPOTHESIS_EXAMPLES=2000 for a longer search than the quick default.
SETTINGS = settings(max_examples=int(os.environ.get("FUSEDOPT_HYPOTHESIS_EXAMPLES", 60)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


class Leaf:
    """Shape and dtype of a leaf to be made; arrays are drawn from a seeded generator
    (much faster than hypothesis' array strategies, and shrinking keeps working on specs)."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, dtype

    def __repr__(self):
        return f"Leaf({self.shape}, {self.dtype})"


leaf_specs = st.builds(Leaf, st.lists(st.integers(0, 6), max_size=3).map(tuple),
                       st.sampled_from(["float32", "float64"]))


def containers(children):
    return st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(st.text("abxy_", min_size=1, max_size=3), children, max_size=3),
        children.map(ref.ParamsBernoulli),
        st.tuples(children, children).map(lambda c: ref.ParamsGaussian(*c)),
    )


tree_specs = st.recursive(leaf_specs, containers, max_leaves=8)


def materialize(spec, rng, scale=1.0):
    if isinstance(spec, Leaf):
        return np.asarray(scale * rng.standard_normal(spec.shape)).astype(spec.dtype)
    if isinstance(spec, dict):
        return {k: materialize(v, rng, scale) for k, v in spec.items()}
    if isinstance(spec, tuple) and hasattr(spec, "_fields"):
        return type(spec)(*(materialize(v, rng, scale) for v in spec))
    return type(spec)(materialize(v, rng, scale) for v in spec)


def leaves_in_order(tree):
    """Leaves in fusedopt's order (dicts in insertion order, unlike reference.flatten)."""
    if isinstance(tree, dict):
        return [leaf for v in tree.values() for leaf in leaves_in_order(v)]
    if isinstance(tree, (list, tuple)):
        return [leaf for v in tree for leaf in leaves_in_order(v)]
    return [tree]


weights = st.one_of(st.just(0.0), st.floats(0.0, 0.999, allow_subnormal=False))
hyper = st.fixed_dictionaries({
    "kind": st.sampled_from(["gradient", "momentum", "rmsprop", "adam"]),
    "w": weights, "w2": weights, "ascent": st.booleans(),
    "lr": st.floats(1e-4, 0.5), "decay": st.floats(0.5, 1.0),
})


def build(h):
    sched = schedules.ExponentialDecay(h["lr"], h["decay"])
    kind = h["kind"]
    if kind == "gradient":
        return optimizers.Gradient(sched, ascent=h["ascent"]), {}
    if kind == "momentum":
        return optimizers.Momentum(sched, momentum=h["w"], ascent=h["ascent"]), {"momentum": h["w"]}
    if kind == "rmsprop":
        return (optimizers.RMSProp(sched, mean_square_weight=h["w2"], ascent=h["ascent"]),
                {"mean_square_weight": h["w2"]})
    return (optimizers.ADAM(sched, mean_weight=h["w"], mean_square_weight=h["w2"], ascent=h["ascent"]),
            {"mean_weight": h["w"], "mean_square_weight": h["w2"]})


@SETTINGS
@given(spec=tree_specs, h=hyper, steps=st.integers(1, 6), seed=st.integers(0, 2 ** 32 - 1))
def test_random_trees_match_the_references(spec, h, steps, seed):
    rng = np.random.default_rng(seed)
    params = materialize(spec, rng)
    grads = [materialize(spec, rng) for _ in range(steps)]
    opt, weights_ = build(h)
    rates = ref.exponential_rates(h["lr"], h["decay"])
    exact = ref.RefOptimizer(h["kind"], rates, ascent=h["ascent"], **weights_)
    wide = ref.RefOptimizer(h["kind"], ref.exponential_rates(h["lr"], h["decay"]), ascent=h["ascent"], **weights_)
    p = ref.tree_copy(params)
    want = [np.array(a) for a in leaves_in_order(params)]
    want64 = ref.as_float64(want)
    for g in grads:
        opt.update_lr()
        exact.update_lr()
        wide.update_lr()
        opt.update(p, g)
        flat = leaves_in_order(g)
        want = ref.apply(want, exact.step(flat))
        want64 = ref.apply(want64, wide.step(ref.as_float64(flat)))
    got = leaves_in_order(p)
    for a, b, c in zip(got, want, want64):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b)  # docs/semantics.md's order in the leaf's dtype: the same bits
        rtol = 1e-4 if a.dtype == np.float32 else 1e-12
        bound = rtol * (np.abs(c) + (np.max(np.abs(c)) if c.size else 0.0))
        assert np.all(np.abs(a - c) <= bound)  # the formulas themselves, in float64
    assert opt.step_count == steps


@SETTINGS
@given(spec=tree_specs, h=hyper, steps=st.integers(1, 6), split=st.integers(0, 6), seed=st.integers(0, 2 ** 32 - 1),
       how=st.sampled_from(["npz", "pickle"]))
def test_random_trees_resume_bit_identical(spec, h, steps, split, seed, how):
    """n steps straight == k steps, save, load into a new optimizer, n - k more steps."""
    split = min(split, steps)
    rng = np.random.default_rng(seed)
    params = materialize(spec, rng)
    grads = [materialize(spec, rng) for _ in range(steps)]
    straight, p = build(h)[0], ref.tree_copy(params)
    for g in grads:
        straight.update_lr()
        straight.update(p, g)
    first, q = build(h)[0], ref.tree_copy(params)
    for g in grads[:split]:
        first.update_lr()
        first.update(q, g)
    if how == "npz":
        buf = io.BytesIO()
        np.savez(buf, **first.state_dict())
        buf.seek(0)
        resumed = type(first)()
        with np.load(buf) as state:
            resumed.load_state_dict(state)
    else:
        resumed = pickle.loads(pickle.dumps(first))
    for g in grads[split:]:
        resumed.update_lr()
        resumed.update(q, g)
    assert ref.tree_bytes(q) == ref.tree_bytes(p)
    assert resumed.step_count == steps and repr(resumed.lr) == repr(straight.lr)


# -- malformed inputs -----------------------------------------------------------------------
def _retype(a, dtype):
    return np.asarray(a).astype(dtype)


MUTATIONS = {
    # grad mutations
    "grad_int": ("grad", lambda a, r: _retype(a, np.int32)),
    "grad_bool": ("grad", lambda a, r: np.asarray(a) > 0),
    "grad_float16": ("grad", lambda a, r: _retype(a, np.float16)),
    "grad_complex": ("grad", lambda a, r: _retype(a, np.complex128)),
    "grad_object": ("grad", lambda a, r: _retype(a, object)),
    "grad_other_float": ("grad", lambda a, r: _retype(a, np.float64 if a.dtype == np.float32 else np.float32)),
    "grad_extra_axis": ("grad", lambda a, r: np.asarray(a)[None]),
    "grad_longer": ("grad", lambda a, r: np.zeros(a.shape[:-1] + (a.shape[-1] + 1,) if a.ndim else (1,), a.dtype)),
    "grad_none": ("grad", lambda a, r: None),
    "grad_str": ("grad", lambda a, r: "leaf"),
    "grad_list": ("grad", lambda a, r: np.asarray(a).tolist() if a.ndim else [float(a)]),
    "grad_wrapped": ("grad", lambda a, r: [a]),
    "grad_nan": ("grad", "nan"),
    # params mutations
    "param_read_only": ("params", lambda a, r: _readonly(a)),
    "param_strided": ("params", lambda a, r: np.repeat(a, 2, axis=-1)[..., ::2] if a.ndim else a),
    "param_other_float": ("params", lambda a, r: _retype(a, np.float64 if a.dtype == np.float32 else np.float32)),
    "param_int": ("params", lambda a, r: _retype(a, np.int64)),
    "param_shape": ("params", lambda a, r: np.zeros(a.shape + (2,), a.dtype)),
    "param_swapped": ("params", lambda a, r: _retype(a, a.dtype.newbyteorder())),
    "param_tuple": ("params", lambda a, r: (a,)),
}


def _readonly(a):
    a = np.array(a)
    a.setflags(write=False)
    return a


def _mutate_leaf(tree, index, fn):
    leaves = leaves_in_order(tree)
    leaves[index] = fn(leaves[index], None)
    it = iter(leaves)

    def rebuild(node):
        if isinstance(node, dict):
            return {k: rebuild(v) for k, v in node.items()}
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            return type(node)(*(rebuild(v) for v in node))
        if isinstance(node, (list, tuple)):
            return type(node)(rebuild(v) for v in node)
        return next(it)
    return rebuild(tree)


def snapshot(opt, params):
    mem = opt._memory
    return (ref.tree_bytes(params),
            [None if t is None else ref.tree_bytes(t) for t in (mem.mean_gradient, mem.mean_square_gradient)],
            repr(opt.lr), opt.step_count, repr(opt.stepsize.get_config()), opt.check_convergence())


@SETTINGS
@given(spec=tree_specs, h=hyper, warm=st.integers(0, 3), seed=st.integers(0, 2 ** 32 - 1),
       mutation=st.sampled_from(sorted(MUTATIONS)), where=st.integers(0, 10 ** 6))
def test_malformed_inputs_raise_and_change_nothing(spec, h, warm, seed, mutation, where):
    rng = np.random.default_rng(seed)
    params = materialize(spec, rng)
    leaves = leaves_in_order(params)
    target, fn = MUTATIONS[mutation]
    if not leaves or (fn == "nan" and not any(a.size for a in leaves)):
        return  # nothing to spoil
    opt, _ = build(h)
    opt.check_finite = fn == "nan"
    p = ref.tree_copy(params)
    for _ in range(warm):
        opt.update_lr()
        opt.update(p, materialize(spec, rng))
    grad = materialize(spec, rng)
    if fn == "nan":
        index = [i for i, a in enumerate(leaves) if a.size][where % sum(1 for a in leaves if a.size)]
        bad = _mutate_leaf(grad, index, lambda a, r: _with_nan(a, where))
        bad_params, error = p, FloatingPointError
    elif target == "grad":
        index = where % len(leaves)
        bad, bad_params, error = _mutate_leaf(grad, index, fn), p, (TypeError, ValueError)
    else:
        index = where % len(leaves)
        bad, bad_params, error = grad, _mutate_leaf(p, index, fn), (TypeError, ValueError)
        if mutation == "param_strided" and leaves_in_order(bad_params)[index].flags.c_contiguous:
            return  # a last axis of length 0 or 1: the view is contiguous after all
    before = snapshot(opt, p)
    bad_before = ref.tree_bytes(bad_params)
    try:
        opt.update(bad_params, bad)
    except error:
        pass
    else:
        # Only a memoryless optimizer may accept a gradient whose structure changed together
        # with its params; never anything else.
        raise AssertionError(f"{mutation} at leaf {index} was accepted")
    assert snapshot(opt, p) == before
    assert ref.tree_bytes(bad_params) == bad_before


def _with_nan(a, where):
    a = np.array(a)
    a.flat[where % a.size] = [np.nan, np.inf, -np.inf][where % 3]
    return a
