"""A stateful test (issue 12): random sequences of steps (valid and refused, on the paysage and
the in-place path), update_lr, reset, state_dict/load_state_dict, pickle, attribute assignment
and set_num_threads, run on an optimizer and on a NumPy model of it (tests/reference.py's
RefOptimizer). After every rule both agree bit for bit; a refused call changes neither."""
import copy
import math
import pickle

import numpy as np
import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import fusedopt
from fusedopt import optimizers, schedules

import reference as ref

from paysage_cases import CLASSES  # noqa: E402
WEIGHTS = {"gradient": {}, "momentum": {"momentum": 0.8}, "rmsprop": {"mean_square_weight": 0.9},
           "adam": {"mean_weight": 0.85, "mean_square_weight": 0.99}}
INITIAL, COEFFICIENT = 0.05, 0.9
N_RMS = 3  # paysage's n for the "paysage" tree: 2 layers + 1 weights


class Rates:
    """ExponentialDecay's values as float32 rates (a plain object, so snapshots can copy it)."""

    def __init__(self):
        self.value = INITIAL

    def __next__(self):
        current = np.float32(self.value)
        self.value *= COEFFICIENT
        return current


class Model:
    """What the optimizer must hold: RefOptimizer plus the switches and counters around it."""

    def __init__(self, kind):
        self.opt = ref.RefOptimizer(kind, Rates(), unstepped_value=INITIAL, **WEIGHTS[kind])
        self.step_count = 0
        self.tolerance = 1e-3
        self.check_finite = False
        self.keep_delta = False
        self.deltas = None       # flat deltas the optimizer keeps, or None
        self.last = None         # flat deltas of the last step (what check_convergence judges)
        self.inplace = False     # the last step was in place (check_convergence from the fused sums)
        self.known = False       # check_convergence has a step to judge
        self.structure = False   # the memory holds a tree structure (from a step, kept until reset)
        self.waiting = False     # loaded moments wait for the next gradient (mean_gradient reads None)

    def has_moments(self):
        return self.opt.memory.mean is not None or self.opt.memory.mean_square is not None


class TinyModel:
    """A paysage model: parameter_update(delta) does p = p - delta on the shared parameters."""

    def __init__(self, params):
        self.params = params

    def parameter_update(self, delta):
        for p, d in zip(ref.flatten(self.params), ref.flatten(delta)):
            p[...] = p - d


def paysage_rms(delta):
    total = 0
    for part in (delta.layers, delta.weights):
        for group in part:
            for sub in group:
                total += sum(np.mean(np.square(x)) for x in sub)
    return math.sqrt(total / N_RMS)


BAD_ATTRIBUTES = [("check_finite", "yes"), ("keep_delta", 1), ("ascent", None), ("tolerance", float("nan")),
                  ("tolerance", -1.0), ("lr", "0.1"), ("lr", np.ones(1)), ("stepsize", "fast"), ("step_count", -2)]


