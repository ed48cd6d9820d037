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
from __future__ import annotations

from copy import deepcopy  # noqa: F401  (paysage's optimizers module exposes both names;
from functools import partial  # noqa: F401  the reference documentation lists them)
import math
import numbers
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Protocol, TypeVar, Union

import numpy as np
import numpy.typing as npt

from . import _core, _docs, schedules
from ._paysage import checks as _checks, native_step as _native_step, state as _state

__all__ = ["GradientMemory", "Optimizer", "Gradient", "Momentum", "RMSProp", "ADAM",
           "gradient", "momentum", "rmsprop", "adam", "EPS"]

# A tree: numpy float32/float64 arrays at the leaves of any nesting of tuple, list, dict and
# namedtuple (paysage's Gradient among them). Not expressible as a static type: Any.
Tree = Any

#: The constant under the square root of normalize(): float32 machine epsilon, 2**-23.
EPS = float(np.finfo(np.float32).eps)


class Rates(Protocol):
    """What ``stepsize`` must be: an object whose ``__next__`` returns the next rate (a real
    scalar); fusedopt's schedules are, and a ``value`` attribute gives the rate of a step before
    any ``update_lr()``."""

    def __next__(self) -> Any: ...


StepSize = Union[Rates, float]

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


def _bump(obj):
    """Count a change of a setting in ``obj._version``: fusedopt.distributed's agreement hashes
    an optimizer's settings again only when this count (or a field it reads every step) moved."""
    d = obj.__dict__
    d["_version"] = d.get("_version", 0) + 1


