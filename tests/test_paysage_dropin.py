"""Drop-in proof against the real paysage 0.2.1.

Each case trains a real paysage RBM with paysage's own ``fit.SGD`` loop twice
from the same seed: once with ``paysage.optimizers`` / ``paysage.schedules``,
once with ``fusedopt.optimizers`` / ``fusedopt.schedules``. Everything that
training produced must be bit-identical: the model parameters, the optimizer's
moments and last delta, the schedule's state and the epoch at which
``check_convergence`` stopped training.

paysage is installed without its torchvision requirement (its numpy backend
never imports it):
    pip install --no-deps paysage==0.2.1
    pip install numexpr pandas cytoolz matplotlib      # with MPLBACKEND=Agg
"""
import copy
import importlib.metadata

import numpy as np
import pytest

paysage = pytest.importorskip(
    "paysage",
    reason="paysage is not installed; install it with "
           "'pip install --no-deps paysage==0.2.1' plus numexpr pandas cytoolz matplotlib")
if importlib.metadata.version("paysage") != "0.2.1":
    pytest.skip(f"these tests pin paysage 0.2.1, found {importlib.metadata.version('paysage')}",
                allow_module_level=True)

from paysage import backends as be  # noqa: E402  (after the skip checks on purpose)
from paysage import batch, fit, layers  # noqa: E402
from paysage import optimizers as p_opt  # noqa: E402
from paysage import schedules as p_sched  # noqa: E402
from paysage.models import BoltzmannMachine  # noqa: E402

from fusedopt import _core  # noqa: E402
from fusedopt import optimizers as f_opt  # noqa: E402
from fusedopt import schedules as f_sched  # noqa: E402

SEED = 137           # paysage's sampling and initialization draw from numpy's global RNG
NUM_ROWS, NUM_VISIBLE, NUM_HIDDEN, BATCH_SIZE = 160, 24, 10, 20  # 6 training batches an epoch


@pytest.fixture(autouse=True)
def _restore_global_rng():
    """paysage seeds numpy's global RNG; give other tests their state back."""
    state = np.random.get_state()
    yield
    np.random.set_state(state)


# -- synthetic data and one training run ---------------------------------------------

def _data(visible):
    """Training data made here (its own RandomState, so the global RNG is untouched)."""
    rng = np.random.RandomState(2024)
    if visible == "bernoulli":
        return (rng.rand(NUM_ROWS, NUM_VISIBLE) < 0.3).astype(np.float32)
    return (rng.randn(NUM_ROWS, NUM_VISIBLE) * 1.5 + 0.5).astype(np.float32)


def _train(opt_mod, sched_mod, visible, method, phases, tolerance=1e-7, on_gradient=None):
    """Seed, build, and train an RBM with paysage's fit.SGD; return (model, optimizer).

    phases: list of (optimizer or schedule factory, epochs). The first phase's
    factory builds the optimizer from the modules; each later one builds a new
    schedule that is assigned to ``optimizer.stepsize`` after ``optimizer.reset()``.
    on_gradient: optional callback seeing every gradient the loop hands the optimizer.
    """
    be.set_seed(SEED)
    data = batch.in_memory_batch(_data(visible), BATCH_SIZE, train_fraction=0.75)
    vis_layer = layers.BernoulliLayer(NUM_VISIBLE) if visible == "bernoulli" else layers.GaussianLayer(NUM_VISIBLE)
    model = BoltzmannMachine([vis_layer, layers.BernoulliLayer(NUM_HIDDEN)])
    model.initialize(data, "hinton")

    def grad_method(vdata, model_, positive, negative):
        grad = method(vdata, model_, positive, negative)
        if on_gradient is not None:
            on_gradient(grad)
        return grad

    sgd = fit.SGD(model, data)
    (make_opt, epochs), *later = phases
    optimizer = make_opt(opt_mod, sched_mod, tolerance)
    sgd.train(optimizer, epochs, method=grad_method, mcsteps=1, verbose=False)
    for make_schedule, epochs in later:
        optimizer.reset()
        optimizer.stepsize = make_schedule(sched_mod)
        sgd.train(optimizer, epochs, method=grad_method, mcsteps=1, verbose=False)
    return model, optimizer


# -- comparing trees bit for bit -------------------------------------------------------

