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
