"""Bad input (docs/guide.md, README): every bad input of a step raises TypeError/ValueError naming the
leaf's path and what was expected, and changes nothing (bytes compared before and
after); strided gradients are accepted; check_finite; constructor arguments."""
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fusedopt import optimizers, schedules

import reference as ref
from reference import Gradient, ParamsBernoulli, ParamsGaussian, ParamsWeights
from paysage_cases import CLASSES, KINDS



def make_optimizer(kind, **options):
    sched = schedules.ExponentialDecay(initial=0.05, coefficient=0.9)
    cls = CLASSES[kind]
    return cls(sched, **options)


def make_tree(rng):
    """Paths: layers[0][0].loc (f32), layers[1][0].loc (f64), layers[1][0].log_var (f32),
    weights[0][0].matrix (f32, shape (5, 3))."""
    return Gradient(
        layers=[[ParamsBernoulli(rng.standard_normal(5).astype(np.float32))],
                [ParamsGaussian(rng.standard_normal(3), rng.standard_normal(3).astype(np.float32))]],
        weights=[[ParamsWeights(rng.standard_normal((5, 3)).astype(np.float32))]])


def replace(tree, keys, fn):
    """A copy of `tree` (containers rebuilt, leaves shared) with fn(node) at keys."""
    if not keys:
        return fn(tree)
    key, rest = keys[0], keys[1:]
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return tree._replace(**{key: replace(getattr(tree, key), rest, fn)})
    items = list(tree)
    items[key] = replace(items[key], rest, fn)
    return type(tree)(items)


MATRIX = ("weights", 0, 0, "matrix")
F64_LOC = ("layers", 1, 0, "loc")
MATRIX_PATH = r"weights\[0\]\[0\]\.matrix"


def snapshot(opt, params):
    """Everything a failed step must leave untouched, as comparable values."""
    mem = opt._memory
    return (ref.tree_bytes(params),
            None if mem.mean_gradient is None else ref.tree_bytes(mem.mean_gradient),
            None if mem.mean_square_gradient is None else ref.tree_bytes(mem.mean_square_gradient),
            repr(opt.lr), opt.step_count, repr(opt.stepsize.get_config()), opt.check_convergence(),
            None if opt.delta is None else ref.tree_bytes(opt.delta))


def trained(kind, rng, steps, **options):
    """An optimizer, its params and a good gradient after `steps` steps, plus a twin in the same state."""
    params = make_tree(rng)
    grads = [ref.like_tree(params, rng) for _ in range(steps + 1)]
    pair = []
    for _ in range(2):
        opt, p = make_optimizer(kind, **options), ref.tree_copy(params)
        for g in grads[:steps]:
            opt.update_lr()
            opt.update(p, g)
        pair.append((opt, p))
    return pair, grads[steps]


def assert_still_in_step(pair, grad):
    """The optimizer that saw the bad input and its twin take the same next step."""
    (opt, params), (twin, twin_params) = pair
    for o, p in ((opt, params), (twin, twin_params)):
        o.update_lr()
        o.update(p, grad)
    assert ref.tree_bytes(params) == ref.tree_bytes(twin_params)
    if opt._memory.mean_gradient is not None:
        assert ref.tree_bytes(opt._memory.mean_gradient) == ref.tree_bytes(twin._memory.mean_gradient)


def readonly(a):
    a = a.copy()
    a.setflags(write=False)
    return a


