"""Gradient optimizers with fused C++ steps; a drop-in for paysage's ``optimizers``.

Every step is one call into ``fusedopt._core`` for the whole gradient tree.
Two ways to step:

* paysage path: ``optimizer.update(model, grad)`` where ``model`` has
  ``parameter_update(delta)``; ``delta = lr * direction`` is handed to it.
* in-place path: ``optimizer.update(params, grad)`` where ``params`` is a tree
  of writeable C-contiguous arrays shaped like ``grad``: ``p -= lr * direction``
  without materializing ``delta``.

See docs/semantics.md for the exact float semantics (bit-identical to paysage).
"""
from copy import deepcopy  # noqa: F401  (paysage's optimizers module exposes both names;
from functools import partial  # noqa: F401  the reference documentation lists them)
import math
import numbers

import numpy as np

from . import _checks, _core, _state, schedules

__all__ = ["GradientMemory", "Optimizer", "Gradient", "Momentum", "RMSProp", "ADAM",
           "gradient", "momentum", "rmsprop", "adam"]

Rule, Output = _core.Rule, _core.Output


# GradientMemory.update's rule by (mean_weight != 0, mean_square_weight != 0).
_MEMORY_UPDATES = {(True, True): Rule.UPDATE_BOTH, (True, False): Rule.UPDATE_MEAN,
                   (False, True): Rule.UPDATE_MEAN_SQUARE, (False, False): None}


def _native_property(name, doc):
    """An attribute of the memory's native state (fusedopt._core.State)."""
    return property(lambda self: getattr(self._native, name),
                    lambda self, value: setattr(self._native, name, value), doc=doc)


def _weight_property(name, attr, doc):
    """A float32 weight in [0, 1), checked on assignment."""
    def get(self):
        return getattr(self, attr)

    def set(self, value):
        setattr(self, attr, _checks.weight(name, value))
    return property(get, set, doc=doc)


def _float32_slot(slot, native_name):
    """`_w` / `_w2`: the float32 weight, mirrored as a double in the native state."""
    def get(self):
        return self.__dict__[slot]

    def set(self, value):
        self.__dict__[slot] = value
        setattr(self._native, native_name, float(value))
    return property(get, set)


def _moment_property(which, doc):
    """mean_gradient ("m") or mean_square_gradient ("v") of a GradientMemory."""
    def get(self):
        return getattr(self, f"_{which}_tree")

    def set(self, tree):
        self._assign_moment(which, tree)
    return property(get, set, doc=doc)


