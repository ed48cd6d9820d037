"""Checkpoints (docs/checkpoints.md): state_dict()/load_state_dict() and pickling round-trip bit-exactly;
a checked-in state keeps loading; states that do not fit are refused, changing nothing."""
import copy
import io
import os
import pickle
import sys

import numpy as np
import pytest

from fusedopt import optimizers, schedules

import reference as ref
from paysage_cases import CLASSES, WEIGHTS

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
HYPER = WEIGHTS


def make(kind, schedule=None, **options):
    schedule = schedule if schedule is not None else schedules.ExponentialDecay(initial=np.float32(0.05),
                                                                                coefficient=0.93)
    options.setdefault("check_finite", True)  # not the default: loading must restore it
    return CLASSES[kind](schedule, tolerance=1e-3, ascent=kind == "momentum", **HYPER[kind], **options)


def train(opt, target, grads):
    for g in grads:
        opt.update_lr()
        opt.update(target, g)


def moments(opt):
    mem = opt._memory
    return [None if t is None else ref.tree_bytes(t) for t in (mem.mean_gradient, mem.mean_square_gradient)]


def summary(opt):
    """What must be equal after a round trip (check_convergence aside)."""
    return (moments(opt), repr(opt.lr), type(opt.lr), opt.step_count, repr(opt.stepsize.get_config()),
            float(opt._memory.mean_weight), float(opt._memory.mean_square_weight), opt.tolerance, opt.ascent,
            opt.check_finite, opt.keep_delta)


def save_load(opt, method, tmp_path, kind):
    """Round-trip opt's state through `method`; returns the new optimizer."""
    if method == "pickle_optimizer":
        return pickle.loads(pickle.dumps(opt))
    if method == "deepcopy":
        return copy.deepcopy(opt)
    new = CLASSES[kind]()  # default hyper-parameters and schedule: all must come from the state
    if method == "npz_file":
        path = tmp_path / "state.npz"
        np.savez(path, **opt.state_dict())
        with np.load(path) as saved:  # allow_pickle=False: the state is plain arrays
            new.load_state_dict(saved)
    elif method == "pickle_state":
        new.load_state_dict(pickle.loads(pickle.dumps(opt.state_dict())))
    else:
        raise ValueError(method)
    return new


@pytest.mark.parametrize("path", ["inplace", "paysage"])
@pytest.mark.parametrize("method", ["npz_file", "pickle_state", "pickle_optimizer", "deepcopy"])
@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_resume_30_steps_bit_identical(kind, method, path, tmp_path, rng):
    params = ref.random_tree("paysage", rng, "mixed")
    grads = [ref.like_tree(params, rng) for _ in range(30)]
    wrap = ref.MockModel if path == "paysage" else ref.tree_copy

    straight, target = make(kind), wrap(params)
    train(straight, target, grads)

    first, resumed_target = make(kind), wrap(params)
    train(first, resumed_target, grads[:15])
    resumed = save_load(first, method, tmp_path, kind)
    assert type(resumed) is type(first)
    train(resumed, resumed_target, grads[15:])

    final = target.params if path == "paysage" else target
    resumed_final = resumed_target.params if path == "paysage" else resumed_target
    assert ref.tree_bytes(resumed_final) == ref.tree_bytes(final)
    assert summary(resumed) == summary(straight)
    assert resumed.check_convergence() == straight.check_convergence()
    if path == "paysage":
        assert ref.tree_bytes(resumed.delta) == ref.tree_bytes(straight.delta)


@pytest.mark.parametrize("name", sorted(ref.SCHEDULE_ARGS))
@pytest.mark.parametrize("number", [float, np.float32, np.float64])
def test_every_schedule_resumes_with_its_scalar_types(name, number, tmp_path, rng):
    """Python floats and numpy float32/float64 schedule values round differently in the
    schedule's arithmetic, so the state keeps each attribute's type."""
    args = {k: number(v) if isinstance(v, float) else v for k, v in ref.SCHEDULE_ARGS[name].items()}
    params = ref.random_tree("list", rng, "float32")
    grads = [ref.like_tree(params, rng) for _ in range(24)]
    straight, p1 = optimizers.ADAM(getattr(schedules, name)(**args)), ref.tree_copy(params)
    train(straight, p1, grads)
    first, p2 = optimizers.ADAM(getattr(schedules, name)(**args)), ref.tree_copy(params)
    train(first, p2, grads[:12])
    resumed = save_load(first, "npz_file", tmp_path, "adam")
    config = resumed.stepsize.get_config()[1]
    for key, value in first.stepsize.get_config()[1].items():
        assert type(config[key]) is type(value) and repr(config[key]) == repr(value), key
    train(resumed, p2, grads[12:])
    assert ref.tree_bytes(p2) == ref.tree_bytes(p1)
    assert repr(resumed.stepsize.get_config()) == repr(straight.stepsize.get_config())