# (id, what is bad: "grad" or "params", where, transform, error type, regexes the message must match)
BAD_GRADS = [
    ("shape_transposed", MATRIX, lambda a: a.T.copy(), ValueError, [MATRIX_PATH, r"\(5, 3\)", r"\(3, 5\)"]),
    ("shape_flat", MATRIX, lambda a: a.reshape(-1).copy(), ValueError, [MATRIX_PATH, r"\(15,\)", r"\(5, 3\)"]),
    ("shape_0d", F64_LOC, lambda a: np.array(1.0), ValueError, [r"layers\[1\]\[0\]\.loc", r"\(3,\)", r"\(\)"]),
    ("int32", MATRIX, lambda a: a.astype(np.int32), TypeError, [MATRIX_PATH, "float32", "int32"]),
    ("int64", F64_LOC, lambda a: a.astype(np.int64), TypeError, [r"layers\[1\]\[0\]\.loc", "float64", "int64"]),
    ("bool", MATRIX, lambda a: a > 0, TypeError, [MATRIX_PATH, "float32", "bool"]),
    ("float16", MATRIX, lambda a: a.astype(np.float16), TypeError, [MATRIX_PATH, "float32", "float16"]),
    ("complex64", MATRIX, lambda a: a.astype(np.complex64), TypeError, [MATRIX_PATH, "float32", "complex64"]),
    ("object", MATRIX, lambda a: a.astype(object), TypeError, [MATRIX_PATH, "float32", "object"]),
    ("float64_for_float32", MATRIX, lambda a: a.astype(np.float64), TypeError, [MATRIX_PATH, "float32", "float64"]),
    ("float32_for_float64", F64_LOC, lambda a: a.astype(np.float32), TypeError,
     [r"layers\[1\]\[0\]\.loc", "float32", "float64"]),
    ("nested_list", MATRIX, lambda a: a.tolist(), TypeError, [MATRIX_PATH, "float"]),
    ("none_leaf", MATRIX, lambda a: None, TypeError, [MATRIX_PATH, "NoneType"]),
    ("numpy_scalar", MATRIX, lambda a: np.float32(1), TypeError, [MATRIX_PATH, "float32"]),
    ("python_float", MATRIX, lambda a: 1.0, TypeError, [MATRIX_PATH, "float"]),
    ("missing_entry", ("weights",), lambda w: [], ValueError, [r"weights", "1 entry", "0 entries"]),
    ("extra_entry", ("layers", 1), lambda l: l + [l[0]], ValueError, [r"layers\[1\]", "1 entry", "2 entries"]),
    ("tuple_for_namedtuple", ("weights", 0, 0), tuple, ValueError, [r"weights\[0\]\[0\]", "ParamsWeights", "tuple"]),
    ("tuple_for_list", ("layers",), tuple, ValueError, [r"layers", "list", "tuple"]),
    ("dict_for_namedtuple", ("weights", 0, 0), lambda nt: nt._asdict(), ValueError,
     [r"weights\[0\]\[0\]", "ParamsWeights", "dict"]),
    ("other_namedtuple", ("layers", 0, 0), lambda nt: ParamsWeights(nt.loc), ValueError,
     [r"layers\[0\]\[0\]", "ParamsBernoulli", "ParamsWeights"]),
]

BAD_PARAMS = [
    ("read_only", MATRIX, readonly, ValueError, [MATRIX_PATH, "read-only"]),
    ("fortran_order", MATRIX, np.asfortranarray, ValueError, [MATRIX_PATH, "C-contiguous"]),
    ("strided_view", MATRIX, lambda a: np.repeat(a, 2, axis=1)[:, ::2], ValueError, [MATRIX_PATH, "C-contiguous"]),
    ("byte_swapped", MATRIX, lambda a: a.astype(a.dtype.newbyteorder()), ValueError, [MATRIX_PATH, "byte order"]),
    ("float64_param", MATRIX, lambda a: a.astype(np.float64), TypeError, [MATRIX_PATH, "float64", "float32"]),
    ("float32_param", F64_LOC, lambda a: a.astype(np.float32), TypeError,
     [r"layers\[1\]\[0\]\.loc", "float32", "float64"]),
    ("int_param", MATRIX, lambda a: a.astype(np.int32), TypeError, [MATRIX_PATH, "int32"]),
    ("object_param", MATRIX, lambda a: a.astype(object), TypeError, [MATRIX_PATH, "object"]),
    ("shape_param", MATRIX, lambda a: a.T.copy(), ValueError, [MATRIX_PATH, r"\(5, 3\)", r"\(3, 5\)"]),
    ("list_param", MATRIX, lambda a: a.tolist(), TypeError, [MATRIX_PATH, "list"]),
    ("structure_param", ("weights",), lambda w: [], ValueError, [r"weights", "1 entry", "0 entries"]),
]