class OptimizerMachine(RuleBasedStateMachine):

    @initialize(kind=st.sampled_from(sorted(CLASSES)), seed=st.integers(0, 2 ** 16))
    def start(self, kind, seed):
        self.kind = kind
        self.rng = np.random.default_rng(seed)
        self.params = ref.random_tree("paysage", self.rng, "mixed")
        self.ref_params = [np.array(p, copy=True) for p in ref.flatten(self.params)]
        schedule = schedules.ExponentialDecay(initial=INITIAL, coefficient=COEFFICIENT)
        self.opt = CLASSES[kind](schedule, tolerance=1e-3, **WEIGHTS[kind])
        self.model = Model(kind)
        self.saved = None
        self.threads = fusedopt.get_num_threads()

    def teardown(self):
        if hasattr(self, "threads"):
            fusedopt.set_num_threads(self.threads)

    # -- steps -------------------------------------------------------------------------
    def _grad(self, scale):
        return ref.like_tree(self.params, self.rng, scale=scale)

    @rule(paysage=st.booleans(), scale=st.sampled_from([1e-3, 0.5, 3.0]))
    def step(self, paysage, scale):
        grad = self._grad(scale)
        grad_bytes = ref.tree_bytes(grad)
        self.opt.update(TinyModel(self.params) if paysage else self.params, grad)
        assert ref.tree_bytes(grad) == grad_bytes  # never modified
        m = self.model
        deltas = m.opt.step(ref.flatten(grad))
        self.ref_params = ref.apply(self.ref_params, deltas)
        m.step_count += 1
        m.deltas = deltas if (paysage or m.keep_delta) else None
        m.last, m.inplace, m.known, m.structure, m.waiting = deltas, not paysage, True, True, False

    @rule(paysage=st.booleans(), how=st.sampled_from(["shape", "dtype", "nan", "readonly", "container"]))
    def refused_step(self, paysage, how):
        grad = self._grad(0.5)
        leaves = ref.flatten(grad)
        target = TinyModel(self.params) if paysage else self.params
        if paysage and how in ("shape", "container") and not self.model.has_moments():
            return  # without moments a gradient of another structure simply starts over
        if how == "shape":
            grad = ref.unflatten(grad, leaves[:-1] + [np.zeros(leaves[-1].shape[::-1], leaves[-1].dtype)])
        elif how == "dtype":
            grad = ref.unflatten(grad, [leaves[0].astype(np.float16)] + leaves[1:])
        elif how == "nan":
            if not self.model.check_finite:
                return  # without the check a NaN propagates: not a refused call
            leaves[1][0] = np.nan
        elif how == "readonly":
            if paysage:
                return
            ref.flatten(self.params)[2].flags.writeable = False
        elif how == "container":
            grad = {"other": leaves[0]}
        try:
            with pytest.raises((TypeError, ValueError, FloatingPointError)):
                self.opt.update(target, grad)
        finally:
            ref.flatten(self.params)[2].flags.writeable = True

    @rule()
    def update_lr(self):
        self.opt.update_lr()
        self.model.opt.update_lr()

    @rule()
    def reset(self):
        self.opt.reset()
        m = self.model
        if self.kind != "gradient":  # Gradient.reset() does nothing
            m.opt.memory.reset()
            m.waiting = m.structure = False
            if m.inplace:
                m.known = False  # the fused sums went with the memory's structure

    # -- state ---------------------------------------------------------------------------
    @rule()
    def save(self):
        m = self.model
        self.saved = (self.opt.state_dict(), copy.deepcopy(m))

    @precondition(lambda self: self.saved is not None)
    @rule()
    def load(self):
        state, snapshot = self.saved
        structure = self.model.structure
        self.opt.load_state_dict(state)
        m = copy.deepcopy(snapshot)
        m.deltas, m.last, m.known = None, None, False
        m.waiting = m.has_moments() and not structure
        m.structure = structure and m.has_moments()
        self.model = m

    @precondition(lambda self: self.saved is not None)
    @rule(how=st.sampled_from(["Schedule", "_Decay", "lr", "version"]))
    def refused_load(self, how):
        state = dict(self.saved[0])
        if how == "lr":
            state["lr"] = 1e39
        elif how == "version":
            state["version"] = 2
        else:
            state["schedule"] = how
        with pytest.raises(ValueError):
            self.opt.load_state_dict(state)

    @rule(deep=st.booleans())
    def pickle_round_trip(self, deep):
        self.opt = copy.deepcopy(self.opt) if deep else pickle.loads(pickle.dumps(self.opt))

    # -- attributes and threads --------------------------------------------------------------
    @rule(name=st.sampled_from(["check_finite", "keep_delta", "ascent"]), value=st.booleans())
    def switch(self, name, value):
        setattr(self.opt, name, value)
        if name == "ascent":
            self.model.opt.ascent = value
        else:
            setattr(self.model, name, value)

    @rule(value=st.floats(0, 2))
    def tolerance(self, value):
        self.opt.tolerance = value
        self.model.tolerance = value

    @rule(value=st.floats(1e-4, 0.1))
    def assign_lr(self, value):
        self.opt.lr = value
        self.model.opt.lr = np.float32(value)

    @rule(case=st.sampled_from(BAD_ATTRIBUTES))
    def refused_assignment(self, case):
        with pytest.raises((TypeError, ValueError), match=case[0]):
            setattr(self.opt, *case)

    @rule(n=st.sampled_from([1, 2]))
    def threads(self, n):
        fusedopt.set_num_threads(n)

    # -- agreement ---------------------------------------------------------------------------
    def _memory(self):
        return getattr(self.opt, "memory", None)

    @invariant()
    def agree(self):
        m = self.model
        assert [p.tobytes() for p in ref.flatten(self.params)] == [p.tobytes() for p in self.ref_params]
        assert self.opt.step_count == m.step_count
        assert repr(self.opt.lr) == repr(m.opt.lr)
        assert (self.opt.tolerance, self.opt.check_finite, self.opt.keep_delta, self.opt.ascent) == \
            (m.tolerance, m.check_finite, m.keep_delta, m.opt.ascent)
        assert self.opt.stepsize.value == m.opt.rates.value
        mem = self._memory()
        if mem is not None:
            for tree, leaves in ((mem.mean_gradient, m.opt.memory.mean), (mem.mean_square_gradient,
                                                                           m.opt.memory.mean_square)):
                if leaves is None or m.waiting:
                    assert tree is None
                else:
                    assert ref.tree_bytes(tree) == [a.tobytes() for a in leaves]
        if m.deltas is None:
            assert self.opt.delta is None
        else:
            assert ref.tree_bytes(self.opt.delta) == [d.tobytes() for d in m.deltas]
        self._check_convergence()

    def _check_convergence(self):
        m = self.model
        if not m.known:
            assert self.opt.check_convergence() is False
            return
        if not m.inplace:  # paysage's own expression, exactly
            value = paysage_rms(ref.unflatten(self.params, m.last))
            assert self.opt.check_convergence() == (value <= m.tolerance)
            return
        # fused double sums: compared away from the boundary (their order is the kernel's)
        value = ref.rms_of_deltas(m.last, N_RMS)
        if abs(value - m.tolerance) > 1e-6 * value:
            assert self.opt.check_convergence() == (value <= m.tolerance)