def test_state_dict_is_plain_and_versioned(rng, tmp_path):
    params = ref.random_tree("paysage", rng, "mixed")
    opt = make("adam")
    train(opt, ref.tree_copy(params), [ref.like_tree(params, rng) for _ in range(3)])
    state = opt.state_dict()
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            assert value.dtype.kind in "fU", key  # never an object array: np.load needs no pickle
        else:
            assert type(value) in (bool, int, float, str), key
    assert (state["format"], state["version"], state["kind"]) == ("fusedopt", 1, "ADAM")
    assert state["step_count"] == 3 and state["lr_set"] is True and state["lr"] == float(opt.lr)
    assert state["mean_weight"] == float(np.float32(0.8)) and state["tolerance"] == 1e-3
    assert list(state["leaf_paths"]) == ["layers[0][0].loc", "layers[1][0].loc", "layers[1][0].log_var",
                                         "weights[0][0].matrix"]
    assert list(state["leaf_dtypes"]) == [str(a.dtype) for a in ref.flatten(params)]
    mean = ref.flatten(opt.memory.mean_gradient)
    for i, leaf in enumerate(mean):
        assert np.array_equal(state[f"mean_gradient.{i}"], leaf) and state[f"mean_gradient.{i}"].dtype == leaf.dtype
    # the state holds copies: editing it does not reach the optimizer
    before = moments(opt)
    state["mean_gradient.0"][...] = 7
    assert moments(opt) == before
    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    with np.load(buf) as loaded:
        assert sorted(loaded.files) == sorted(state)


def test_state_before_any_step_and_of_gradient(rng, tmp_path):
    for kind in CLASSES:
        opt = make(kind)
        state = opt.state_dict()
        assert state["has_mean_gradient"] is False and len(state["leaf_paths"]) == 0
        assert state["lr_set"] is False
        new = save_load(opt, "npz_file", tmp_path, kind)
        assert new.lr is None and new.step_count == 0 and summary(new) == summary(opt)


def test_loaded_moments_attach_immediately_to_a_matching_structure(rng):
    params = ref.random_tree("paysage", rng, "mixed")
    grads = [ref.like_tree(params, rng) for _ in range(6)]
    source, other = make("adam"), make("adam")
    train(source, ref.tree_copy(params), grads[:4])
    train(other, ref.tree_copy(params), grads[4:])
    other.load_state_dict(source.state_dict())
    assert moments(other) == moments(source)  # visible at once, no step needed
    assert other.check_convergence() is False  # no delta of the loaded state is known


def test_loaded_moments_wait_for_the_first_gradient(rng):
    params = ref.random_tree("dict", rng, "mixed")
    grads = [ref.like_tree(params, rng) for _ in range(4)]
    source, p = make("rmsprop"), ref.tree_copy(params)
    train(source, p, grads[:2])
    new = CLASSES["rmsprop"]()
    new.load_state_dict(source.state_dict())
    assert new.memory.mean_square_gradient is None  # no structure known yet
    key = "mean_square_gradient.0"
    assert new.state_dict()[key].tobytes() == source.state_dict()[key].tobytes()  # a waiting state saves again
    clone = pickle.loads(pickle.dumps(new))  # a waiting state pickles too
    p_new, p_clone = ref.tree_copy(p), ref.tree_copy(p)
    train(source, p, grads[2:])
    train(new, p_new, grads[2:])
    train(clone, p_clone, grads[2:])
    assert ref.tree_bytes(p_new) == ref.tree_bytes(p) == ref.tree_bytes(p_clone)