def check_rejected(pair, bad_params, bad_grad, error, patterns):
    opt, params = pair[0]
    before = snapshot(opt, params)
    with pytest.raises(error) as info:
        opt.update(bad_params if bad_params is not None else params, bad_grad)
    message = str(info.value)
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in {message!r}"
    assert snapshot(opt, params) == before
    if bad_params is not None:
        assert snapshot(opt, bad_params)[0] == ref.tree_bytes(bad_params)


@pytest.mark.parametrize("warm_steps", [0, 2])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", BAD_GRADS, ids=[c[0] for c in BAD_GRADS])
def test_bad_grad_changes_nothing(case, kind, warm_steps, rng):
    _, keys, transform, error, patterns = case
    pair, grad = trained(kind, rng, warm_steps)
    bad = replace(grad, keys, transform)
    check_rejected(pair, None, bad, error, patterns)
    assert_still_in_step(pair, grad)


@pytest.mark.parametrize("warm_steps", [0, 2])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", BAD_PARAMS, ids=[c[0] for c in BAD_PARAMS])
def test_bad_params_change_nothing(case, kind, warm_steps, rng):
    _, keys, transform, error, patterns = case
    pair, grad = trained(kind, rng, warm_steps)
    opt, params = pair[0]
    bad = replace(params, keys, transform)
    check_rejected(pair, bad, grad, error, patterns)
    assert_still_in_step(pair, grad)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_last_leaf_leaves_earlier_leaves_untouched(kind, rng):
    """The bad leaf comes after good ones: validation must finish before any kernel runs."""
    pair, grad = trained(kind, rng, 2)
    bad = list(ref.flatten(grad))
    leaves = [np.array(a) for a in bad[:-1]] + [bad[-1].astype(np.int16)]
    check_rejected(pair, None, ref.unflatten(grad, leaves), TypeError, [MATRIX_PATH, "int16"])
    assert_still_in_step(pair, grad)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("what", ["string", "none", "number", "array_for_tree"])
def test_grad_that_is_not_a_tree(kind, what, rng):
    pair, grad = trained(kind, rng, 2)
    bad = {"string": "grad", "none": None, "number": 0.5, "array_for_tree": np.zeros(3, np.float32)}[what]
    check_rejected(pair, None, bad, (TypeError, ValueError), [r"(?i)grad|root|params"])
    assert_still_in_step(pair, grad)


@pytest.mark.parametrize("kind", ["momentum", "rmsprop", "adam"])  # Gradient has no structure to check against
def test_paysage_path_bad_grad_does_not_call_the_model(kind, rng):
    params = make_tree(rng)
    opt, model = make_optimizer(kind), ref.MockModel(params)
    grad = ref.like_tree(params, rng)
    opt.update_lr()
    opt.update(model, grad)
    before, model_before = snapshot(opt, params), ref.tree_bytes(model.params)
    with pytest.raises(ValueError, match=MATRIX_PATH):
        opt.update(model, replace(grad, MATRIX, lambda a: a[:4].copy()))
    assert model.calls == 1
    assert ref.tree_bytes(model.params) == model_before
    assert snapshot(opt, params) == before


@pytest.mark.parametrize("kind", ["momentum", "rmsprop", "adam"])
def test_structure_change_needs_reset(kind, rng):
    pair, grad = trained(kind, rng, 2)
    opt, params = pair[0]
    other = {"w": rng.standard_normal((4, 2)).astype(np.float32), "b": rng.standard_normal(2)}
    other_grad = ref.like_tree(other, rng)
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match="does not match the structure"):
        opt.update(ref.tree_copy(other), other_grad)
    assert snapshot(opt, params) == before
    opt.reset()
    stepped, fresh_stepped = ref.tree_copy(other), ref.tree_copy(other)
    fresh = make_optimizer(kind)
    fresh.stepsize = opt.stepsize.copy()
    for o, p in ((opt, stepped), (fresh, fresh_stepped)):
        o.update_lr()
        o.update(p, other_grad)
        o.update(p, other_grad)
    assert ref.tree_bytes(stepped) == ref.tree_bytes(fresh_stepped)
    assert ref.tree_bytes(opt.memory.mean_square_gradient or opt.memory.mean_gradient) == \
        ref.tree_bytes(fresh.memory.mean_square_gradient or fresh.memory.mean_gradient)