TestOptimizerMachine = OptimizerMachine.TestCase
TestOptimizerMachine.settings = settings(max_examples=50, stateful_step_count=30, deadline=None)


# -- fusedopt.optim (issue 22): the same kind of machine against optim_reference.Reference --------
OPTIM_KINDS = {
    "sgd": ("SGD", {"momentum": 0.9, "nesterov": True}),
    "adam": ("Adam", {"amsgrad": True, "weight_decay": 0.1}),
    "adamw": ("AdamW", {}),
    "rmsprop": ("RMSprop", {"centered": True, "momentum": 0.3}),
    "adagrad": ("Adagrad", {"initial_accumulator_value": 0.5, "lr_decay": 0.1}),
    "lion": ("Lion", {"weight_decay": 0.1}),
    "nadam": ("NAdam", {"weight_decay": 0.1, "decoupled_weight_decay": True}),
    "radam": ("RAdam", {"weight_decay": 0.1, "betas": (0.5, 0.9)}),
    "adamax": ("Adamax", {"weight_decay": 0.1}),
    "adadelta": ("Adadelta", {"weight_decay": 0.1}),
    "asgd": ("ASGD", {"t0": 2, "lambd": 0.01}),
    "rprop": ("Rprop", {"step_sizes": (1e-3, 0.5)}),
}
OPTIM_LR = 0.05