class GradientMemory:
    """Running averages of the first two moments of the gradients.

    ``mean_gradient`` and ``mean_square_gradient`` are trees shaped like the
    gradient (or None before the first update), made of views into one
    64-byte aligned arena per dtype.
    """

    _pending = None  # moments loaded by load_state_dict, waiting for a gradient's structure (_state)

    def __init__(self, mean_weight=0.9, mean_square_weight=0.0):
        """Create a gradient memory.

        Args:
            mean_weight (float in [0, 1)): how strongly to weight the previous mean.
            mean_square_weight (float in [0, 1)): how strongly to weight the
                previous mean square.
        """
        # Plan, moment arenas, per-leaf sums and weights live in the native state, which
        # commits them together with each step.
        self._native = _core.State()
        self.mean_weight = mean_weight
        self.mean_square_weight = mean_square_weight

    _plan = _native_property("plan", "Structure of the gradients (a Plan), fixed while moments exist, or None.")
    _sumsq = _native_property("sums", "Per-leaf sum(delta**2) of the last optimizer step.")
    _m = _native_property("mean", "(float32 arena, float64 arena) of the mean, or None.")
    _v = _native_property("mean_square", "The same for the mean square.")
    _m_tree = _native_property("mean_tree", "Tree of views into the mean's arenas, or None.")
    _v_tree = _native_property("mean_square_tree", "Tree of views into the mean square's arenas, or None.")
    _w = _float32_slot("_w32", "w")
    _w2 = _float32_slot("_w2_32", "w2")

    mean_weight = _weight_property("mean_weight", "_w", "Weight of the previous mean (float32).")
    mean_square_weight = _weight_property("mean_square_weight", "_w2",
                                          "Weight of the previous mean square (float32).")
    # Trees of views into the arenas, or None; assigning a tree copies it in.
    mean_gradient = _moment_property("m", "Running mean of the gradients (tree of arrays), or None.")
    mean_square_gradient = _moment_property("v", "Running mean of the squared gradients (tree of arrays), or None.")

    def _assign_moment(self, which, tree):
        """Set moment `which` ("m" or "v") to a copy of `tree` (None clears it); everything is
        checked before anything changes."""
        pending = self._pending
        if tree is None:
            if pending is not None:
                pending = pending._replace(**{which: None})
                self._pending = pending if (pending.m is not None or pending.v is not None) else None
            setattr(self, f"_{which}", None)
            setattr(self, f"_{which}_tree", None)
            return
        if pending is not None:  # the loaded moments attach to the structure of `tree`
            plan = _core.Plan(tree, "grad")
            m, v = pending.ordered(_state.match(plan, pending, "grad"))
        else:
            plan = self._plan if self._plan is not None else _core.Plan(tree, "moment")
        sources = [np.asarray(src) for src in plan.flatten(tree, "moment")]
        for path, dtype, shape, src in zip(plan.paths, plan.leaf_dtypes, plan.shapes, sources):
            if src.shape != tuple(shape) or src.dtype != np.dtype(dtype):
                raise ValueError(f"moment at {path or 'the root'}: expected {dtype} of shape {tuple(shape)}, "
                                 f"got {src.dtype} of shape {src.shape}")
        if pending is not None:
            self._install(plan, *((sources, v) if which == "m" else (m, sources)))
            return
        arenas, views = self._filled(plan, sources)
        if plan is not self._plan:
            self._plan, self._sumsq = plan, np.zeros(plan.num_leaves)
        setattr(self, f"_{which}", arenas)
        setattr(self, f"_{which}_tree", views)

    @staticmethod
    def _new_arenas(plan):
        n32, n64 = plan.arena_sizes
        return _core.aligned_empty(n32, "float32"), _core.aligned_empty(n64, "float64")

    def reset(self):
        """Forget both moments (the next gradient may have another structure)."""
        self._clear()

    def _clear(self):
        self._m = self._v = self._m_tree = self._v_tree = None
        self._plan = None
        self._sumsq = None
        self._pending = None

    # -- paysage's GradientMemory API ----------------------------------------------
    def update_mean(self, grad):
        """Update the running mean: m = g on the first call, then m = w*m + (1-w)*g."""
        if self._pending is not None:
            self._bind_pending(grad)
        self._native.step(None, Rule.UPDATE_MEAN, Output.NONE, grad, None, 0.0, False)

    def update_mean_square(self, grad):
        """Update the running mean square: v = g*g first, then v = w2*v + ((1-w2)*g)*g."""
        if self._pending is not None:
            self._bind_pending(grad)
        self._native.step(None, Rule.UPDATE_MEAN_SQUARE, Output.NONE, grad, None, 0.0, False)

    def update(self, grad):
        """Update the mean (if mean_weight != 0) and the mean square (if mean_square_weight != 0)."""
        if self._pending is not None:
            self._bind_pending(grad)
        rule = _MEMORY_UPDATES[bool(self.mean_weight), bool(self.mean_square_weight)]
        if rule is not None:
            self._native.step(None, rule, Output.NONE, grad, None, 0.0, False)

    def normalize(self, grad, unbiased=False):
        """Return grad / sqrt(EPS + v), or with unbiased=True
        (grad / (1 - w)) / sqrt(EPS + v / (1 - w2)); grad itself when there is no mean square yet."""
        if self._pending is not None:
            self._bind_pending(grad)
        if self._v is None:
            return grad
        rule = (Rule.NORMALIZE_UNBIASED_MEAN if self.mean_weight else Rule.NORMALIZE_UNBIASED) if unbiased \
            else Rule.NORMALIZE
        return self._native.step(None, rule, Output.DELTA, grad, None, 0.0, False)

    # -- state (the format is fusedopt._state's) ----------------------------------------
    # A memory's state: its two weights and its moments, per leaf with their paths.
    def _saved_moments(self):
        """The moments as a _state.Moments of views (or the loaded ones still waiting), or None."""
        if self._pending is not None:
            return self._pending
        if self._m is None and self._v is None:
            return None
        plan = self._plan
        leaves = lambda tree: None if tree is None else list(plan.flatten(tree))  # noqa: E731
        return _state.Moments(plan.paths, plan.leaf_dtypes, plan.shapes, leaves(self._m_tree), leaves(self._v_tree))

    def _entries(self):
        return _state.memory_entries((self._w, self._w2), self._saved_moments())

    def _parse(self, state, fixed_zero=()):
        """Check a state's weights and moments against this memory; returns what _commit_state takes."""
        weights = _state.parse_weights(state, fixed_zero)
        saved = _state.parse_moments(state)
        return weights, saved, self._attachment(saved)

    def _attachment(self, saved):
        """How loaded moments attach: (plan, leaf order) to install under now, or None to wait for
        the next gradient."""
        plan = self._plan
        if saved is None or plan is None:
            return None
        if self._m is not None or self._v is not None:  # a fixed structure (reset() frees it)
            return plan, _state.match(plan, saved, "the optimizer's current gradient structure")
        try:
            return plan, _state.match(plan, saved, "")
        except ValueError:
            return None  # a memoryless structure may change: wait for the next gradient

    def _commit_state(self, weights, saved, attach):
        """Install what _parse checked; cannot fail half-way."""
        if attach is not None:
            plan, order = attach
            self._install(plan, *saved.ordered(order))
        else:
            self._clear()
            self._pending = saved
        self._w, self._w2 = weights

    def _install(self, plan, m, v, sumsq=None):
        """Copy moments (lists of leaves in plan order, or None) into fresh arenas under `plan`."""
        m_arenas, m_tree = self._filled(plan, m)
        v_arenas, v_tree = self._filled(plan, v)
        sums = np.zeros(plan.num_leaves) if sumsq is None else np.array(sumsq, dtype=np.float64)
        self._plan, self._sumsq, self._pending = plan, sums, None
        self._m, self._m_tree, self._v, self._v_tree = m_arenas, m_tree, v_arenas, v_tree

    def _filled(self, plan, leaves):
        if leaves is None:
            return None, None
        arenas = self._new_arenas(plan)
        views = plan.views(*arenas)
        for dst, src in zip(plan.flatten(views), leaves):
            dst[...] = src
        return arenas, views

    def _bind_pending(self, tree):
        """Attach moments loaded without a structure, taking it from `tree` (a gradient)."""
        plan = _core.Plan(tree, "grad")
        self._install(plan, *self._pending.ordered(_state.match(plan, self._pending, "grad")))

    def state_dict(self):
        """The weights and moments as plain numpy arrays and Python scalars (versioned)."""
        return {**_state.header("GradientMemory"), **self._entries()}

    def load_state_dict(self, state):
        """Restore a state_dict() (also as read back by np.load); checked fully before anything changes."""
        _state.check_header(state, "GradientMemory")
        self._commit_state(*self._parse(state))

    def __getstate__(self):
        # The plain state plus the tree structure and the convergence sums.
        plan = self._plan
        return {"pickle_version": _state.PICKLE_VERSION, "state": self.state_dict(),
                "structure": None if plan is None else _state.structure_of(plan),
                "sumsq": None if plan is None else np.array(self._sumsq)}

    def __setstate__(self, state):
        _state.check_pickle_version(state, "GradientMemory")
        data = state["state"]
        _state.check_header(data, "GradientMemory")
        weights, saved = _state.parse_weights(data), _state.parse_moments(data)
        GradientMemory.__init__(self, *weights)
        if state["structure"] is not None:
            plan = _state.plan_from_structure(state["structure"])
            m, v = (None, None) if saved is None else saved.ordered(_state.match_in_order(plan, saved))
            self._install(plan, m, v, state["sumsq"])
        elif saved is not None:
            self._pending = saved