def test_memoryless_gradient_accepts_a_new_structure(rng):
    opt = make_optimizer("gradient")
    opt.update_lr()
    for tree in (make_tree(rng), {"x": rng.standard_normal(4)}, rng.standard_normal((2, 2)).astype(np.float32)):
        p, g = ref.tree_copy(tree), ref.like_tree(tree, rng)
        opt.update(p, g)
        lr = np.float32(0.05)
        want = [np.asarray(a - np.asarray(a).dtype.type(lr) * b) for a, b in zip(ref.flatten(tree), ref.flatten(g))]
        ref.assert_leaves_equal(p, want)


# -- strided, misaligned, byte-swapped gradients: accepted, same bits as a contiguous copy --
def _unaligned(a):
    buf = np.zeros(a.nbytes + 1, np.uint8)
    out = buf[1:].view(a.dtype).reshape(a.shape)  # data starts one byte off
    out[...] = a
    return out


def _strided(a):
    big = np.zeros(a.shape[:-1] + (a.shape[-1] * 3,), a.dtype) if a.ndim else np.zeros(3, a.dtype)
    if a.ndim == 0:
        big[0] = a
        return big[0:1].reshape(())
    big[..., ::3] = a
    return big[..., ::3]


LAYOUTS = {
    "fortran": np.asfortranarray,
    "strided": _strided,
    "reversed": lambda a: np.ascontiguousarray(a[::-1])[::-1] if a.ndim else a.copy(),
    "byte_swapped": lambda a: a.astype(a.dtype.newbyteorder()),
    "unaligned": _unaligned,
    "read_only": readonly,
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_noncontiguous_grads_match_contiguous_copies(kind, layout, rng):
    params = make_tree(rng)
    grads = [ref.like_tree(params, rng) for _ in range(3)]
    odd = [ref.tree_map(LAYOUTS[layout], g) for g in grads]
    if layout == "unaligned":
        assert not all(a.flags.aligned for a in ref.flatten(odd[0]) if a.size)
    elif layout not in ("byte_swapped", "read_only"):
        assert not all(a.flags.c_contiguous for a in ref.flatten(odd[0]))
    results = []
    for gs in (grads, odd):
        opt, p = make_optimizer(kind), ref.tree_copy(params)
        for g in gs:
            before = ref.tree_bytes(g)
            opt.update_lr()
            opt.update(p, g)
            assert ref.tree_bytes(g) == before  # the caller's gradient is never modified
        results.append((ref.tree_bytes(p), snapshot(opt, p)[1:3]))
    assert results[0] == results[1]


# -- check_finite ---------------------------------------------------------------------
@pytest.mark.parametrize("path", ["paysage", "inplace"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [("nan", MATRIX, MATRIX_PATH), ("inf", F64_LOC, r"layers\[1\]\[0\]\.loc"),
                                 ("-inf", MATRIX, MATRIX_PATH)], ids=["nan", "inf64", "neginf"])
def test_check_finite_raises_and_modifies_nothing(bad, kind, path, rng):
    value, keys, pattern = bad
    pair, grad = trained(kind, rng, 2, check_finite=True)
    opt, params = pair[0]

    def poison(a):
        a = a.copy()
        a.flat[a.size - 1] = float(value)
        return a
    bad_grad = replace(grad, keys, poison)
    before = snapshot(opt, params)
    model = ref.MockModel(params) if path == "paysage" else None
    with pytest.raises(FloatingPointError, match=pattern + r".*NaN or Inf"):
        opt.update(model if model is not None else params, bad_grad)
    assert snapshot(opt, params) == before
    if model is not None:
        assert model.calls == 0
    assert_still_in_step(pair, grad)


@pytest.mark.parametrize("kind", KINDS)
def test_nonfinite_grads_propagate_as_numpy_by_default(kind, rng):
    params = make_tree(rng)
    grads = [ref.like_tree(params, rng) for _ in range(3)]
    specials = [np.nan, np.inf, -np.inf, 0.0]
    for g, value in zip(grads[1:], specials):
        g.weights[0][0].matrix[1] = value
        g.layers[1][0].loc[0] = value
    oracle = ref.RefOptimizer(kind, ref.exponential_rates(initial=0.05, coefficient=0.9))
    opt, p = make_optimizer(kind), ref.tree_copy(params)
    want = [np.array(a) for a in ref.flatten(params)]
    with np.errstate(all="ignore"):
        for g in grads:
            opt.update_lr()
            oracle.update_lr()
            opt.update(p, g)
            want = ref.apply(want, oracle.step(ref.flatten(g)))
    for got, exp in zip(ref.flatten(p), want):
        assert got.dtype == exp.dtype and np.array_equal(got, exp, equal_nan=True)
    assert np.isnan(p.weights[0][0].matrix[1]).all()  # the NaN did reach the parameters


# -- constructor arguments ----------------------------------------------------------------
@pytest.mark.parametrize("cls,name", [(optimizers.Momentum, "momentum"), (optimizers.RMSProp, "mean_square_weight"),
                                      (optimizers.ADAM, "mean_weight"), (optimizers.ADAM, "mean_square_weight")])
@pytest.mark.parametrize("value,error", [(1.0, ValueError), (1.5, ValueError), (-0.1, ValueError),
                                         (float("nan"), ValueError), (float("inf"), ValueError),
                                         ("0.9", TypeError), (None, TypeError), (True, TypeError),
                                         (np.array([0.5]), TypeError)])
def test_bad_weights_fail_at_construction(cls, name, value, error):
    with pytest.raises(error, match=r"\[0, 1\)"):
        cls(**{name: value})


@pytest.mark.parametrize("value", [1.0, -0.5, 2])
def test_bad_memory_weights(value):
    with pytest.raises(ValueError, match=r"mean_weight must be in \[0, 1\)"):
        optimizers.GradientMemory(mean_weight=value)
    with pytest.raises(ValueError, match=r"mean_square_weight must be in \[0, 1\)"):
        optimizers.GradientMemory(mean_square_weight=value)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value,error", [(-1e-7, ValueError), (float("nan"), ValueError), ("1e-7", TypeError),
                                         (None, TypeError), (False, TypeError)])