def test_dict_entries_may_come_in_another_order(rng):
    """Leaves are matched by path, so a dict rebuilt in another key order still fits."""
    params = {"b": rng.standard_normal(5).astype(np.float32), "a": rng.standard_normal((2, 3))}
    grads = [ref.like_tree(params, rng) for _ in range(4)]
    source, p = make("adam"), ref.tree_copy(params)
    train(source, p, grads[:2])
    new, q = CLASSES["adam"](), {"a": p["a"].copy(), "b": p["b"].copy()}
    new.load_state_dict(source.state_dict())
    train(new, q, [{"a": g["a"], "b": g["b"]} for g in grads[2:]])
    train(source, p, grads[2:])
    assert q["a"].tobytes() == p["a"].tobytes() and q["b"].tobytes() == p["b"].tobytes()


def snapshot(opt, params):
    return (summary(opt), opt.check_convergence(), ref.tree_bytes(params), opt._memory._pending is not None)


def _trained(rng, kind="adam"):
    params = ref.random_tree("paysage", rng, "mixed")
    opt, p = make(kind), ref.tree_copy(params)
    train(opt, p, [ref.like_tree(params, rng) for _ in range(3)])
    return opt, p, params


def _edit(state, **changes):
    state = dict(state)
    for key, value in changes.items():
        if value is KeyError:
            del state[key]
        else:
            state[key] = value
    return state


BAD_STATES = [
    ("other_kind", lambda s: _edit(s, kind="Momentum"), ValueError, r"state was saved by Momentum, it cannot be loaded into ADAM"),
    ("newer_version", lambda s: _edit(s, version=2), ValueError, r"version 2 is not supported.*version 1"),
    ("version_as_str", lambda s: _edit(s, version="1"), TypeError, r"'version'.*integer"),
    ("other_format", lambda s: _edit(s, format="torch"), ValueError, r"format is 'torch'"),
    ("missing_lr", lambda s: _edit(s, lr=KeyError), ValueError, r"key 'lr' is missing"),
    ("missing_moment_leaf", lambda s: _edit(s, **{"mean_gradient.3": KeyError}), ValueError,
     r"'mean_gradient\.3' is missing"),
    ("moment_shape", lambda s: _edit(s, **{"mean_gradient.3": np.zeros((7, 17), s["leaf_dtypes"][3]),
                                         "mean_square_gradient.3": np.zeros((7, 17), s["leaf_dtypes"][3])}),
     ValueError, r"weights\[0\]\[0\]\.matrix.*\(7, 17\).*\(17, 7\)"),
    ("moments_disagree", lambda s: _edit(s, **{"mean_gradient.0": np.zeros(3, np.float32)}), ValueError,
     r"layers\[0\]\[0\]\.loc.*mean has shape \(3,\).*\(17,\)"),
    ("moment_dtype", lambda s: _edit(s, **{"mean_gradient.1": s["mean_gradient.1"].astype(np.float32)}),
     ValueError, r"mean_gradient at layers\[1\]\[0\]\.loc has dtype float32, the state says float64"),
    ("int_moment", lambda s: _edit(s, **{"mean_gradient.0": s["mean_gradient.0"].astype(np.int32)}),
     ValueError, r"layers\[0\]\[0\]\.loc has dtype int32"),
    ("moment_not_array", lambda s: _edit(s, **{"mean_gradient.0": [1.0] * 17}), TypeError, r"must be a numpy array"),
    ("leaf_dtype_int", lambda s: _edit(s, leaf_dtypes=np.array(["int32", "float64", "float32", "float32"])),
     ValueError, r"dtype 'int32', expected float32 or float64"),
    ("other_paths", lambda s: _edit(s, leaf_paths=np.array(["a", "b", "c", "d"])), ValueError,
     r"at layers\[0\]\[0\]\.loc: the loaded state has no leaf there \(its leaves: a, b, c, d\)"),
    ("fewer_leaves", lambda s: _edit(s, leaf_paths=s["leaf_paths"][:3], leaf_dtypes=s["leaf_dtypes"][:3]),
     ValueError, r"at weights\[0\]\[0\]\.matrix: the loaded state has no leaf there"),
    ("more_leaves", lambda s: _edit(s, leaf_paths=np.append(s["leaf_paths"], "extra"),
                                    leaf_dtypes=np.append(s["leaf_dtypes"], "float32"),
                                    **{"mean_gradient.4": np.zeros(2, np.float32),
                                       "mean_square_gradient.4": np.zeros(2, np.float32)}),
     ValueError, r"has 4 leaves, the loaded state 5 \(it also has extra\)"),
    ("duplicate_paths", lambda s: _edit(s, leaf_paths=np.array(["a", "a", "c", "d"])), ValueError,
     r"leaf_paths has duplicate entries"),
    ("weight_one", lambda s: _edit(s, mean_weight=1.0), ValueError, r"mean_weight.*\[0, 1\)"),
    ("weight_str", lambda s: _edit(s, mean_square_weight="0.9"), TypeError, r"mean_square_weight.*real"),
    ("negative_tolerance", lambda s: _edit(s, tolerance=-1.0), ValueError, r"tolerance.*>= 0"),
    ("negative_step_count", lambda s: _edit(s, step_count=-1), ValueError, r"step_count.*>= 0"),
    ("float_step_count", lambda s: _edit(s, step_count=2.5), TypeError, r"step_count.*integer"),
    ("bool_as_int", lambda s: _edit(s, ascent=1), TypeError, r"'ascent'\] must be a bool"),
    ("unknown_schedule", lambda s: _edit(s, schedule="Cosine"), ValueError, r"schedule Cosine cannot be rebuilt"),
    ("schedule_attribute", lambda s: _edit(s, **{"schedule.names": np.array(["bogus"]),
                                                 "schedule.types": np.array(["float"]), "schedule.bogus": 1.0}),
     ValueError, r"schedule ExponentialDecay cannot be rebuilt"),
    ("schedule_type_tag", lambda s: _edit(s, **{"schedule.types": np.array(["float", "float16", "float32"])}),
     ValueError, r"schedule\.initial'\] must be a float16"),
    ("not_a_mapping", lambda s: list(s.items()), TypeError, r"must be a mapping"),
]