_DEFAULT_STEPSIZE = schedules.Constant(initial=0.001)


_isfinite = math.isfinite


def _as_schedule(stepsize):
    if isinstance(stepsize, bool):
        raise TypeError("stepsize must be a schedule or a float, got bool")
    if isinstance(stepsize, numbers.Real):
        return schedules.Constant(initial=float(stepsize))
    if not hasattr(stepsize, "__next__"):
        raise TypeError(f"stepsize must be a schedule (an object with __next__) or a float, "
                        f"got {type(stepsize).__name__}")
    return stepsize


class Optimizer:
    """Base class of the optimizers: learning rate, convergence check, fused stepping."""

    _unset_lr_cache = None  # (stepsize.value, its float32 as a float) for updates before update_lr()

    def __init__(self, stepsize=_DEFAULT_STEPSIZE, tolerance=1e-7, ascent=False, *,
                 check_finite=False, keep_delta=False):
        """Create an optimizer.

        Args:
            stepsize (schedule or float; optional): the stepsize schedule.
            tolerance (float; optional): the gradient magnitude to declare convergence.
            ascent (bool; optional): step up the gradient instead of down.
            check_finite (bool; keyword): raise FloatingPointError on a NaN or Inf
                gradient (nothing is modified) instead of propagating it.
            keep_delta (bool; keyword): on the in-place path also keep ``delta``.
        """
        # The shared default is copied so that no two optimizers share a schedule by accident.
        self.stepsize = stepsize.copy() if stepsize is _DEFAULT_STEPSIZE else stepsize
        if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real):
            raise TypeError(f"tolerance must be a real number >= 0, got {type(tolerance).__name__}")
        if not tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance!r}")
        self.tolerance = tolerance
        self.ascent = bool(ascent)
        self.check_finite = bool(check_finite)
        self.keep_delta = bool(keep_delta)
        self.lr = None          # float32 rate set by update_lr(); None: use stepsize.value
        self.delta = None
        self.step_count = 0
        self._model_types = {}  # type -> has parameter_update

    @property
    def stepsize(self):
        """The stepsize schedule (a float assigned here becomes a Constant)."""
        return self._stepsize

    @stepsize.setter
    def stepsize(self, value):
        self._stepsize = _as_schedule(value)

    def update_lr(self):
        """Advance the schedule: lr = float32(next(stepsize)) (negated for ascent at step time).

        Raises:
            TypeError: the schedule returned something other than a real scalar (a Python or
                numpy int or float, or a 0-d array of one); lr is unchanged, the schedule has
                advanced. A non-finite rate is kept: ``update()`` refuses it when ``check_finite``
                is True and lets it propagate otherwise.
        """
        value = next(self._stepsize)
        self.lr = _checks.rate(f"the value {type(self._stepsize).__name__}.__next__() returned", value)

    def _unset_lr(self):
        """The rate of an update before any update_lr(): float32(stepsize.value), as a float.
        Cached for the same immutable value object (np.float32() alone costs more than a small
        step); an array value may change in place, so it is read every time."""
        value = getattr(self._stepsize, "value", None)
        cached = self._unset_lr_cache
        if cached is not None and cached[0] is value:
            return cached[1]
        if value is None:
            raise TypeError(f"call update_lr() before update(): the schedule "
                            f"{type(self._stepsize).__name__} has no current value")
        rate = float(_checks.rate(f"{type(self._stepsize).__name__}.value (the rate before any update_lr())", value))
        if not isinstance(value, np.ndarray):
            self._unset_lr_cache = (value, rate)
        return rate

    def check_convergence(self):
        """True when sqrt(sum over leaves of mean(delta**2) / n) <= tolerance.

        n is len(grad.layers) + len(grad.weights) for a paysage Gradient, else the
        number of leaves. False before the first update.
        """
        mem = self._memory
        count = mem._native.conv_count  # None: no step since the state was loaded
        if self.step_count == 0 or mem._plan is None or count is None:
            return False
        sizes = np.asarray(mem._plan.leaf_sizes, dtype=np.float64)
        means = np.divide(mem._sumsq, sizes, out=np.zeros_like(sizes), where=sizes > 0)
        return math.sqrt(float(np.sum(means)) / count) <= self.tolerance

    @property
    def _conv_n(self):
        """(plan, n) of check_convergence, or None until the next step."""
        mem = self._memory
        count = mem._native.conv_count
        return None if count is None else (mem._plan, count)

    @_conv_n.setter
    def _conv_n(self, value):
        self._memory._native.conv_count = None if value is None else value[1]

    def reset(self):
        """Reset the gradient memory."""
        self._memory.reset()

    # -- state (the format is fusedopt._state's) ----------------------------------------
    # An optimizer's state: its scalars, its schedule and its memory's state.
    _fixed_zero = ()  # the memory weights that must be 0 in a state (moments this class has not)
    # Attributes __getstate__ saves in its own way, or not at all (caches rebuilt on use).
    _PICKLED_APART = frozenset({"_stepsize", "tolerance", "ascent", "check_finite", "keep_delta", "lr",
                                "step_count", "delta", "memory", "_memory", "_conv_n", "_model_types",
                                "_unset_lr_cache"})

    def _fields(self):
        return _state.OptimizerFields(self.tolerance, self.ascent, self.check_finite, self.keep_delta,
                                      self.lr, self.step_count)

    def _commit_fields(self, fields):
        self.tolerance, self.ascent = fields.tolerance, fields.ascent
        self.check_finite, self.keep_delta = fields.check_finite, fields.keep_delta
        self.lr, self.step_count = fields.lr, fields.step_count

    def state_dict(self):
        """Everything needed to resume training bit-exactly, as plain numpy arrays and Python
        scalars (versioned; np.savez stores it): moments per leaf with their paths, lr,
        step_count, the schedule's configuration, the hyper-parameters and the optimizer kind."""
        return {**_state.header(type(self).__name__), **_state.optimizer_entries(self._fields()),
                **_state.schedule_entries(self._stepsize), **self._memory._entries()}

    def load_state_dict(self, state):
        """Restore a state_dict() (also as read back by np.load) into this optimizer, which must
        be of the same kind; everything is checked before anything changes."""
        _state.check_header(state, type(self).__name__)
        fields = _state.parse_optimizer(state)
        schedule = _state.parse_schedule(state)
        memory = self._memory._parse(state, self._fixed_zero)
        # Everything is checked: from here on nothing raises.
        self._memory._commit_state(*memory)
        self._stepsize = schedule
        self._commit_fields(fields)
        self.delta = None
        self._conv_n = None  # check_convergence() is False until the next update

    def __getstate__(self):
        # The optimizer's scalars as in its state, its memory (pickled as such), the schedule
        # object (any class), delta as leaves of the memory's structure, and a subclass's own attributes.
        mem, conv, delta = self._memory, self._conv_n, self.delta
        plan = mem._plan
        leaves = None
        if delta is not None and plan is not None:
            try:
                leaves = plan.flatten(delta, "delta")
            except (TypeError, ValueError):  # a subclass's own delta: pickled as it is
                pass
        return {"pickle_version": _state.PICKLE_VERSION, "kind": type(self).__name__,
                "fields": _state.optimizer_entries(self._fields()), "stepsize": self._stepsize,
                "memory": mem, "delta": delta if leaves is None else None, "delta_leaves": leaves,
                "conv_count": conv[1] if conv is not None and conv[0] is plan else None,
                "extra": {k: v for k, v in self.__dict__.items() if k not in self._PICKLED_APART}}

    def __setstate__(self, state):
        _state.check_pickle_version(state, "optimizer")
        fields = _state.parse_optimizer(state["fields"])
        mem = state["memory"]
        self.__dict__.update(state["extra"])
        self._model_types = {}
        self._stepsize = state["stepsize"]
        self._commit_fields(fields)
        self._set_memory(mem)
        plan = mem._plan
        leaves = state["delta_leaves"]
        self.delta = state["delta"] if leaves is None else plan.unflatten(leaves)
        count = state["conv_count"]
        self._conv_n = (plan, count) if count is not None and plan is not None else None

    def _set_memory(self, mem):
        self.memory = mem

    _rule = Rule.GRADIENT  # the named rule of a subclass (a weight of 0 drops its moment)

    def update(self, model, grad):
        """Take one step.

        Parameters, moments, step_count, delta, the convergence sums and (paysage path) the
        model's update are committed together by one native call: an exception, one from a
        signal handler included, leaves them all as before the step or all as after it.

        Args:
            model: a paysage model (has ``parameter_update(delta)``), or a tree of
                writeable C-contiguous arrays shaped like grad, stepped in place.
            grad: the gradient tree (never modified nor kept).
        """
        lr = self.lr
        lr = float(lr) if lr is not None else self._unset_lr()
        if self.ascent:
            lr = -lr
        if self.check_finite and not _isfinite(lr):
            raise FloatingPointError(f"the learning rate is {lr!r} and check_finite is True: nothing was modified")
        kind = type(model)
        is_model = self._model_types.get(kind)
        if is_model is None:
            is_model = self._model_types[kind] = hasattr(model, "parameter_update")
        mem = self._memory
        if mem._pending is not None:
            mem._bind_pending(grad)
        output = _DELTA if is_model else (_BOTH if self.keep_delta else _IN_PLACE)
        mem._native.step(self, self._rule, output, grad, model, lr, self.check_finite)


