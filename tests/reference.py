"""Independent references the tests compare fusedopt against (docs/semantics.md: trees, operation order, schedules).

Nothing here imports fusedopt. Three parts:

* trees: flatten / structure / map helpers, paysage-like namedtuples, a mock
  paysage model and builders of random test trees;
* optimizers: docs/semantics.md ("Optimizers") on a flat list of leaf arrays, in plain NumPy.
  Fed arrays of the leaf's dtype it follows the operation order of docs/semantics.md exactly
  (float32 scalars for float32 leaves, float64(float32(w)) for float64 leaves),
  so fusedopt must match it with np.array_equal.  Fed float64 copies of float32
  leaves it evaluates the same formulas in float64, which checks the formulas
  themselves (compared with a tolerance);
* schedules: docs/semantics.md ("Rates and schedules") as generators of float32 rates.
"""
import collections
import math

import numpy as np

EPS = 2.0 ** -23  # float32 machine epsilon, used for both dtypes

# ----------------------------------------------------------------------------- trees

Gradient = collections.namedtuple("Gradient", ["layers", "weights"])
ParamsBernoulli = collections.namedtuple("ParamsBernoulli", ["loc"])
ParamsGaussian = collections.namedtuple("ParamsGaussian", ["loc", "log_var"])
ParamsWeights = collections.namedtuple("ParamsWeights", ["matrix"])


def flatten(tree):
    """Leaves depth first; dict entries in sorted key order."""
    if isinstance(tree, dict):
        return [leaf for key in sorted(tree) for leaf in flatten(tree[key])]
    if isinstance(tree, (list, tuple)):
        return [leaf for child in tree for leaf in flatten(child)]
    return [tree]


def structure(tree):
    """Exact container types, dict keys, and each leaf's type, shape and dtype."""
    if isinstance(tree, dict):
        return (type(tree), tuple((key, structure(tree[key])) for key in sorted(tree)))
    if isinstance(tree, (list, tuple)):
        return (type(tree), tuple(structure(child) for child in tree))
    return ("leaf", type(tree), np.shape(tree), np.asarray(tree).dtype.str)


def unflatten(like, leaves):
    """A tree with `like`'s containers holding `leaves` (in flatten's order)."""
    it = iter(leaves)

    def build(node):
        if isinstance(node, dict):
            children = {key: build(node[key]) for key in sorted(node)}
            return type(node)((key, children[key]) for key in node)
        if isinstance(node, (list, tuple)):
            children = [build(child) for child in node]
            if hasattr(type(node), "_fields"):
                return type(node)(*children)
            return type(node)(children)
        return next(it)

    tree = build(like)
    assert next(it, None) is None, "more leaves than the tree holds"
    return tree


def tree_map(fn, tree, *others):
    """fn applied leaf by leaf; every tree must have `tree`'s containers."""
    for other in others:
        assert container_structure(other) == container_structure(tree)
    columns = [flatten(t) for t in (tree, *others)]
    return unflatten(tree, [fn(*leaves) for leaves in zip(*columns)])


def container_structure(tree):
    """structure() without the leaves' shapes and dtypes."""
    if isinstance(tree, dict):
        return (type(tree), tuple((key, container_structure(tree[key])) for key in sorted(tree)))
    if isinstance(tree, (list, tuple)):
        return (type(tree), tuple(container_structure(child) for child in tree))
    return "leaf"


def tree_copy(tree):
    return tree_map(lambda a: np.array(a, copy=True), tree)


def tree_bytes(tree):
    """Bytes of every leaf, to prove a tree was not modified."""
    return [np.asarray(a).tobytes() for a in flatten(tree)]


class MockModel:
    """A paysage-like model: parameter_update(delta) does p = p - delta on its own tree."""

    def __init__(self, params):
        self.params = tree_copy(params)
        self.calls = 0
        self.received = None

    def parameter_update(self, delta):
        self.calls += 1
        self.received = delta
        self.params = tree_map(lambda p, d: np.asarray(p - d), self.params, delta)


TREE_KINDS = ("paysage", "dict", "list", "tuple", "array", "sizes")