@pytest.mark.parametrize("case", BAD_STATES, ids=[c[0] for c in BAD_STATES])
def test_state_that_does_not_fit_changes_nothing(case, rng):
    _, edit, error, pattern = case
    opt, p, params = _trained(rng)
    # the state comes from an optimizer of the same structure, so only the edit can be wrong
    source, _, _ = _trained(np.random.default_rng(5))
    bad = edit(source.state_dict())
    before = snapshot(opt, p)
    with pytest.raises(error, match=pattern):
        opt.load_state_dict(bad)
    assert snapshot(opt, p) == before
    # and a fresh optimizer refuses it too, unless only the structure was wrong
    fresh = CLASSES["adam"]()
    if case[0] in ("other_paths", "fewer_leaves", "more_leaves", "duplicate_paths", "moment_shape"):
        fresh.load_state_dict(bad)  # no structure to compare with yet: checked at the first step
        grad = ref.like_tree(params, rng)
        stepped, fresh_before = ref.tree_copy(params), ref.tree_bytes(params)
        with pytest.raises(ValueError, match=pattern):
            fresh.update(stepped, grad)
        assert ref.tree_bytes(stepped) == fresh_before and fresh.step_count == 3
        assert fresh.memory.mean_gradient is None
    else:
        with pytest.raises(error, match=pattern):
            fresh.load_state_dict(bad)
        assert fresh.step_count == 0 and fresh.memory._pending is None


def test_pending_state_refuses_a_gradient_of_another_shape(rng):
    params = ref.random_tree("paysage", rng, "mixed")
    source, _, _ = _trained(np.random.default_rng(1))
    new = CLASSES["adam"]()
    new.load_state_dict(source.state_dict())
    bad = params._replace(weights=[[ref.ParamsWeights(np.zeros((7, 17)))]])  # float64 leaf, as in "mixed"
    p = ref.tree_copy(bad)
    with pytest.raises(ValueError, match=r"grad at weights\[0\]\[0\]\.matrix: the loaded state has float64 of "
                                         r"shape \(17, 7\), got float64 of shape \(7, 17\)"):
        new.update(p, ref.like_tree(bad, rng))
    assert ref.tree_bytes(p) == ref.tree_bytes(bad) and new.step_count == 3 and new.memory._pending is not None
    new.reset()  # forgetting the moments allows any structure again
    assert new.memory._pending is None
    new.update(p, ref.like_tree(bad, rng))