def test_bad_tolerance(kind, value, error):
    with pytest.raises(error, match="tolerance"):
        make_optimizer(kind, tolerance=value)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", ["0.01", None, True, [0.01], object(), np.array(0.01), {"initial": 0.1}])
def test_bad_stepsize(kind, value):
    cls = type(make_optimizer(kind))
    with pytest.raises(TypeError, match="stepsize must be a schedule"):
        cls(value)
    opt = make_optimizer(kind)
    before = repr(opt.stepsize.get_config())
    with pytest.raises(TypeError, match="stepsize must be a schedule"):
        opt.stepsize = value
    assert repr(opt.stepsize.get_config()) == before


@pytest.mark.parametrize("value", [0.01, 1, np.float32(0.01), np.float64(0.25)])
def test_bare_number_stepsize_is_a_constant(value):
    opt = optimizers.ADAM(value)
    assert isinstance(opt.stepsize, schedules.Constant)
    opt.update_lr()
    assert opt.lr == np.float32(value) and isinstance(opt.lr, np.float32)
    opt.update_lr()
    assert opt.lr == np.float32(value)


def test_weight_assignment_is_checked():
    opt = optimizers.ADAM()
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        opt.memory.mean_weight = 1.0
    assert opt.memory.mean_weight == np.float32(0.9)


