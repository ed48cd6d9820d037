"""The paysage family's native step reads and writes Python only through the interface
declared in fusedopt._paysage.native_step: the bindings read no private attribute, and a
schedule handed over by any path (setter, its value, update_lr, pickling, copies,
load_state_dict, a new memory, a subclass) steps with the rate of docs/semantics.md, bit for
bit against the NumPy reference (tests/reference.py)."""
import copy
import pathlib
import pickle
import re

import numpy as np
import pytest

from fusedopt import _core, optimizers, schedules
from fusedopt._paysage import native_step
from fusedopt._paysage import state as _state
from paysage_cases import CLASSES, KINDS
from reference import RefOptimizer, Runner, constant_rates, random_tree

f32 = np.float32
BINDINGS = pathlib.Path(__file__).resolve().parent.parent / "csrc" / "bindings"
# The wheel's test run (tools/build_wheel.sh) copies tests/ without the sources.
needs_sources = pytest.mark.skipif(not BINDINGS.is_dir(), reason="the C++ sources are not beside the tests")

# Every way C++ in the bindings names a Python attribute.
_ATTRIBUTE_READS = re.compile(r'(?:interned|\.attr|hasattr\([^,]*,|HasAttrString\([^,]*,|GetAttrString\([^,]*,|CallMethod\w*\([^,]*,)'
                              r'\s*\(?\s*"(\w+)"')


def _names_read(path):
    return set(_ATTRIBUTE_READS.findall(path.read_text()))


def _is_private(name):
    # Dunders are Python's protocol; a namedtuple's _fields is its documented public API.
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__")) and name != "_fields"


@needs_sources
def test_no_binding_names_a_private_attribute():
    files = sorted(BINDINGS.glob("*.cpp")) + sorted(BINDINGS.glob("*.h"))
    assert any("interned(" in p.read_text() for p in files)  # the pattern sees the step's reads
    private = {p.name: sorted(n for n in _names_read(p) if _is_private(n)) for p in files}
    assert {k: v for k, v in private.items() if v} == {}


@needs_sources
def test_the_native_step_names_only_what_the_interface_declares():
    declared = set(native_step.READS) | set(native_step.WRITES) | set(native_step.OTHER_READS)
    assert _names_read(BINDINGS / "paysage_state.cpp") <= declared


class _Spy(optimizers.ADAM):
    """Records every attribute looked up on it while `seen` is a list; its settings are plain
    class attributes once deleted from the instance."""
    seen = None
    lr, ascent, check_finite, keep_delta = None, False, False, False

    def __getattribute__(self, name):
        seen = object.__getattribute__(self, "seen")
        if seen is not None:
            seen.append(name)
        return super().__getattribute__(name)


def test_the_native_step_looks_up_only_declared_attributes(rng):
    opt = _Spy(stepsize=0.5)
    for name in ("ascent", "check_finite", "keep_delta", "lr"):
        del opt.__dict__[name]  # now class attributes: the step must look them up
    mem, schedule = opt.memory, opt.stepsize
    del opt.__dict__["_stepsize"]  # handed over, never read from the optimizer
    p, g = rng.standard_normal(9).astype(f32), rng.standard_normal(9).astype(f32)
    ref = RefOptimizer("adam", constant_rates(), unstepped_value=0.5)
    want = p - ref.step([g])[0]
    opt.seen = []
    mem._update(opt, optimizers.Rule.ADAM, schedule, p, g)
    seen = object.__getattribute__(opt, "seen")
    opt.seen = None
    assert np.array_equal(p, want)
    assert set(seen) <= set(native_step.READS) | {"__dict__"}
    assert {"lr", "ascent", "check_finite", "keep_delta"} <= set(seen)
    assert opt.step_count == 1


def test_the_rule_is_the_one_handed_over(rng):
    # The same optimizer object stepped by another rule: the argument decides, per call.
    opt = optimizers.Momentum(stepsize=0.5, momentum=0.0)
    p, g = rng.standard_normal(6).astype(f32), rng.standard_normal(6).astype(f32)
    want = p - (f32(0.5) * g)
    opt.memory._update(opt, int(optimizers.Rule.GRADIENT), opt.stepsize, p, g)
    assert np.array_equal(p, want)
    with pytest.raises(ValueError, match="no rule has the value 99"):
        opt.memory._update(opt, 99, opt.stepsize, p, g)
    assert np.array_equal(p, want) and opt.step_count == 1