def build_tree(kind, leaf):
    """A tree of the given kind whose leaves are leaf(shape, index)."""
    counter = iter(range(1000))

    def new(shape):
        return leaf(shape, next(counter))

    if kind == "paysage":  # n for check_convergence = 2 layers + 1 weights = 3, leaves = 4
        return Gradient(layers=[[ParamsBernoulli(new((17,)))], [ParamsGaussian(new((7,)), new((7,)))]],
                        weights=[[ParamsWeights(new((17, 7)))]])
    if kind == "dict":  # nested, with a 0-d and an empty leaf
        return {"b": new((3, 5)), "a": new((16,)), "c": {"scalar": new(()), "empty": new((0,))}}
    if kind == "list":
        return [new((2, 2)), new(()), new((15,))]
    if kind == "tuple":
        return (new((15,)), [new((4, 0)), new((33,))], new((1,)))
    if kind == "array":
        return new((17,))
    if kind == "sizes":  # SIMD tails around 16 float32 / 8 float64 lanes
        return [new((n,)) for n in (1, 7, 15, 16, 17, 0, 31, 33, 64, 65)]
    raise ValueError(kind)


def dtype_for(dtype, index):
    """'float32', 'float64', or 'mixed' (alternating by leaf index)."""
    if dtype == "mixed":
        return np.float32 if index % 2 == 0 else np.float64
    return np.dtype(dtype).type


def random_tree(kind, rng, dtype, scale=1.0, offset=0.0):
    """Random non-zero normal leaves (scale * N(0, 1) + offset)."""
    return build_tree(kind, lambda shape, i: np.asarray(offset + scale * rng.standard_normal(shape))
                      .astype(dtype_for(dtype, i)))


def like_tree(tree, rng, scale=1.0):
    """A random tree with tree's structure, shapes and dtypes."""
    return tree_map(lambda a: np.asarray(scale * rng.standard_normal(np.shape(a))).astype(np.asarray(a).dtype), tree)


# ----------------------------------------------------------------------------- optimizers

def _scalar(value32, like):
    """A float32 hyper-parameter as a scalar of the leaf's dtype (exact widening for float64)."""
    return np.asarray(like).dtype.type(np.float32(value32))


class RefMemory:
    """GradientMemory of docs/semantics.md, "Gradient memory", on flat lists of arrays; weights are float32 as fusedopt stores them."""

    def __init__(self, mean_weight=0.9, mean_square_weight=0.0):
        self.w = np.float32(mean_weight)
        self.w2 = np.float32(mean_square_weight)
        self.mean = None
        self.mean_square = None

    def update_mean(self, grads):
        if self.mean is None:
            self.mean = [np.array(g, copy=True) for g in grads]
            return
        new = []
        for m, g in zip(self.mean, grads):
            w, one = _scalar(self.w, g), _scalar(1, g)
            new.append(np.asarray((w * m) + ((one - w) * g)))
        self.mean = new

    def update_mean_square(self, grads):
        if self.mean_square is None:
            self.mean_square = [np.asarray(g * g) for g in grads]
            return
        new = []
        for v, g in zip(self.mean_square, grads):
            w2, one = _scalar(self.w2, g), _scalar(1, g)
            new.append(np.asarray((w2 * v) + (((one - w2) * g) * g)))
        self.mean_square = new

    def update(self, grads):
        if self.w != 0:
            self.update_mean(grads)
        if self.w2 != 0:
            self.update_mean_square(grads)

    def normalize(self, xs, unbiased=False):
        if self.mean_square is None:
            return xs
        out = []
        for x, v in zip(xs, self.mean_square):
            eps, one = _scalar(EPS, x), _scalar(1, x)
            if unbiased:
                w, w2 = _scalar(self.w, x), _scalar(self.w2, x)
                out.append(np.asarray((x / (one - w)) / np.sqrt(eps + (v / (one - w2)))))
            else:
                out.append(np.asarray(x / np.sqrt(eps + v)))
        return out

    def reset(self):
        self.mean = self.mean_square = None


# Memory weights of each optimizer (docs/semantics.md, "Optimizers"); keyword names as fusedopt's constructors.
def memory_weights(kind, **weights):
    if kind == "gradient":
        return 0.0, 0.0
    if kind == "momentum":
        return weights.get("momentum", 0.9), 0.0
    if kind == "rmsprop":
        return 0.0, weights.get("mean_square_weight", 0.9)
    if kind == "adam":
        return weights.get("mean_weight", 0.9), weights.get("mean_square_weight", 0.999)
    raise ValueError(kind)