_DELTA, _BOTH, _IN_PLACE = Output.DELTA, Output.BOTH, Output.IN_PLACE


class Gradient(Optimizer):
    """Vanilla gradient optimizer: delta = lr * g."""

    def __init__(self, stepsize=_DEFAULT_STEPSIZE, tolerance=1e-7, ascent=False, **options):
        """Create a gradient ascent/descent optimizer (alias ``gradient``)."""
        super().__init__(stepsize, tolerance, ascent, **options)
        self._memory = GradientMemory(0.0, 0.0)  # holds the tree plan only

    _fixed_zero = ("mean_weight", "mean_square_weight")

    def reset(self):
        """Does nothing: plain gradient steps keep no memory."""

    def _set_memory(self, mem):
        self._memory = mem



class Momentum(Optimizer):
    """Stochastic gradient descent with momentum (Qian, 1999): delta = lr * m."""

    def __init__(self, stepsize=_DEFAULT_STEPSIZE, momentum=0.9, tolerance=1e-7, ascent=False, **options):
        """Create a momentum optimizer (alias ``momentum``).

        With momentum=0 the mean is never updated and the step is lr * g.
        """
        super().__init__(stepsize, tolerance, ascent, **options)
        self.memory = GradientMemory(mean_weight=momentum, mean_square_weight=0)

    _fixed_zero = ("mean_square_weight",)
    _rule = Rule.MOMENTUM

    @property
    def _memory(self):
        return self.memory