@pytest.mark.parametrize("kind", ["momentum", "rmsprop", "gradient"])
def test_state_of_another_memoryless_weight_is_refused(kind, rng):
    """Momentum has no mean square, RMSProp no mean, Gradient neither: such a weight in the state is an error."""
    opt = make(kind)
    state = opt.state_dict()
    key = "mean_weight" if kind == "rmsprop" else "mean_square_weight"
    with pytest.raises(ValueError, match=f"'{key}'.*no such moment"):
        opt.load_state_dict(_edit(state, **{key: 0.5}))


def test_custom_schedule_cannot_be_saved_plainly_but_pickles():
    opt = optimizers.ADAM(iter([0.1, 0.2]))
    with pytest.raises(TypeError, match="fusedopt.schedules schedules only"):
        opt.state_dict()
    opt = optimizers.ADAM(_Halving(0.5))
    opt.update_lr()
    clone = pickle.loads(pickle.dumps(opt))
    clone.update_lr()
    assert clone.lr == np.float32(0.25)


class _Halving:
    """A schedule that is not one of fusedopt's (module level so that it pickles)."""

    def __init__(self, value):
        self.value = value

    def __next__(self):
        current, self.value = self.value, self.value / 2
        return np.float32(current)


def test_pickle_keeps_structure_delta_and_alignment(rng):
    params = ref.random_tree("tuple", rng, "mixed")
    opt, model = make("adam", keep_delta=True), ref.MockModel(params)
    train(opt, model, [ref.like_tree(params, rng) for _ in range(3)])
    clone = pickle.loads(pickle.dumps(opt, protocol=pickle.HIGHEST_PROTOCOL))
    assert ref.structure(clone.memory.mean_gradient) == ref.structure(opt.memory.mean_gradient)
    assert ref.tree_bytes(clone.delta) == ref.tree_bytes(opt.delta)
    assert clone.check_convergence() == opt.check_convergence() and clone.keep_delta is True
    for leaf in ref.flatten(clone.memory.mean_square_gradient):
        assert leaf.ctypes.data % 64 == 0  # moments live in fresh 64-byte aligned arenas
    assert not np.shares_memory(ref.flatten(clone.memory.mean_gradient)[0], ref.flatten(opt.memory.mean_gradient)[0])


def test_pickle_of_fresh_and_of_gradient_optimizers(rng):
    params = ref.random_tree("paysage", rng, "float32")
    for kind in CLASSES:
        opt = make(kind)
        assert summary(pickle.loads(pickle.dumps(opt))) == summary(opt)
    grad_opt, p = make("gradient"), ref.tree_copy(params)
    train(grad_opt, p, [ref.like_tree(params, rng, scale=1e-6)])
    clone = pickle.loads(pickle.dumps(grad_opt))
    assert clone.check_convergence() == grad_opt.check_convergence()
    # a memoryless optimizer still accepts a new structure after unpickling
    clone.update(np.zeros(3, np.float32), np.ones(3, np.float32))


def test_gradient_memory_state_and_pickle(rng, tmp_path):
    tree = ref.random_tree("dict", rng, "mixed")
    grads = [ref.like_tree(tree, rng) for _ in range(5)]
    mem = optimizers.GradientMemory(0.75, 0.5)
    for g in grads[:3]:
        mem.update(g)
    path = tmp_path / "memory.npz"
    np.savez(path, **mem.state_dict())
    loaded = optimizers.GradientMemory()
    with np.load(path) as state:
        loaded.load_state_dict(state)
    assert (loaded.mean_weight, loaded.mean_square_weight) == (np.float32(0.75), np.float32(0.5))
    pickled = pickle.loads(pickle.dumps(mem))
    for g in grads[3:]:
        for m in (mem, loaded, pickled):
            m.update(g)
    for m in (loaded, pickled):
        assert ref.tree_bytes(m.mean_gradient) == ref.tree_bytes(mem.mean_gradient)
        assert ref.tree_bytes(m.mean_square_gradient) == ref.tree_bytes(mem.mean_square_gradient)
        assert ref.tree_bytes(m.normalize(grads[0], unbiased=True)) == \
            ref.tree_bytes(mem.normalize(grads[0], unbiased=True))
    with pytest.raises(ValueError, match="state was saved by ADAM"):
        loaded.load_state_dict(optimizers.ADAM().state_dict())