def _float32_slot(slot, native_name):
    """`_w` / `_w2`: the float32 weight, mirrored as a double in the native state."""
    def get(self):
        return self.__dict__[slot]

    def set(self, value):
        self.__dict__[slot] = value
        setattr(self._native, native_name, float(value))
        _bump(self)
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

    def __init__(self, mean_weight: float = 0.9, mean_square_weight: float = 0.0) -> None:
        """Create a gradient memory.

        Args:
            mean_weight (float in [0, 1)): how strongly to weight the previous mean
                (stored as float32; 0 means no mean).
            mean_square_weight (float in [0, 1)): how strongly to weight the
                previous mean square (stored as float32; 0 means no mean square).

        Raises:
            TypeError, ValueError: a weight is not a real number whose float32 value is in [0, 1).
        """
        # Plan, moment arenas, per-leaf sums and weights live in the native state, which
        # commits them together with each step.
        self._native = _core.State()
        self._update = _native_step.bind(self._native)  # Optimizer.update's native call
        self.mean_weight = mean_weight
        self.mean_square_weight = mean_square_weight

    _plan = _native_property("plan", "Structure of the gradients (a Plan), fixed while moments exist, or None.")
    _sumsq = _native_property("sums", "Per-leaf sum(delta**2) of the last optimizer step.")
    _m = _native_property("mean", "(float32 arena, float64 arena) of the mean, or None.")
    _v = _native_property("mean_square", "The same for the mean square.")
    _m_tree = _native_property("mean_tree", "Tree of views into the mean's arenas, or None.")
    _v_tree = _native_property("mean_square_tree", "Tree of views into the mean square's arenas, or None.")
    # Moments loaded by load_state_dict (a _state.Moments), waiting for a gradient's structure:
    # the next step installs them under its gradient's structure and commits them with its results.
    # The native state's `pending` is the truth (its commit clears it); this plain attribute mirrors
    # it for the steps' quick look, and is cleared after the step (_waiting() reconciles the two
    # should a signal fall in between).
    _pending = None
    _w = _float32_slot("_w32", "w")
    _w2 = _float32_slot("_w2_32", "w2")

    if TYPE_CHECKING:
        @property
        def mean_weight(self) -> np.float32: ...
        @mean_weight.setter
        def mean_weight(self, value: float) -> None: ...
        @property
        def mean_square_weight(self) -> np.float32: ...
        @mean_square_weight.setter
        def mean_square_weight(self, value: float) -> None: ...
        mean_gradient: Optional[Tree]
        mean_square_gradient: Optional[Tree]
    else:
        mean_weight = _weight_property("mean_weight", "_w", "Weight of the previous mean (float32).")
        mean_square_weight = _weight_property("mean_square_weight", "_w2",
                                              "Weight of the previous mean square (float32).")
        # Trees of views into the arenas, or None; assigning a tree copies it in.
        mean_gradient = _moment_property("m", "Running mean of the gradients (tree of arrays), or None.")
        mean_square_gradient = _moment_property("v", "Running mean of the squared gradients (tree of arrays), "
                                                     "or None.")

    def _assign_moment(self, which, tree):
        """Set moment `which` ("m" or "v") to a copy of `tree` (None clears it); everything is
        checked before anything changes."""
        pending = self._waiting()
        if tree is None:
            if pending is not None:
                pending = pending._replace(**{which: None})
                self._set_pending(pending if (pending.m is not None or pending.v is not None) else None)
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

    def reset(self) -> None:
        """Forget both moments (the next gradient may have another structure)."""
        self._clear()

    def _clear(self):
        self._m = self._v = self._m_tree = self._v_tree = None
        self._plan = None
        self._sumsq = None
        self._set_pending(None)

    # -- paysage's GradientMemory API ----------------------------------------------
    def update_mean(self, grad: Tree) -> None:
        """Update the running mean: m = g on the first call, then m = w*m + (1-w)*g."""
        self._step(grad, self._native.step, None, Rule.UPDATE_MEAN, Output.NONE, grad, None, 0.0, False)

    def update_mean_square(self, grad: Tree) -> None:
        """Update the running mean square: v = g*g first, then v = w2*v + ((1-w2)*g)*g."""
        self._step(grad, self._native.step, None, Rule.UPDATE_MEAN_SQUARE, Output.NONE, grad, None, 0.0, False)

    def update(self, grad: Tree) -> None:
        """Update the mean (if mean_weight != 0) and the mean square (if mean_square_weight != 0)."""
        rule = _MEMORY_UPDATES[bool(self.mean_weight), bool(self.mean_square_weight)]
        if rule is not None:
            self._step(grad, self._native.step, None, rule, Output.NONE, grad, None, 0.0, False)

    def normalize(self, grad: Tree, unbiased: bool = False) -> Tree:
        """Return grad / sqrt(EPS + v), or with unbiased=True
        (grad / (1 - w)) / sqrt(EPS + v / (1 - w2)); grad itself when there is no mean square yet."""
        pending = self._waiting()
        if self._v is None and (pending is None or pending.v is None):
            return grad
        rule = (Rule.NORMALIZE_UNBIASED_MEAN if self.mean_weight else Rule.NORMALIZE_UNBIASED) if unbiased \
            else Rule.NORMALIZE
        return self._step(grad, self._native.step, None, rule, Output.DELTA, grad, None, 0.0, False)

    def __repr__(self) -> str:
        saved = self._saved_moments()
        count = None if saved is None else len(saved.paths)
        moments = "None" if saved is None else repr(f"{count} " + ("leaf" if count == 1 else "leaves") + (
            ", waiting for a gradient" if self._waiting() is not None else ""))
        return (f"GradientMemory(mean_weight={_show(self._w)}, mean_square_weight={_show(self._w2)}, "
                f"moments={moments})")

    # paysage's per-array running averages, for subclasses written as paysage's optimizers
    # are; in the operation order of docs/semantics.md, "Gradient memory" (numpy's rounding,
    # as the fused kernels round).
    def mixer_(self, x: npt.NDArray[np.floating[Any]], y: npt.NDArray[np.floating[Any]]) -> None:
        """Running mean of one array, in place: x = (w * x) + ((1 - w) * y), w = mean_weight."""
        w = x.dtype.type(self._w)
        np.add(w * x, (x.dtype.type(1) - w) * y, out=x)

    def square_mixer_(self, x: npt.NDArray[np.floating[Any]], y: npt.NDArray[np.floating[Any]]) -> None:
        """Running mean square of one array, in place: x = (w2 * x) + (((1 - w2) * y) * y)."""
        w2 = x.dtype.type(self._w2)
        np.add(w2 * x, ((x.dtype.type(1) - w2) * y) * y, out=x)

    # -- state (the format is fusedopt._paysage.state's) ----------------------------------------
    # A memory's state: its two weights and its moments, per leaf with their paths.
    def _saved_moments(self):
        """The moments as a _state.Moments of views (or the loaded ones still waiting), or None."""
        if self._waiting() is not None:
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
            self._set_pending(saved)
        self._w, self._w2 = weights

    def _install(self, plan, m, v, sumsq=None):
        """Copy moments (lists of leaves in plan order, or None) into fresh arenas under `plan`."""
        m_arenas, m_tree = self._filled(plan, m)
        v_arenas, v_tree = self._filled(plan, v)
        sums = np.zeros(plan.num_leaves) if sumsq is None else np.array(sumsq, dtype=np.float64)
        self._plan, self._sumsq = plan, sums
        self._set_pending(None)
        self._m, self._m_tree, self._v, self._v_tree = m_arenas, m_tree, v_arenas, v_tree

    def _filled(self, plan, leaves):
        if leaves is None:
            return None, None
        arenas = self._new_arenas(plan)
        views = plan.views(*arenas)
        for dst, src in zip(plan.flatten(views), leaves):
            dst[...] = src
        return arenas, views

    def _set_pending(self, saved):
        self._native.pending = saved
        self._pending = saved

    def _waiting(self):
        """The loaded moments still waiting for a structure, or None (also once a step installed them)."""
        if self._pending is not None and self._native.pending is None:
            self._pending = None
        return self._pending

    def _step(self, grad, call, *args):
        """call(*args), a native step on `grad`. Loaded moments waiting go in with it, under the
        structure of `grad`: the step commits them with its results, a refused step not at all."""
        if self._pending is None or self._waiting() is None:
            return call(*args)
        plan = _core.Plan(grad, "grad")
        m, v = self._pending.ordered(_state.match(plan, self._pending, "grad"))
        self._native.install_next(plan, self._filled(plan, m)[0], self._filled(plan, v)[0])
        out = call(*args)
        self._pending = None  # the step installed them, and cleared the native state's
        return out

    def state_dict(self) -> dict[str, Any]:
        """The weights and moments as plain numpy arrays and Python scalars (versioned)."""
        return {**_state.header("GradientMemory"), **self._entries()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state_dict() (also as read back by np.load); checked fully before anything changes.

        Raises:
            TypeError, ValueError: the state is not a GradientMemory state of this format version,
                or its moments do not fit the current structure (nothing is changed).
        """
        _state.check_header(state, "GradientMemory")
        self._commit_state(*self._parse(state))

    def __getstate__(self) -> dict[str, Any]:
        # The plain state plus the tree structure and the convergence sums.
        plan = self._plan
        return {"pickle_version": _state.PICKLE_VERSION, "state": self.state_dict(),
                "structure": None if plan is None else _state.structure_of(plan),
                "sumsq": None if plan is None else np.array(self._sumsq)}

    def __setstate__(self, state: dict[str, Any]) -> None:
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
            self._set_pending(saved)


_DEFAULT_STEPSIZE = schedules.Constant(initial=0.001)


def _as_schedule(stepsize):
    if isinstance(stepsize, bool):
        raise TypeError("stepsize must be a schedule or a float, got bool")
    if isinstance(stepsize, numbers.Real):
        return schedules.Constant(initial=float(stepsize))
    if not hasattr(stepsize, "__next__"):
        raise TypeError(f"stepsize must be a schedule (an object with __next__) or a float, "
                        f"got {type(stepsize).__name__}")
    return stepsize


_OPTIONS_DOC = """
        stepsize (schedule or float): the rate schedule (fusedopt.schedules or any object
            with ``__next__``; a number becomes ``Constant(initial=number)``).
        tolerance (float >= 0): check_convergence() is True when the root mean square of
            the last delta is at most this.
        ascent (bool): step up the gradient (``p + lr * direction``) instead of down.
        check_finite (bool, keyword): raise FloatingPointError, modifying nothing, when a
            gradient element or the rate is NaN or infinite; False (the default) lets them
            propagate as numpy would.
        keep_delta (bool, keyword): on the in-place path also keep the step's delta in
            ``delta`` (the paysage path always keeps it: the model receives it).
"""


_Class = TypeVar("_Class", bound=type)


_USAGE_DOC = """
Usage (one epoch of ``batches``)::

    opt = optimizers.{name}(stepsize=schedules.ExponentialDecay(initial=1e-3, coefficient=0.9))
    opt.update_lr()                              # once per epoch: the schedule's next rate
    for x in batches:
        opt.update(params, grads_of(params, x))  # in place: p -= lr * direction
        # or paysage's path: opt.update(model, grad) calls model.parameter_update(delta)
"""


def _with_options(cls: _Class) -> _Class:
    """Completes the Args section of an optimizer's docstring with the options every optimizer
    takes, and adds a usage example to the classes users construct (not to the base class)."""
    cls.__doc__ = (cls.__doc__ or "").rstrip() + _OPTIONS_DOC.rstrip("\n") + "\n    "
    if cls.__name__ != "Optimizer":
        _docs.complete(cls, _USAGE_DOC)
    return cls


class _Checked:
    """A public attribute checked on assignment (``check(name, value)`` returns what to store or
    raises, so a refused value changes nothing). It has no ``__get__``: reads are plain
    instance-dict reads, and the step, which reads several of these, pays nothing for them.
    An assignment counts as a change of a setting (_bump) unless `counted` is False (the step
    count, which the agreement reads every step anyway)."""

    def __init__(self, check, doc, counted=True):
        self._check = check
        self._counted = counted
        self.__doc__ = doc

    def __set_name__(self, owner, name):
        self._name = name

    def __set__(self, obj, value):
        self._store(obj.__dict__, self._check(self._name, value))
        if self._counted:
            _bump(obj)

    def _store(self, d, value):
        d[self._name] = value


class _CheckedMemory(_Checked):
    """``memory`` of the classes here: checked like any _Checked, and kept in the instance dict
    twice, as ``memory`` and as ``_memory``, which the class declares plainly (``_memory = None``)
    in place of the base class's property: Optimizer.update reads it with no Python call."""

    def _store(self, d, value):
        d.update({self._name: value, "_memory": value})  # one C call: both or neither


def _check_memory(name, value):
    if not isinstance(value, GradientMemory):
        raise TypeError(f"{name} must be a GradientMemory, got {type(value).__name__}")
    return value


_MEMORY_DOC = "The GradientMemory holding the moments (assign a GradientMemory)."


def _check_lr(name, value):
    return None if value is None else _checks.rate(name, value)


@_with_options
class Optimizer:
    """Base class of the optimizers: learning rate, convergence check, fused stepping.

    A subclass written as paysage's optimizers are (its own ``update`` that reads ``self.lr_``,
    sets ``self.delta`` and uses ``self.memory``) works with the base class's ``update_lr``,
    ``check_convergence``, ``reset`` and pickling.

    Args:
    """

    delta: Optional[Tree]
    """The last step's delta (a tree like the gradient), or None (in-place path without keep_delta)."""
    if TYPE_CHECKING:
        tolerance: float
        ascent: bool
        check_finite: bool
        keep_delta: bool
        step_count: int
        @property
        def lr(self) -> Optional[np.float32]: ...
        @lr.setter
        def lr(self, value: Optional[float]) -> None: ...
    else:
        tolerance = _Checked(_checks.tolerance, "Convergence threshold of check_convergence() (a real number >= 0).")
        ascent = _Checked(_checks.flag, "Step up the gradient (True) instead of down.")
        check_finite = _Checked(_checks.flag, "Raise FloatingPointError, modifying nothing, when the gradient or the "
                                              "rate of a step is not finite (True), instead of propagating it.")
        keep_delta = _Checked(_checks.flag, "On the in-place path also keep the step's delta in ``delta``.")
        lr = _Checked(_check_lr, "The float32 rate of the last update_lr() (None before: steps use "
                                 "stepsize.value).")
        step_count = _Checked(_checks.count, "Steps taken by update() (an integer >= 0).", counted=False)

    def __init__(self, stepsize: StepSize = _DEFAULT_STEPSIZE, tolerance: float = 1e-7, ascent: bool = False, *,
                 check_finite: bool = False, keep_delta: bool = False) -> None:
        """Create an optimizer.

        Args: see the class's documentation.

        Raises:
            TypeError, ValueError: an argument of the wrong type or out of range, named.
        """
        # The shared default is copied so that no two optimizers share a schedule by accident.
        self.stepsize = stepsize.copy() if stepsize is _DEFAULT_STEPSIZE else stepsize
        self.tolerance = tolerance
        self.ascent = ascent
        self.check_finite = check_finite
        self.keep_delta = keep_delta
        self.lr = None
        self.delta = None
        self.step_count = 0

    @property
    def stepsize(self) -> Any:
        """The stepsize schedule (a float assigned here becomes a Constant)."""
        return self._stepsize

    @stepsize.setter
    def stepsize(self, value: StepSize) -> None:
        self._stepsize = _as_schedule(value)
        _bump(self)

    @property
    def _memory(self) -> GradientMemory:
        return self.memory  # type: ignore[no-any-return]  # the subclass's

    @property
    def lr_(self) -> Callable[[npt.NDArray[Any]], None]:
        """paysage's name for the rate: a function that multiplies an array in place by the
        signed rate of the next step (``lr``, or float32(stepsize.value) before any update_lr();
        negated when ascent is True), as paysage's own subclasses apply it to their delta."""
        lr = self.lr
        lr = lr if lr is not None else np.float32(_native_step.unset_rate(self._stepsize)[1])
        return partial(_scale_in_place, -lr if self.ascent else lr)

    def update_lr(self) -> None:
        """Advance the schedule: lr = float32(next(stepsize)) (negated for ascent at step time).

        Raises:
            TypeError: the schedule returned something other than a real scalar (a Python or
                numpy int or float, or a 0-d array of one); lr is unchanged, the schedule has
                advanced. A non-finite rate is kept: ``update()`` refuses it when ``check_finite``
                is True and lets it propagate otherwise.
        """
        value = next(self._stepsize)
        self.lr = _checks.rate(f"the value {type(self._stepsize).__name__}.__next__() returned", value)

    def check_convergence(self) -> bool:
        """Whether the last step was small: True when
        sqrt(sum over leaves of mean(delta**2) / n) <= tolerance.

        n is len(grad.layers) + len(grad.weights) for a paysage Gradient, else the
        number of leaves. After an in-place step the fused step's per-leaf sums give it
        (summed in double); otherwise it is evaluated on ``delta`` exactly as paysage does
        (float32 means, see docs/semantics-convergence.md). False before the first update
        and right after load_state_dict().
        """
        mem = getattr(self, "_memory", None)
        if mem is not None and mem._native.conv_inplace:
            count = mem._native.conv_count  # None: no step since the state was loaded
            if self.step_count == 0 or mem._plan is None or count is None:
                return False
            sizes = np.asarray(mem._plan.leaf_sizes, dtype=np.float64)
            means = np.divide(mem._sumsq, sizes, out=np.zeros_like(sizes), where=sizes > 0)
            return math.sqrt(float(np.sum(means)) / count) <= self.tolerance
        delta = self.delta
        if delta is None:
            return False
        return _rms_as_paysage(delta) <= self.tolerance

    # The convergence state lives in the memory's native state, committed with each step.
    @property
    def _conv_n(self):
        """(plan, n) of check_convergence, or None until the next step."""
        mem = getattr(self, "_memory", None)
        count = None if mem is None else mem._native.conv_count
        return None if count is None else (mem._plan, count)

    @_conv_n.setter
    def _conv_n(self, value):
        mem = getattr(self, "_memory", None)
        if mem is not None:
            mem._native.conv_count = None if value is None else value[1]

    @property
    def _inplace_conv(self):
        """Whether the last step was in place (check_convergence then uses the fused sums)."""
        mem = getattr(self, "_memory", None)
        return mem is not None and mem._native.conv_inplace

    @_inplace_conv.setter
    def _inplace_conv(self, value):
        mem = getattr(self, "_memory", None)
        if mem is not None:
            mem._native.conv_inplace = value

    def reset(self) -> None:
        """Reset the gradient memory."""
        mem = getattr(self, "_memory", None)
        if mem is not None:
            mem.reset()

    # -- state (the format is fusedopt._paysage.state's) ----------------------------------------
    # An optimizer's state: its scalars, its schedule and its memory's state.
    _fixed_zero: tuple[str, ...] = ()  # the memory weights that must be 0 in a state (moments this class has not)
    # Attributes __getstate__ saves in its own way, or not at all (caches rebuilt on use).
    _PICKLED_APART = frozenset({"_stepsize", "tolerance", "ascent", "check_finite", "keep_delta", "lr",
                                "step_count", "delta", "memory", "_memory", "_conv_n"})

    def _fields(self):
        return _state.OptimizerFields(self.tolerance, self.ascent, self.check_finite, self.keep_delta,
                                      self.lr, self.step_count)

    def _commit_fields(self, fields):
        self.tolerance, self.ascent = fields.tolerance, fields.ascent
        self.check_finite, self.keep_delta = fields.check_finite, fields.keep_delta
        self.lr, self.step_count = fields.lr, fields.step_count

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume training bit-exactly, as plain numpy arrays and Python
        scalars (versioned; np.savez stores it): moments per leaf with their paths, lr,
        step_count, the schedule's configuration, the hyper-parameters and the optimizer kind."""
        return {**_state.header(type(self).__name__), **_state.optimizer_entries(self._fields()),
                **_state.schedule_entries(self._stepsize), **self._state_memory()._entries()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state_dict() (also as read back by np.load) into this optimizer, which must
        be of the same kind; everything is checked before anything changes.

        Raises:
            TypeError, ValueError: the state is not one of this kind and format version, or a
                value in it does not fit (named); the optimizer is unchanged.
        """
        _state.check_header(state, type(self).__name__)
        fields = _state.parse_optimizer(state)
        schedule = _state.parse_schedule(state)
        mem = self._state_memory()
        memory = mem._parse(state, self._fixed_zero)
        # Everything is checked: from here on nothing raises.
        mem._commit_state(*memory)
        self._stepsize = schedule
        _bump(self)
        self._commit_fields(fields)
        self.delta = None
        self._conv_n = None  # check_convergence() is False until the next update

    def __getstate__(self) -> dict[str, Any]:
        # The optimizer's scalars as in its state, its memory (pickled as such), the schedule
        # object (any class), delta as leaves of the memory's structure, and a subclass's own attributes.
        mem, conv, delta = getattr(self, "_memory", None), self._conv_n, self.delta
        plan = None if mem is None else mem._plan
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
                "conv_inplace": self._inplace_conv,
                "extra": {k: v for k, v in self.__dict__.items() if k not in self._PICKLED_APART}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        _state.check_pickle_version(state, "optimizer")
        fields = _state.parse_optimizer(state["fields"])
        mem = state["memory"]
        self.__dict__.update(state["extra"])
        self._stepsize = state["stepsize"]
        _bump(self)
        self._commit_fields(fields)
        plan = None
        if mem is not None:
            self._set_memory(mem)
            plan = mem._plan
        leaves = state["delta_leaves"]
        self.delta = state["delta"] if leaves is None else plan.unflatten(leaves)
        self._inplace_conv = state["conv_inplace"]
        count = state["conv_count"]
        self._conv_n = (plan, count) if count is not None and plan is not None else None

    def _set_memory(self, mem):
        self.memory = mem

    def _state_memory(self):
        """The memory whose state is the optimizer's (a memoryless stand-in for a subclass without one)."""
        mem = getattr(self, "_memory", None)
        return mem if mem is not None else GradientMemory(0.0, 0.0)

    def __repr__(self) -> str:
        parts = [f"stepsize={self._stepsize!r}"]
        parts += [f"{name}={_show(value)}" for name, value in self._hyper_parameters()]
        parts += [f"{name}={getattr(self, name)!r}" for name in ("tolerance", "ascent", "check_finite", "keep_delta")]
        return f"{type(self).__name__}({', '.join(parts)})"

    def _hyper_parameters(self) -> list[tuple[str, Any]]:
        """The class's own constructor arguments, as __repr__ shows them."""
        return []

    _rule = Rule.GRADIENT  # the named rule of a subclass (a weight of 0 drops its moment)

    def update(self, model: Any, grad: Tree) -> None:
        """Take one step.

        Parameters, moments, step_count, delta, the convergence sums and (paysage path) the
        model's update are committed together by one native call: an exception, one from a
        signal handler included, leaves them all as before the step or all as after it.

        Args:
            model: a paysage model (has ``parameter_update(delta)``), or a tree of
                writeable C-contiguous arrays shaped like grad, stepped in place.
            grad: the gradient tree (never modified nor kept).
        """
        # One native call through the interface of fusedopt._paysage.native_step.
        mem = self._memory
        if mem._pending is None:
            mem._update(self, self._rule, self._stepsize, model, grad)
        else:
            mem._step(grad, mem._update, self, self._rule, self._stepsize, model, grad)


def _show(value: Any) -> str:
    """A float32 hyper-parameter as written (0.9, not 0.8999999761581421)."""
    return str(value) if isinstance(value, np.floating) else repr(value)


def _scale_in_place(rate, x):
    np.multiply(rate, x, out=x)


def _mean_square(x):
    x = np.asarray(x)
    return np.mean(np.square(x)) if x.size else 0  # an empty leaf adds 0 (np.mean would warn, give NaN)


def _rms_as_paysage(delta):
    """paysage's grad_rms of a delta: per leaf np.mean(np.square(d)) in the leaf's dtype, added
    up as paysage adds them (per namedtuple of a layer or weight first, from the integer 0, so
    float32 throughout for float32 leaves), divided by n, square root. A tree that is not a
    paysage Gradient adds its leaves in order and divides by their count."""
    if hasattr(delta, "layers") and hasattr(delta, "weights"):
        try:
            total = 0
            for part in (delta.layers, delta.weights):
                for group in part:
                    for sub in group:
                        total += sum(_mean_square(x) for x in sub)
            return math.sqrt(total / max(len(delta.layers) + len(delta.weights), 1))
        except TypeError:  # fields of other shapes: not a paysage Gradient after all
            pass
    leaves = _core.Plan(delta, "delta").flatten(delta, "delta")
    total = 0
    for leaf in leaves:
        total += _mean_square(leaf)
    return math.sqrt(total / max(len(leaves), 1))


@_with_options
class Gradient(Optimizer):
    """Vanilla gradient optimizer: delta = lr * g.

    Args:
    """

    def __init__(self, stepsize: StepSize = _DEFAULT_STEPSIZE, tolerance: float = 1e-7, ascent: bool = False,
                 **options: bool) -> None:
        """Create a gradient ascent/descent optimizer (alias ``gradient``); options: check_finite, keep_delta."""
        super().__init__(stepsize, tolerance, ascent, **options)
        self._memory = GradientMemory(0.0, 0.0)  # holds the tree plan only

    _fixed_zero = ("mean_weight", "mean_square_weight")
    _memory = None  # type: ignore[assignment]  # not the base's property: its own memory, holding the plan only

    def reset(self) -> None:
        """Does nothing: plain gradient steps keep no memory."""

    def _set_memory(self, mem):
        self._memory = mem

    def _hyper_parameters(self) -> list[tuple[str, Any]]:
        return []


@_with_options
class Momentum(Optimizer):
    """Stochastic gradient descent with momentum (Qian, 1999): delta = lr * m, where
    m = g at the first step, then m = (w * m) + ((1 - w) * g) with w = momentum.

    Args:
        momentum (float in [0, 1)): the weight w of the previous mean (float32); 0 steps lr * g.
    """

    if TYPE_CHECKING:
        memory: GradientMemory
    else:
        memory = _CheckedMemory(_check_memory, _MEMORY_DOC)
    _memory = None  # type: ignore[assignment]  # the instance dict's, set with memory (_CheckedMemory)

    def __init__(self, stepsize: StepSize = _DEFAULT_STEPSIZE, momentum: float = 0.9, tolerance: float = 1e-7,
                 ascent: bool = False, **options: bool) -> None:
        """Create a momentum optimizer (alias ``momentum``); options: check_finite, keep_delta.

        With momentum=0 the mean is never updated and the step is lr * g.
        """
        super().__init__(stepsize, tolerance, ascent, **options)
        self.memory = GradientMemory(mean_weight=momentum, mean_square_weight=0)

    _fixed_zero = ("mean_square_weight",)
    _rule = Rule.MOMENTUM

    def _hyper_parameters(self) -> list[tuple[str, Any]]:
        return [("momentum", self.memory.mean_weight)]



@_with_options
class RMSProp(Optimizer):
    """RMSProp (Hinton, Coursera lecture 6e): delta = lr * g / sqrt(EPS + v / (1 - w2)), where
    v = g * g at the first step, then v = (w2 * v) + (((1 - w2) * g) * g), and EPS = 2**-23
    (float32 machine epsilon, about 1.19e-07).

    Args:
        mean_square_weight (float in [0, 1)): the weight w2 of the previous mean square
            (float32); 0 steps lr * g.
    """

    if TYPE_CHECKING:
        memory: GradientMemory
    else:
        memory = _CheckedMemory(_check_memory, _MEMORY_DOC)
    _memory = None  # type: ignore[assignment]  # the instance dict's, set with memory (_CheckedMemory)

    def __init__(self, stepsize: StepSize = _DEFAULT_STEPSIZE, mean_square_weight: float = 0.9,
                 tolerance: float = 1e-7, ascent: bool = False, **options: bool) -> None:
        """Create an RMSProp optimizer (alias ``rmsprop``); options: check_finite, keep_delta.

        With mean_square_weight=0 there is no mean square and the step is lr * g.
        """
        super().__init__(stepsize, tolerance, ascent, **options)
        self.memory = GradientMemory(mean_weight=0, mean_square_weight=mean_square_weight)

    _fixed_zero = ("mean_weight",)
    _rule = Rule.RMSPROP

    def _hyper_parameters(self) -> list[tuple[str, Any]]:
        return [("mean_square_weight", self.memory.mean_square_weight)]



@_with_options
class ADAM(Optimizer):
    """ADAM (Kingma & Ba, 2015) as paysage computes it:
    delta = lr * (m / (1 - w)) / sqrt(EPS + v / (1 - w2)).

    m and v are the memory's running mean and mean square (m = g and v = g * g at the first
    step, then m = (w * m) + ((1 - w) * g) and v = (w2 * v) + (((1 - w2) * g) * g)), and
    EPS = 2**-23, float32 machine epsilon (about 1.19e-07), inside the square root.

    This is paysage's ADAM, not textbook Adam: the unbiasing divides by the constants 1 - w
    and 1 - w2 (not 1 - w**t), and the first moment starts at g (not 0). At the default
    weights a step therefore moves each parameter by about 0.32 * lr, where textbook Adam's
    first steps move it by lr.

    Args:
        mean_weight (float in [0, 1)): the weight w of the previous mean (float32); 0 steps with
            g in place of m.
        mean_square_weight (float in [0, 1)): the weight w2 of the previous mean square
            (float32); 0 steps with m alone (momentum).
    """

    if TYPE_CHECKING:
        memory: GradientMemory
    else:
        memory = _CheckedMemory(_check_memory, _MEMORY_DOC)
    _memory = None  # type: ignore[assignment]  # the instance dict's, set with memory (_CheckedMemory)

    def __init__(self, stepsize: StepSize = _DEFAULT_STEPSIZE, mean_weight: float = 0.9,
                 mean_square_weight: float = 0.999, tolerance: float = 1e-7, ascent: bool = False,
                 **options: bool) -> None:
        """Create an ADAM optimizer (alias ``adam``); options: check_finite, keep_delta.

        A weight of 0 drops that moment: mean_weight=0 steps with g in place of m,
        mean_square_weight=0 steps with m alone (momentum).
        """
        super().__init__(stepsize, tolerance, ascent, **options)
        self.memory = GradientMemory(mean_weight=mean_weight, mean_square_weight=mean_square_weight)

    _rule = Rule.ADAM

    def _hyper_parameters(self) -> list[tuple[str, Any]]:
        return [("mean_weight", self.memory.mean_weight), ("mean_square_weight", self.memory.mean_square_weight)]


gradient = Gradient
momentum = Momentum
rmsprop = RMSProp
adam = ADAM