def _leaves(tree, path=""):
    """(path, array) for every array of a nested tuple/list/namedtuple tree."""
    if isinstance(tree, np.ndarray):
        return [(path, tree)]
    if hasattr(tree, "_fields"):
        return [leaf for name, sub in zip(tree._fields, tree) for leaf in _leaves(sub, f"{path}.{name}")]
    if isinstance(tree, (list, tuple)):
        return [leaf for i, sub in enumerate(tree) for leaf in _leaves(sub, f"{path}[{i}]")]
    raise TypeError(f"unexpected {type(tree).__name__} at {path}")


def _model_params(model):
    return ([layer.params for layer in model.layers], [conn.weights.params for conn in model.connections])


def _first_difference(a, b):
    """A readable account of where two float arrays first differ."""
    idx = tuple(int(i) for i in np.argwhere(~((a == b) | (np.isnan(a) & np.isnan(b))))[0])
    x, y = a[idx], b[idx]
    ulps = abs(int(np.asarray(x).view(np.int32)) - int(np.asarray(y).view(np.int32))) if a.dtype == np.float32 else "?"
    return f"first difference at index {idx}: paysage {x!r}, fusedopt {y!r} ({ulps} ulp)"


def _assert_trees_identical(expected, actual, what):
    if expected is None or actual is None:
        assert expected is None and actual is None, f"{what}: paysage {expected!r}, fusedopt {actual!r}"
        return
    exp, act = _leaves(expected), _leaves(actual)
    assert [p for p, _ in exp] == [p for p, _ in act], f"{what}: tree structures differ"
    for (path, a), (_, b) in zip(exp, act):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what}{path}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        assert np.array_equal(a, b), f"{what}{path}: {_first_difference(a, b)}"


def _assert_same_training(ref, fused):
    (ref_model, ref_opt), (fused_model, fused_opt) = ref, fused
    _assert_trees_identical(_model_params(ref_model), _model_params(fused_model), "model params")
    assert type(fused_opt.delta) is type(ref_opt.delta)  # paysage's own Gradient namedtuple comes back
    _assert_trees_identical(ref_opt.delta, fused_opt.delta, "last delta")
    if hasattr(ref_opt, "memory"):
        _assert_trees_identical(ref_opt.memory.mean_gradient, fused_opt.memory.mean_gradient, "mean_gradient")
        _assert_trees_identical(ref_opt.memory.mean_square_gradient, fused_opt.memory.mean_square_gradient,
                                "mean_square_gradient")
    ref_cfg, fused_cfg = ref_opt.stepsize.get_config(), fused_opt.stepsize.get_config()
    assert ref_cfg[0] == fused_cfg[0]
    assert ref_cfg[1]["value"] == fused_cfg[1]["value"], "schedules advanced differently"


# -- the cases -------------------------------------------------------------------------
# Each optimizer trains 3 epochs on one schedule, then reset() and 3 epochs on another
# schedule, so all five schedules, update_lr's advance and the reset all matter.

def _gradient(o, s, tol):
    return o.Gradient(stepsize=s.ExponentialDecay(initial=0.05, coefficient=0.7), tolerance=tol)


def _momentum(o, s, tol):
    return o.Momentum(stepsize=s.Step(initial=0.02, final=0.005, steps=0), momentum=0.8, tolerance=tol)


def _rmsprop(o, s, tol):
    return o.RMSProp(stepsize=s.PowerLawDecay(initial=0.01, coefficient=40.0), mean_square_weight=0.85,
                     tolerance=tol)


def _adam(o, s, tol):
    return o.ADAM(stepsize=s.Linear(initial=0.01, delta=0.004, minval=0.001), tolerance=tol)


PHASES = {
    "Gradient": [(_gradient, 3), (lambda s: s.Constant(initial=0.01), 3)],
    "Momentum": [(_momentum, 3), (lambda s: s.Linear(initial=0.01, delta=0.002), 3)],
    "RMSProp": [(_rmsprop, 3), (lambda s: s.Step(initial=0.004, final=0.001, steps=0), 3)],
    "ADAM": [(_adam, 3), (lambda s: s.ExponentialDecay(initial=0.005, coefficient=0.5), 3)],
}
MODELS = {"bernoulli": fit.pcd, "gaussian": fit.cd}  # the visible layer and the fit method it trains with


@pytest.mark.parametrize("visible", sorted(MODELS))
@pytest.mark.parametrize("name", list(PHASES))
def test_training_is_bit_identical(name, visible):
    ref = _train(p_opt, p_sched, visible, MODELS[visible], PHASES[name])
    fused = _train(f_opt, f_sched, visible, MODELS[visible], PHASES[name])
    assert isinstance(fused[1], getattr(f_opt, name))
    _assert_same_training(ref, fused)
    # Training did move the parameters (the comparison is not between two untouched models).
    untrained = _train(f_opt, f_sched, visible, MODELS[visible], [(PHASES[name][0][0], 0)])
    moved = [not np.array_equal(a, b) for (_, a), (_, b) in
             zip(_leaves(_model_params(untrained[0])), _leaves(_model_params(fused[0])))]
    assert all(moved)