def test_assigning_a_moment_while_loaded_moments_wait(rng):
    tree = ref.random_tree("list", rng, "float32")
    mem = optimizers.GradientMemory(0.5, 0.5)
    mem.update(tree)
    waiting = optimizers.GradientMemory()
    waiting.load_state_dict(mem.state_dict())
    waiting.mean_gradient = ref.like_tree(tree, rng)  # attaches the waiting moments to this structure
    assert ref.tree_bytes(waiting.mean_square_gradient) == ref.tree_bytes(mem.mean_square_gradient)
    other = optimizers.GradientMemory()
    other.load_state_dict(mem.state_dict())
    other.mean_square_gradient = None  # drops only the waiting mean square
    other.update_mean(tree)
    assert other.mean_square_gradient is None
    assert ref.tree_bytes(other.mean_gradient) == ref.tree_bytes(
        ref.tree_map(lambda m, g: np.asarray(np.float32(0.5) * m + (np.float32(1) - np.float32(0.5)) * g),
                     mem.mean_gradient, tree))


# -- the checked-in state of format version 1 ------------------------------------------------------
def test_checked_in_state_keeps_loading():
    sys.path.insert(0, DATA)
    try:
        from make_fixture import tree_for_fixture
    finally:
        sys.path.remove(DATA)
    with np.load(os.path.join(DATA, "adam_state_v1.npz")) as saved:
        state = {key: saved[key] for key in saved.files}
    opt = optimizers.ADAM()
    opt.load_state_dict(state)
    # ExponentialDecay(initial=np.float32(0.05), coefficient=0.9) after 4 update_lr(), saved under
    # NumPy 2, where np.float32 * a Python float is computed in float32 (NEP 50): the saved rates
    # are this float32 chain, whichever NumPy reads them back.
    rates = [np.float32(0.05)]
    for _ in range(4):
        rates.append(rates[-1] * np.float32(0.9))
    assert all(type(r) is np.float32 for r in rates)
    assert opt.step_count == 4
    assert opt.lr == rates[3] and isinstance(opt.lr, np.float32)
    assert opt.stepsize.value == rates[4] and type(opt.stepsize.value) is np.float32
    assert type(opt.stepsize.coefficient) is float and opt.stepsize.coefficient == 0.9
    assert (opt.memory.mean_weight, opt.memory.mean_square_weight) == (np.float32(0.8), np.float32(0.99))
    assert opt.tolerance == 1e-4 and opt.ascent is False and opt.check_finite is False

    # One more epoch, against the NumPy reference started from the saved moments.
    rng = np.random.default_rng(99)
    params, grad = tree_for_fixture(rng), tree_for_fixture(rng)
    oracle = ref.RefOptimizer("adam", iter([rates[4]]), mean_weight=0.8, mean_square_weight=0.99)
    oracle.memory.mean = [state[f"mean_gradient.{i}"] for i in range(4)]
    oracle.memory.mean_square = [state[f"mean_square_gradient.{i}"] for i in range(4)]
    oracle.update_lr()
    want = ref.apply(ref.flatten(params), oracle.step(ref.flatten(grad)))
    opt.update_lr()
    opt.update(params, grad)
    ref.assert_leaves_equal(params, want, "parameter")
    assert opt.step_count == 5
    # The schedule's next value is computed by the NumPy the drop-in runs on, as paysage computes
    # it (value *= coefficient, a Python float): float32 under NumPy 2 (NEP 50), float64 under
    # NumPy 1 (a Python float promotes a float32 scalar to float64 there).
    numpy2 = np.lib.NumpyVersion(np.__version__) >= "2.0.0"
    want_next = np.float32(rates[4] * np.float32(0.9)) if numpy2 else np.float64(rates[4]) * 0.9
    assert type(opt.stepsize.value) is type(want_next) and opt.stepsize.value == want_next