class RMSProp(Optimizer):
    """RMSProp (Hinton, Coursera lecture 6e): delta = lr * g / sqrt(EPS + v / (1 - w2))."""

    def __init__(self, stepsize=_DEFAULT_STEPSIZE, mean_square_weight=0.9, tolerance=1e-7, ascent=False,
                 **options):
        """Create an RMSProp optimizer (alias ``rmsprop``).

        With mean_square_weight=0 there is no mean square and the step is lr * g.
        """
        super().__init__(stepsize, tolerance, ascent, **options)
        self.memory = GradientMemory(mean_weight=0, mean_square_weight=mean_square_weight)

    _fixed_zero = ("mean_weight",)
    _rule = Rule.RMSPROP

    @property
    def _memory(self):
        return self.memory



class ADAM(Optimizer):
    """ADAM (Kingma & Ba, 2015) with paysage's constant unbiasing:
    delta = lr * (m / (1 - w)) / sqrt(EPS + v / (1 - w2))."""

    def __init__(self, stepsize=_DEFAULT_STEPSIZE, mean_weight=0.9, mean_square_weight=0.999, tolerance=1e-7,
                 ascent=False, **options):
        """Create an ADAM optimizer (alias ``adam``).

        A weight of 0 drops that moment: mean_weight=0 steps with g in place of m,
        mean_square_weight=0 steps with m alone (momentum).
        """
        super().__init__(stepsize, tolerance, ascent, **options)
        self.memory = GradientMemory(mean_weight=mean_weight, mean_square_weight=mean_square_weight)

    _rule = Rule.ADAM

    @property
    def _memory(self):
        return self.memory



gradient = Gradient
momentum = Momentum
rmsprop = RMSProp
adam = ADAM