@pytest.mark.parametrize("level", _core.simd_levels_supported())
def test_every_simd_level_trains_identically(level):
    """The 298-element model (24x10 weights, 2x24 + 10 biases) runs serially through SIMD bodies and tails."""
    before = _core.simd_level()
    _core._set_simd_level(level)
    try:
        fused = _train(f_opt, f_sched, "gaussian", fit.cd, PHASES["ADAM"])
    finally:
        _core._set_simd_level(before)
    ref = _train(p_opt, p_sched, "gaussian", fit.cd, PHASES["ADAM"])
    _assert_same_training(ref, fused)


# Convergence: with a step size decaying tenfold per epoch the rms of delta falls about
# tenfold per epoch, so tolerance 1e-3 stops training well inside the 6 allowed epochs.
# The epoch it stops at was measured once with paysage (its rms values are at least 1.5x
# away from the tolerance on either side, far from any rounding question).
STOP_EPOCH = {"Gradient": 2, "Momentum": 2, "RMSProp": 3, "ADAM": 3}


@pytest.mark.parametrize("name", list(STOP_EPOCH))
def test_check_convergence_stops_at_the_same_epoch(name):
    make = {"Gradient": lambda o, s, tol: o.Gradient(s.ExponentialDecay(0.05, 0.1), tol),
            "Momentum": lambda o, s, tol: o.Momentum(s.ExponentialDecay(0.05, 0.1), 0.9, tol),
            "RMSProp": lambda o, s, tol: o.RMSProp(s.ExponentialDecay(0.05, 0.1), 0.9, tol),
            "ADAM": lambda o, s, tol: o.ADAM(s.ExponentialDecay(0.05, 0.1), 0.9, 0.999, tol)}[name]
    ref = _train(p_opt, p_sched, "bernoulli", fit.pcd, [(make, 6)], tolerance=1e-3)
    fused = _train(f_opt, f_sched, "bernoulli", fit.pcd, [(make, 6)], tolerance=1e-3)
    _assert_same_training(ref, fused)
    # The schedule advanced once per epoch trained: its value tells how many epochs ran.
    expected_value = 0.05
    for _ in range(STOP_EPOCH[name]):
        expected_value *= 0.1
    assert fused[1].stepsize.value == expected_value
    assert fused[1].check_convergence() and ref[1].check_convergence()


def _snapshot_gradients(store):
    """on_gradient callback: keep each gradient and a deep copy of it as handed over."""
    return lambda grad: store.append((grad, copy.deepcopy(grad)))


@pytest.mark.parametrize("name", list(PHASES))
def test_fusedopt_never_modifies_nor_keeps_the_gradient(name):
    seen = []
    _, optimizer = _train(f_opt, f_sched, "bernoulli", fit.pcd, PHASES[name], on_gradient=_snapshot_gradients(seen))
    assert len(seen) == 6 * 6  # 6 epochs of 6 batches
    for step, (grad, snapshot) in enumerate(seen):
        _assert_trees_identical(snapshot, grad, f"gradient of step {step}")
    kept = []
    if hasattr(optimizer, "memory"):
        for tree in (optimizer.memory.mean_gradient, optimizer.memory.mean_square_gradient):
            kept += [a for _, a in _leaves(tree)] if tree is not None else []
    kept += [a for _, a in _leaves(optimizer.delta)]
    for grad, _ in seen:
        for _, g in _leaves(grad):
            assert not any(np.shares_memory(g, a) for a in kept)


def test_paysage_itself_mixes_into_the_first_gradient():
    """The difference the README documents: paysage's first update_mean keeps the caller's
    gradient as its mean, and later steps mix into those arrays in place."""
    seen = []
    _train(p_opt, p_sched, "bernoulli", fit.pcd, [(_adam, 1)], on_gradient=_snapshot_gradients(seen))
    first, snapshot = seen[0]
    assert not np.array_equal(first.weights[0][0].matrix, snapshot.weights[0][0].matrix)
    later, later_snapshot = seen[-1]
    assert np.array_equal(later.weights[0][0].matrix, later_snapshot.weights[0][0].matrix)