class RefOptimizer:
    """An optimizer of docs/semantics.md on flat lists.

    rates: iterator of float32 rates (what next(stepsize) returns), consumed by
    update_lr(); before the first update_lr the rate is float32(unstepped_value).
    """

    def __init__(self, kind, rates, unstepped_value=None, ascent=False, **weights):
        self.kind = kind
        self.memory = RefMemory(*memory_weights(kind, **weights))
        self.rates = rates
        self.unstepped_value = unstepped_value
        self.ascent = ascent
        self.lr = None

    def update_lr(self):
        self.lr = np.float32(next(self.rates))

    def signed_lr(self):
        lr = self.lr if self.lr is not None else np.float32(self.unstepped_value)
        return -lr if self.ascent else lr

    def direction(self, grads):
        """Update the memory with g, then the direction from the updated moments."""
        mem = self.memory
        mem.update(grads)
        x = mem.mean if mem.w != 0 else grads
        return mem.normalize(x, unbiased=True)

    def step(self, grads):
        """The deltas lr * direction of one update."""
        lr = self.signed_lr()
        return [np.asarray(_scalar(lr, d) * d) for d in self.direction(grads)]


def apply(params, deltas):
    """p - delta leaf by leaf (what the model and the in-place path do)."""
    return [np.asarray(p - d) for p, d in zip(params, deltas)]


def rms_of_deltas(deltas, n):
    """sqrt(sum over leaves of mean(delta**2) / n); delta**2 rounded in the leaf's dtype,
    summed in float64; empty leaves contribute 0."""
    total = 0.0
    for d in deltas:
        d = np.asarray(d)
        if d.size:
            total += float(np.sum((d * d).astype(np.float64))) / d.size
    return math.sqrt(total / n)


def as_float64(leaves):
    return [np.asarray(a, dtype=np.float64) for a in leaves]


# ----------------------------------------------------------------------------- schedules

def constant_rates(initial=1.0, value=None):
    current = initial if value is None else value
    while True:
        yield np.float32(current)


def linear_rates(initial=1.0, delta=0.0, value=None, minval=0.0, maxval=1.0):
    current = initial if value is None else value
    while True:
        yield np.float32(current)
        current = min(max(current - delta, minval), maxval)


def step_rates(initial=1.0, final=0.0, steps=1, value=None):
    # Call 0 gives the starting value; calls 1 .. steps + 1 give initial; then final.
    yield np.float32(initial if value is None else value)
    call = 1
    while True:
        yield np.float32(initial if call < steps + 2 else final)
        call += 1


def exponential_rates(initial=1.0, coefficient=0.9, value=None):
    current = initial if value is None else value
    while True:
        yield np.float32(current)
        current = current * coefficient


def power_law_rates(initial=1.0, coefficient=0.9, value=None):
    current = initial if value is None else value
    while True:
        yield np.float32(current)
        current = 1.0 / (1.0 / current + coefficient)


RATE_GENERATORS = {
    "Constant": constant_rates,
    "Linear": linear_rates,
    "Step": step_rates,
    "ExponentialDecay": exponential_rates,
    "PowerLawDecay": power_law_rates,
}

# Arguments giving each schedule a sequence that changes within 20-odd steps.
SCHEDULE_ARGS = {
    "Constant": dict(initial=0.01),
    "Linear": dict(initial=0.02, delta=0.0007, minval=0.003, maxval=0.05),
    "Step": dict(initial=0.03, final=0.002, steps=5),
    "ExponentialDecay": dict(initial=0.05, coefficient=0.87),
    "PowerLawDecay": dict(initial=0.05, coefficient=3.3),
}


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


# ----------------------------------------------------------------------------- comparisons

