"""paysage's edges (issue 12, item 9): lr_, an Optimizer subclass written the way paysage's own
are, GradientMemory.mixer_/square_mixer_, check_convergence giving paysage's own answer on the
paysage path, and pickle/deepcopy as deep as stepping goes."""
import copy
import math
import pickle

import numpy as np
import pytest

from fusedopt import optimizers, schedules

import reference as ref


class PaysageStyleMomentum(optimizers.Optimizer):
    """Momentum as a paysage user would subclass it: its own update on the memory and lr_."""

    def __init__(self, stepsize=0.001, momentum=0.9, tolerance=1e-7):
        super().__init__(stepsize, tolerance)
        self.memory = optimizers.GradientMemory(mean_weight=momentum, mean_square_weight=0)

    def reset(self):
        self.memory.reset()

    def update(self, model, grad):
        self.memory.update(grad)
        self.delta = copy.deepcopy(self.memory.mean_gradient)
        for leaf in ref.flatten(self.delta):
            self.lr_(leaf)
        model.parameter_update(self.delta)


class PaysageStyleGradient(optimizers.Optimizer):
    """No memory at all, as paysage's Gradient."""

    def update(self, model, grad):
        self.delta = copy.deepcopy(grad)
        for leaf in ref.flatten(self.delta):
            self.lr_(leaf)
        model.parameter_update(self.delta)


def paysage_rms(delta):
    """paysage's grad_rms written out: per leaf a float32 np.mean of the squares, added from 0 per
    namedtuple first, over len(layers) + len(weights)."""
    total = 0
    for part in (delta.layers, delta.weights):
        for group in part:
            for sub in group:
                total += sum(np.mean(np.square(x)) for x in sub)
    return math.sqrt(total / (len(delta.layers) + len(delta.weights)))  # math's, as paysage's


def _schedule():
    return schedules.ExponentialDecay(initial=0.05, coefficient=0.9)


@pytest.mark.parametrize("subclass,builtin", [(PaysageStyleMomentum, optimizers.Momentum),
                                              (PaysageStyleGradient, optimizers.Gradient)])
def test_a_paysage_style_subclass_trains_as_the_builtin(subclass, builtin, rng):
    params = ref.random_tree("paysage", rng, "mixed")
    grads = [ref.like_tree(params, rng) for _ in range(8)]
    args = {"momentum": 0.8} if builtin is optimizers.Momentum else {}
    mine, theirs = subclass(_schedule(), tolerance=1e-3, **args), builtin(_schedule(), tolerance=1e-3, **args)
    a, b = ref.MockModel(params), ref.MockModel(params)
    for i, g in enumerate(grads):
        if i % 3 == 0:
            mine.update_lr()
            theirs.update_lr()
        mine.update(a, g)
        theirs.update(b, g)
        assert ref.tree_bytes(a.params) == ref.tree_bytes(b.params)
        assert ref.tree_bytes(mine.delta) == ref.tree_bytes(theirs.delta)
        for tolerance in (paysage_rms(mine.delta), math.nextafter(paysage_rms(mine.delta), 0)):
            mine.tolerance = theirs.tolerance = float(tolerance)
            assert mine.check_convergence() == theirs.check_convergence() == (paysage_rms(mine.delta) <= tolerance)
    clone = pickle.loads(pickle.dumps(mine))
    assert type(clone) is subclass and ref.tree_bytes(clone.delta) == ref.tree_bytes(mine.delta)
    assert clone.check_convergence() == mine.check_convergence()
    mine.reset()
    theirs.reset()
    if builtin is optimizers.Momentum:
        assert mine.memory.mean_gradient is None
    restored = subclass()
    restored.load_state_dict(theirs.state_dict() | {"kind": subclass.__name__})
    assert restored.lr == theirs.lr


def test_lr_is_the_signed_rate_as_a_function(rng):
    opt = optimizers.ADAM(schedules.Constant(initial=0.3))
    x = rng.standard_normal(5).astype(np.float32)
    y = x.copy()
    opt.lr_(y)  # before update_lr(): stepsize.value
    assert y.tobytes() == (np.float32(0.3) * x).tobytes()
    opt.update_lr()
    opt.ascent = True
    z = x.astype(np.float64)
    opt.lr_(z)
    assert z.tobytes() == (np.float64(np.float32(-0.3)) * x.astype(np.float64)).tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mixers_follow_the_documented_order(dtype, rng):
    mem = optimizers.GradientMemory(0.85, 0.995)
    x, y = rng.standard_normal(101).astype(dtype), rng.standard_normal(101).astype(dtype)
    w, w2, one = dtype(np.float32(0.85)), dtype(np.float32(0.995)), dtype(1)
    m, v = x.copy(), x.copy()
    mem.mixer_(m, y)
    mem.square_mixer_(v, y)
    assert m.tobytes() == ((w * x) + ((one - w) * y)).tobytes()
    assert v.tobytes() == ((w2 * x) + (((one - w2) * y) * y)).tobytes()