# -- malformed trees that must not crash the C++ recursion -----------------------------------
@pytest.mark.parametrize("tree", ["self_reference", "deep"])
def test_pathological_trees_raise_instead_of_crashing(tree):
    """A list that contains itself, or a tree nested deeper than any real one, is refused
    with a ValueError; run in a subprocess so that a crash fails only this test."""
    build = {"self_reference": "t = []; t.append(t)",
             "deep": "t = np.zeros(2, np.float32)\nfor _ in range(100000): t = [t]"}[tree]
    code = textwrap.dedent("""
        import numpy as np
        from fusedopt import optimizers
        {build}
        for opt in (optimizers.Gradient(0.1), optimizers.ADAM(0.1)):
            try:
                opt.update(t, t)
            except ValueError as exc:
                assert "nested more than" in str(exc), exc
            else:
                raise SystemExit("accepted")
        print("ok")
    """).format(build=build)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", (run.returncode, run.stderr[-2000:])


@pytest.mark.parametrize("kind", KINDS)
def test_layers_and_weights_that_are_not_sized(kind, rng):
    """A namedtuple with `layers` and `weights` fields holding 0-d arrays is a valid tree,
    but not a paysage Gradient: len() of its fields fails. Either the step works (the
    convergence count falls back to the number of leaves) or it is refused changing nothing."""
    params = Gradient(layers=np.array(0.5, np.float32), weights=np.array(-0.5, np.float32))
    grad = Gradient(layers=np.array(1.0, np.float32), weights=np.array(2.0, np.float32))
    opt, p = make_optimizer(kind), ref.tree_copy(params)
    opt.update_lr()
    before = snapshot(opt, p)
    try:
        opt.update(p, grad)
    except (TypeError, ValueError):
        assert snapshot(opt, p) == before
    else:
        oracle = ref.RefOptimizer(kind, iter([np.float32(0.05)]))
        oracle.update_lr()
        ref.assert_leaves_equal(p, ref.apply(ref.flatten(params), oracle.step(ref.flatten(grad))))
        assert opt.step_count == 1
        assert isinstance(opt.check_convergence(), bool)


class _Recorder:
    """A paysage-like model that only counts parameter_update calls."""

    calls = 0

    def parameter_update(self, delta):
        self.calls += 1


class _Tagged(list):
    """A list subclass whose constructor takes another signature than list's."""

    def __init__(self, tag, items=()):
        super().__init__(items)
        self.tag = tag


@pytest.mark.parametrize("path", ["inplace", "paysage"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("container", ["defaultdict", "list_subclass"])
def test_containers_that_cannot_be_rebuilt(container, kind, path, rng):
    """fusedopt rebuilds containers (moment trees, delta) with type(node)(entries); for a
    defaultdict or a subclass with its own constructor that fails. Either such a tree is
    refused before any kernel runs, or it steps correctly; never a half-done step."""
    import collections
    a, b = rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    if container == "defaultdict":
        params, grad = collections.defaultdict(list, {"a": a}), collections.defaultdict(list, {"a": b})
    else:
        params, grad = _Tagged("p", [a]), _Tagged("g", [b])
    opt = make_optimizer(kind)
    target = _Recorder() if path == "paysage" else params
    before_params = a.tobytes()
    opt.update_lr()
    try:
        opt.update(target, grad)
    except (TypeError, ValueError):
        assert a.tobytes() == before_params and opt.step_count == 0
        assert opt._memory.mean_gradient is None and opt._memory.mean_square_gradient is None
        if path == "paysage":
            assert target.calls == 0
    else:
        assert opt.step_count == 1
        mem = opt._memory
        for tree in (opt.delta, mem.mean_gradient, mem.mean_square_gradient):
            if tree is not None:  # rebuilt with the same container type and all its entries
                assert type(tree) is type(grad) and len(ref.flatten(tree)) == 1