def test_unset_rate_keys_what_it_may_cache():
    value = 0.3
    assert native_step.unset_rate(schedules.Constant(initial=value)) == (value, float(f32(value)))
    array = schedules.Constant(initial=0.5)
    array.value = np.array(0.7)
    assert native_step.unset_rate(array) == (None, float(f32(0.7)))  # read again every step
    with pytest.raises(TypeError, match="call update_lr"):
        native_step.unset_rate(object())


# -- a schedule handed over by every path ------------------------------------------------------

def _by_setter(run, rate):
    run.opt.stepsize = schedules.Constant(initial=rate)


def _by_value(run, rate):
    run.opt.stepsize.value = rate  # the same schedule object, a new value object


def _by_array_value(run, rate):
    run.opt.stepsize.value = np.array(rate * 2)
    run.ref.unstepped_value = rate * 2
    run.step(run.grad())
    run.opt.stepsize.value[...] = rate  # changed in place: must be read again


def _by_update_lr(run, rate):
    run.opt.stepsize = schedules.Constant(initial=rate)
    run.opt.update_lr()
    run.ref.rates = constant_rates(rate)
    run.ref.update_lr()


def _by_pickle(run, rate):
    run.opt = pickle.loads(pickle.dumps(run.opt))
    run.opt.stepsize = schedules.Constant(initial=rate)


def _by_deepcopy(run, rate):
    run.opt = copy.deepcopy(run.opt)
    run.opt.stepsize.value = rate


def _by_copy(run, rate):
    # A shallow copy shares the memory (and its native state) with the original, whose
    # schedule keeps its own value: each step uses its optimizer's.
    original, run.opt = run.opt, copy.copy(run.opt)
    run.opt.stepsize = schedules.Constant(initial=rate)
    original.stepsize.value = 0.125
    assert original._memory is run.opt._memory


def _by_load_state_dict(run, rate):
    state = {**run.opt.state_dict(), **_state.schedule_entries(schedules.Constant(initial=rate))}
    run.opt.load_state_dict(state)


def _by_new_memory(run, rate):
    run.opt._set_memory(pickle.loads(pickle.dumps(run.opt._memory)))
    run.opt.stepsize.value = rate


def _by_subclass(run, rate):
    class Scheduled(type(run.opt)):
        """A user's subclass that keeps its schedule in its own attribute and brings its update."""

        def __init__(self, schedule):
            super().__init__(stepsize=0.5)
            self.schedule = schedule

        def update(self, model, grad):
            self.stepsize = self.schedule
            super().update(model, grad)

    state = run.opt.state_dict()
    run.opt = Scheduled(schedules.Constant(initial=rate))
    run.opt.load_state_dict({**state, "kind": "Scheduled"})  # its schedule: 0.5, until the step sets its own


PATHS = {f.__name__[4:]: f for f in (_by_setter, _by_value, _by_array_value, _by_update_lr, _by_pickle,
                                     _by_deepcopy, _by_copy, _by_load_state_dict, _by_new_memory, _by_subclass)}


@pytest.mark.parametrize("path", ["paysage", "inplace"])
@pytest.mark.parametrize("how", PATHS)
@pytest.mark.parametrize("kind", KINDS)
def test_a_schedule_handed_over_steps_with_its_rate(kind, how, path, rng):
    params = random_tree("dict", rng, "float32")
    run = Runner(CLASSES[kind](stepsize=0.5), RefOptimizer(kind, constant_rates(), unstepped_value=0.5), path, params)
    run.grad = lambda: random_tree("dict", rng, "float32")
    for _ in range(2):  # the first rate is cached in the native state
        run.step(run.grad())
    PATHS[how](run, 0.25)
    run.ref.unstepped_value = 0.25
    for _ in range(2):
        run.step(run.grad())