def assert_leaves_equal(tree, leaves, what="leaf"):
    """Every leaf of tree has the dtype, shape and exact bits of the reference leaf."""
    got = flatten(tree)
    assert len(got) == len(leaves), f"{what}: {len(got)} leaves, expected {len(leaves)}"
    for i, (a, b) in enumerate(zip(got, leaves)):
        assert isinstance(a, np.ndarray), f"{what} {i}: got {type(a).__name__}, expected an ndarray"
        b = np.asarray(b)
        assert (a.dtype, a.shape) == (b.dtype, b.shape), \
            f"{what} {i}: got {a.dtype}{a.shape}, expected {b.dtype}{b.shape}"
        if not np.array_equal(a, b):
            bad = np.flatnonzero(a.ravel() != b.ravel())
            j = bad[0]
            raise AssertionError(f"{what} {i} ({a.dtype}, shape {a.shape}): {bad.size} of {a.size} elements "
                                 f"differ; first at flat index {j}: got {a.ravel()[j]!r}, expected {b.ravel()[j]!r}")


def assert_leaves_close(tree, leaves, rtol, what="leaf"):
    """|got - want| <= rtol * (|want| + max|want|) per leaf: relative where values are
    large, absolute (relative to the leaf's scale) where rounding cancels them to near 0."""
    got = flatten(tree)
    assert len(got) == len(leaves)
    for i, (a, b) in enumerate(zip(got, leaves)):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        assert a.shape == b.shape
        if b.size == 0:
            continue
        bound = rtol * (np.abs(b) + np.max(np.abs(b)))
        err = np.abs(a - b)
        assert np.all(err <= bound), f"{what} {i}: max error {err.max()!r}, bound {bound.min()!r}.."


class Runner:
    """Steps a fusedopt optimizer and a RefOptimizer side by side and checks, after
    every step, delta, parameters and moments bit for bit, that the caller's
    gradient is untouched and unaliased, and that containers are preserved.

    path "paysage": a MockModel receives delta; path "inplace": a params tree is
    stepped in place (delta must then be None unless keep_delta).
    """

    def __init__(self, opt, ref, path, params, keep_delta=False):
        self.opt, self.ref, self.path, self.keep_delta = opt, ref, path, keep_delta
        if path == "paysage":
            self.target = MockModel(params)
        else:
            self.target = tree_copy(params)
            self.stepped = flatten(self.target)  # these very arrays must be stepped
        self.ref_params = [np.array(a, copy=True) for a in flatten(params)]
        self.ref_deltas = None

    @property
    def params(self):
        return self.target.params if self.path == "paysage" else self.target

    def update_lr(self):
        self.opt.update_lr()
        self.ref.update_lr()
        assert isinstance(self.opt.lr, np.float32)
        assert abs(self.opt.lr) == self.ref.lr  # the sign convention of .lr under ascent is left open

    def step(self, grad, check_moments=True):
        before = tree_bytes(grad)
        grad_leaves = flatten(grad)
        self.ref_deltas = self.ref.step(grad_leaves)
        self.ref_params = apply(self.ref_params, self.ref_deltas)
        if self.path == "paysage":
            calls = self.target.calls
            self.opt.update(self.target, grad)
            assert self.target.calls == calls + 1, "parameter_update must be called exactly once"
            assert self.target.received is self.opt.delta
            self.check_delta(self.opt.delta, grad)
            assert_leaves_equal(self.target.params, self.ref_params, "param")
        else:
            self.opt.update(self.target, grad)
            if self.keep_delta:
                self.check_delta(self.opt.delta, grad)
            else:
                assert self.opt.delta is None
            assert_leaves_equal(self.stepped, self.ref_params, "param")
            for p, g in zip(self.stepped, grad_leaves):
                assert not np.shares_memory(p, g)
        assert tree_bytes(grad) == before, "the caller's gradient was modified"
        if check_moments:
            self.check_moments(grad)

    def check_delta(self, delta, grad):
        assert structure(delta) == structure(grad)
        assert_leaves_equal(delta, self.ref_deltas, "delta")
        for d, g in zip(flatten(delta), flatten(grad)):
            assert not np.shares_memory(d, g)

    def check_moments(self, grad):
        mem = getattr(self.opt, "memory", None)
        if mem is None:
            return
        for got, want, what in ((mem.mean_gradient, self.ref.memory.mean, "mean"),
                                (mem.mean_square_gradient, self.ref.memory.mean_square, "mean square")):
            if want is None:
                assert got is None, f"{what} should be None"
                continue
            assert structure(got) == structure(grad)
            assert_leaves_equal(got, want, what)
            for a, g in zip(flatten(got), flatten(grad)):
                assert not np.shares_memory(a, g), f"{what} aliases the caller's gradient"