class OptimMachine(RuleBasedStateMachine):
    """Steps (also with the optimizer's own state as the gradient, read as a copy), refused steps,
    state_dict/load_state_dict (directly and through np.savez's form), deepcopy and pickle, on a
    fusedopt.optim optimizer and on the NumPy reference: after every rule both agree bit for bit."""

    @initialize(kind=st.sampled_from(sorted(OPTIM_KINDS)), seed=st.integers(0, 2 ** 16))
    def start(self, kind, seed):
        from fusedopt import optim
        import optim_reference
        name, hyper = OPTIM_KINDS[kind]
        self.rng = np.random.default_rng(seed)
        self.params = [self.rng.standard_normal((3, 5)).astype(np.float32), self.rng.standard_normal(7),
                       self.rng.standard_normal(40).astype(np.float32)]
        self.ref_params = [p.copy() for p in self.params]
        self.opt = getattr(optim, name)(lr=OPTIM_LR, **hyper)
        self.ref = optim_reference.Reference(name, lr=OPTIM_LR, **hyper)
        self.check_finite = False

    def _grads(self):
        return [self.rng.standard_normal(p.shape).astype(p.dtype) for p in self.params]

    @rule()
    def step(self):
        grads = self._grads()
        self.opt.step(self.params, grads)
        self.ref.step(self.ref_params, grads)

    def _state_is_small(self):
        """Not while loaded state waits for a tree, nor once the state is large: fed back as its own
        gradient (Adagrad's sum += sum * sum) it would overflow within a few steps."""
        slots = self.opt.state_arrays()
        return bool(slots) and all(np.abs(a).max() < 1e3 for leaves in slots.values() for a in leaves)

    @precondition(lambda self: self._state_is_small())
    @rule(data=st.data())
    def step_with_own_state_as_gradient(self, data):
        slot = data.draw(st.sampled_from(self.ref.slot_names()))
        self.opt.step(self.params, self.opt.state_arrays()[slot])
        self.ref.step(self.ref_params, [s[slot].copy() for s in self.ref.state])

    @rule(how=st.sampled_from(["shape", "dtype", "nan", "readonly", "own state", "overlapping params"]))
    def refused_step(self, how):
        grads, params = self._grads(), list(self.params)
        if how == "shape":
            grads[2] = grads[2][:-1]
        elif how == "dtype":
            grads[1] = grads[1].astype(np.float32)
        elif how == "nan":
            if not self.check_finite:
                return
            grads[0][1, 2] = np.nan
        elif how == "readonly":
            params[1] = params[1].copy()
            params[1].flags.writeable = False
        elif how == "own state":
            slots = self.opt.state_arrays()
            if not slots:
                return
            params[2] = slots[sorted(slots)[0]][2]
        else:
            params[0] = params[2][:15].reshape(3, 5)
        before = self.opt.state_dict()
        with pytest.raises((TypeError, ValueError, FloatingPointError)):
            self.opt.step(params, grads)
        after = self.opt.state_dict()
        assert before.keys() == after.keys()
        for key in before:
            assert np.array_equal(before[key], after[key]), key

    @rule(finite=st.booleans())
    def set_check_finite(self, finite):
        self.opt.check_finite = self.check_finite = finite

    @rule(how=st.sampled_from(["dict", "savez", "deepcopy", "pickle"]))
    def reload(self, how):
        if how == "dict":
            fresh = type(self.opt)(lr=1.0)
            fresh.load_state_dict(self.opt.state_dict())
        elif how == "savez":
            import io
            buf = io.BytesIO()
            np.savez(buf, **self.opt.state_dict())
            buf.seek(0)
            fresh = type(self.opt)(lr=1.0)
            fresh.load_state_dict(dict(np.load(buf)))
        elif how == "deepcopy":
            fresh = copy.deepcopy(self.opt)
        else:
            fresh = pickle.loads(pickle.dumps(self.opt))
        self.opt = fresh

    @invariant()
    def agree(self):
        if not hasattr(self, "opt"):
            return
        for p, q in zip(self.params, self.ref_params):
            assert p.tobytes() == q.tobytes()
        assert self.opt.step_count == self.ref.t
        assert self.opt.check_finite == self.check_finite
        if self.ref.state is None:
            return
        slots = self.opt.state_arrays()
        if not slots:  # loaded, waiting for the next step's tree
            slots = {name: [self.opt.state_dict()[f"{name}.{i}"] for i in range(len(self.params))]
                     for name in self.ref.slot_names()}
        assert sorted(slots) == sorted(self.ref.slot_names())
        for name, leaves in slots.items():
            assert [a.tobytes() for a in leaves] == [s[name].tobytes() for s in self.ref.state], name


TestOptimMachine = OptimMachine.TestCase
TestOptimMachine.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)


def test_the_default_hypothesis_profile_is_deterministic():
    """CI's runs depend only on the code: examples derived from each test, no example database."""
    import os
    if os.environ.get("HYPOTHESIS_PROFILE", "deterministic") != "deterministic":
        pytest.skip("another profile was chosen")
    assert settings.default.derandomize and settings.default.database is None