def test_mixers_equal_paysages_own(rng):
    p_opt = pytest.importorskip("paysage.optimizers")
    ours, theirs = optimizers.GradientMemory(0.7, 0.9), p_opt.GradientMemory(0.7, 0.9)
    x, y = rng.standard_normal(257).astype(np.float32), rng.standard_normal(257).astype(np.float32)
    a, b, c, d = x.copy(), x.copy(), x.copy(), x.copy()
    ours.mixer_(a, y)
    theirs.mixer_(b, y)
    ours.square_mixer_(c, y)
    theirs.square_mixer_(d, y)
    assert a.tobytes() == b.tobytes() and c.tobytes() == d.tobytes()


@pytest.mark.parametrize("kind", ["Gradient", "Momentum", "RMSProp", "ADAM"])
def test_check_convergence_on_the_paysage_path_is_paysages_answer(kind, rng):
    """At the tolerance boundary float32 and double sums disagree; paysage's answer wins."""
    gu = pytest.importorskip("paysage.models.gradient_util")
    for seed in range(12):
        local = np.random.default_rng(seed)
        params = ref.random_tree("paysage", local, "float32", scale=3.0)
        opt, model = getattr(optimizers, kind)(0.01), ref.MockModel(params)
        for _ in range(2):
            opt.update(model, ref.like_tree(params, local, scale=float(local.uniform(0.5, 5))))
        exact = gu.grad_rms(opt.delta)  # paysage's own function on fusedopt's delta
        assert type(exact) is float and exact == paysage_rms(opt.delta)
        opt.tolerance = float(exact)
        assert opt.check_convergence() is True
        opt.tolerance = math.nextafter(exact, 0)
        assert opt.check_convergence() is False


def _nested(depth, leaf):
    tree = leaf
    for i in range(depth):
        tree = [tree] if i % 3 == 0 else ({"k": tree} if i % 3 == 1 else (tree,))
    return tree


def _leaves(tree):
    """Leaves without recursion (reference.flatten would recurse 1000 levels deep)."""
    out, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, np.ndarray):
            out.append(node)
        else:
            stack.extend(reversed(list(node.values() if isinstance(node, dict) else node)))
    return out


class DeepModel:
    """A model of one array nested deep: p = p - delta."""

    def __init__(self, leaf):
        self.leaf = leaf

    def parameter_update(self, delta):
        (d,) = _leaves(delta)
        self.leaf -= d


def _fingerprint(opt):
    state = opt.state_dict()
    return [(k, v.tobytes() if isinstance(v, np.ndarray) else repr(v)) for k, v in sorted(state.items())]


@pytest.mark.parametrize("path", ["inplace", "paysage"])
def test_pickle_and_deepcopy_as_deep_as_stepping(path, rng):
    depth = 1000  # containers around the leaf: the deepest a Plan takes (1001 is refused)
    p0, g = rng.standard_normal(7).astype(np.float32), rng.standard_normal(7).astype(np.float32)
    grad = _nested(depth, g)
    opt = optimizers.ADAM(0.01, keep_delta=True)
    targets = []

    def target():
        leaf = p0.copy()
        targets.append(leaf)
        return DeepModel(leaf) if path == "paysage" else _nested(depth, leaf)
    mine = target()
    opt.update(mine, grad)
    opt.update(mine, grad)
    for clone in (pickle.loads(pickle.dumps(opt)), copy.deepcopy(opt)):
        assert _fingerprint(clone) == _fingerprint(opt)
        assert [a.tobytes() for a in _leaves(clone.delta)] == [a.tobytes() for a in _leaves(opt.delta)]
        assert clone.check_convergence() == opt.check_convergence()
        theirs = target()
        theirs_leaf = targets[-1]
        theirs_leaf[...] = targets[0]
        clone.update(theirs, grad)
    opt.update(mine, grad)
    assert targets[1].tobytes() == targets[2].tobytes() == targets[0].tobytes()
    mem = copy.deepcopy(opt.memory)
    assert [a.tobytes() for a in _leaves(mem.mean_square_gradient)] == \
        [a.tobytes() for a in _leaves(opt.memory.mean_square_gradient)]
