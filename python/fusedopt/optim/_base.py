"""The base of fusedopt.optim's optimizers: learning rate and schedules, masks,
clipping, the native state (fusedopt._core.OptimState), state_dict and pickle.

A class declares its rule (``_rule()``) and its hyper-parameters (``_Hyper``
descriptors). Each hyper-parameter is declared once, natively
(``FUSEDOPT_OPTIM_HYPER`` in csrc/optim/rules.h: its field and its domain); a
descriptor names the field it exposes, validates by that field's domain and
stores into the one ``_core.OptimHyper`` that the native state reads at every
step. Everything else is here.
"""
from __future__ import annotations

from collections.abc import Mapping
import numbers
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from .. import _core, _docs, schedules
from . import _checks as checks, _lowp as lowp, _state as fmt
from ._tree import Mask, resolve_mask

#: The learning rate ``lr`` of every fusedopt.optim optimizer: a float >= 0; a fusedopt
#: schedule (``next(schedule)`` gives each step's rate, evaluated just before the step);
#: or a callable ``step -> lr`` (called with the number of steps taken: 0 for the first).
LR = Union[float, schedules.Schedule, Callable[[int], Any]]

_USAGE = """
Usage (``params`` and ``grads``: trees of the same structure of float32, float64, bfloat16
(ml_dtypes) or float16 arrays)::

    from fusedopt import optim
    opt = optim.{name}(lr=1e-3)
    for batch in batches:
        opt.step(params, grads_of(params, batch))   # params stepped in place, one native call

``lr`` is an ``LR``: a float, a fusedopt schedule or a callable ``step -> lr``.
``weight_decay_mask`` (keyword) is a ``Mask``: None (every leaf decays), a tree of bools
shaped like ``params``, or a callable ``(path, array) -> bool``. ``max_grad_norm``
(keyword) clips the whole gradient tree to that L2 norm; ``check_finite`` (keyword)
refuses NaN/Inf gradients. ``stochastic_rounding`` and ``seed`` (keywords) round
bfloat16/float16 parameters stochastically, ``stochastic_state`` their 16-bit state
slots too; ``master_weights`` (keyword) keeps
a float32 master copy and float32 state for them (docs/lowbit.md).
"""


_DOMAINS: Dict[str, str] = dict(_core.optim_hyper_fields)


class _Hyper:
    """A hyper-parameter stored in the optimizer's OptimHyper: in the native field of
    its own name, or in `fields` (a sequence of that length: betas -> beta1, beta2),
    each entry checked by its field's declared domain.

    ``selects_rule``: the value picks the kernel and the state slots (momentum
    on or off), so it may change only while the optimizer has no state (before
    the first step, or after reset()).
    """

    def __init__(self, *fields: str, selects_rule: bool = False) -> None:
        self.fields = fields
        self.selects_rule = selects_rule
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.fields = self.fields or (name,)
        unknown = [f for f in self.fields if f not in _DOMAINS]
        if unknown:
            raise TypeError(f"{owner.__name__}.{name}: no native hyper-parameter {unknown[0]!r} "
                            f"(declare it in FUSEDOPT_OPTIM_HYPER, csrc/optim/rules.h)")
        self.__doc__ = (f"The hyper-parameter {name}, checked on assignment as at construction and used from "
                        f"the next step on" + (" (it chooses the update rule and its state: it changes only "
                                                "while the optimizer has no state)." if self.selects_rule else "."))

    def __get__(self, obj: Any, owner: Optional[type] = None) -> Any:
        if obj is None:
            return self
        return obj._values[self.name]

    def __set__(self, obj: Any, value: Any) -> None:
        obj._set_all({self.name: value})

    def check(self, name: str, value: Any) -> Any:
        if len(self.fields) == 1:
            return checks.DOMAINS[_DOMAINS[self.fields[0]]](name, value)
        n = len(self.fields)
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != n:
            raise TypeError(f"{name} must be a sequence of {n} ({', '.join(self.fields)}), got {value!r}")
        return tuple(checks.DOMAINS[_DOMAINS[f]](f"{name}[{i}]", v) for i, (f, v) in enumerate(zip(self.fields, value)))

    def store(self, hyper: _core.OptimHyper, value: Any) -> None:
        values = value if len(self.fields) > 1 else (value,)
        for field, v in zip(self.fields, values):
            hyper[field] = float(v)


class _RuleOption(_Hyper):
    """An option with no native field that chooses the rule (the flags nesterov, amsgrad,
    centered) or the state's layout (Adam8bit's block_size: checked by `check`)."""

    def __init__(self, check: Callable[[str, Any], Any] = checks.flag) -> None:
        super().__init__(selects_rule=True)
        self._check = check

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def check(self, name: str, value: Any) -> Any:
        return self._check(name, value)

    def store(self, hyper: _core.OptimHyper, value: Any) -> None:
        pass


def _check_lr(value: Any) -> LR:
    if isinstance(value, schedules.Schedule) or (callable(value) and not isinstance(value, numbers.Real)):
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"lr must be a real number >= 0, a fusedopt schedule or a callable step -> lr, "
                        f"got {type(value).__name__}")
    return checks.non_negative("lr", value)


# Hyper-parameters added within the state format's version 2, with the value that
# a state saved before them (which lacks the key) means.
_LATER_HYPER: Dict[str, Any] = {"float32_scalars": False}


class Optimizer:
    """Base class of fusedopt.optim's optimizers (see the module's documentation)."""

    # The class's hyper-parameters, in the order its body declares them (its _Hyper
    # descriptors, inherited ones first): saved in state_dict(), shown by repr().
    _hyper_names: Tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names: Dict[str, None] = {}
        for klass in reversed(cls.__mro__):
            names.update({k: None for k, v in vars(klass).items() if isinstance(v, _Hyper)})
        cls._hyper_names = tuple(names)
        _docs.complete(cls, _USAGE)

    _fixed: Dict[str, float] = {}  # native fields the class fixes (AdamW: decoupled_weight_decay)

    def __init__(self, lr: LR, *, weight_decay_mask: Mask = None, max_grad_norm: Optional[float] = None,
                 check_finite: bool = False, stochastic_rounding: bool = False, stochastic_state: bool = False,
                 seed: int = 0, master_weights: bool = False) -> None:
        """Called by the subclasses' constructors with the options every optimizer takes."""
        self._values: Dict[str, Any] = {}
        # Changes of _values' entries (see _store): fusedopt.distributed's agreement hashes the
        # settings again only when this count, or the _values dict itself, changed.
        self._version = 0
        self._hyper = _core.OptimHyper()
        for field, value in self._fixed.items():
            self._hyper[field] = value
        self._state: Optional[_core.OptimState] = None
        self._pending: Optional[Dict[str, Any]] = None  # loaded state waiting for the first step's tree
        self._lr: LR = 0.0
        self.lr = lr
        self.max_grad_norm = max_grad_norm
        self._grad_scale: Optional[float] = None
        self.check_finite = check_finite
        self.stochastic_rounding = stochastic_rounding
        self.stochastic_state = stochastic_state
        self.seed = seed
        self.master_weights = master_weights
        self.weight_decay_mask = weight_decay_mask

    # -- what a class declares --------------------------------------------------------
    def _rule(self) -> str:
        """The name of the rule the current hyper-parameters select (a member of _core.OptimRule)."""
        raise NotImplementedError

    def _native_rule(self) -> _core.OptimRule:
        return _core.OptimRule.__members__[self._rule()]

    def _validate(self) -> None:
        """Checks across hyper-parameters (e.g. SGD's nesterov needs momentum)."""

    def _set_all(self, values: Dict[str, Any]) -> None:
        """Check and assign hyper-parameters together (all or none): each on its own, then
        the checks across them, then the choice of rule against an existing state."""
        old = dict(self._values)
        self._bump()
        try:
            for name, value in values.items():
                hyper = getattr(type(self), name)
                self._values[name] = hyper.check(name, value)
            self._validate()
            if self._state is not None and self._native_rule() != self._state.rule:
                changed = [n for n in values if getattr(type(self), n).selects_rule]
                raise ValueError(f"{', '.join(changed)} chooses the update rule and its state slots: it cannot "
                                 f"change once the optimizer has state (call reset() first)")
        except (TypeError, ValueError):
            self._values = old
            raise
        for name in values:
            getattr(type(self), name).store(self._hyper, self._values[name])

    def _store(self, name: str, value: Any) -> None:
        """Set one of the settings in _values (every write of an entry goes through here or _set_all)."""
        self._values[name] = value
        self._bump()

    def _bump(self) -> None:
        # Not through self.__dict__: reading it makes CPython 3.11 keep the attributes in a
        # dict whose lookups step()'s attribute reads cannot specialize (about 250
        # instructions each, three per step). __init__ sets _version before any _bump.
        self._version += 1

    # -- learning rate ----------------------------------------------------------------
    @property
    def lr(self) -> LR:
        """The learning rate: a float >= 0, a fusedopt schedule (``next(schedule)`` gives each
        step's rate, called once per step just before it) or a callable ``step -> lr`` (called
        once per step with the number of steps already taken: 0 for the first)."""
        return self._lr

    @lr.setter
    def lr(self, value: LR) -> None:
        self._lr = _check_lr(value)

    def _next_lr(self) -> Tuple[float, Optional[Dict[str, Any]]]:
        """This step's rate, and the schedule's attributes to restore if the step fails."""
        lr = self._lr
        if isinstance(lr, float):
            return lr, None
        if isinstance(lr, schedules.Schedule):
            saved = dict(vars(lr))
            value: Any = next(lr)  # type: ignore[call-overload]  # schedules are iterators
        else:
            saved = None
            value = lr(self.step_count)
        try:
            return checks.non_negative("the lr of this step", value), saved
        except (TypeError, ValueError):
            if saved is not None:
                vars(lr).update(saved)
            raise

    @property
    def max_grad_norm(self) -> Optional[float]:
        """Clip the whole gradient tree to this global L2 norm before each step (None: no clipping)."""
        value: Optional[float] = self._values["max_grad_norm"]
        return value

    @max_grad_norm.setter
    def max_grad_norm(self, value: Optional[float]) -> None:
        value = checks.max_norm("max_grad_norm", value)
        if value is not None and getattr(self, "_grad_scale", None) is not None:
            raise ValueError("max_grad_norm: grad_scale is set (the norm would be the scaled gradients')")
        self._store("max_grad_norm", value)
        self._hyper["max_grad_norm"] = 0.0 if value is None else value

    @property
    def grad_scale(self) -> Optional[float]:
        """GradScaler's unscale fused into the step (None: none): the kernels multiply each
        gradient by ``1 / grad_scale`` (exactly ``g / grad_scale`` for a power of two, the
        scales torch's GradScaler uses); not saved in state_dict(), refused with max_grad_norm
        (the norm would be the scaled gradients'). The gradients are not modified unless
        unscale_in_place is set."""
        return self._grad_scale

    @grad_scale.setter
    def grad_scale(self, value: Optional[float]) -> None:
        value = checks.max_norm("grad_scale", value)
        if value is not None and self.max_grad_norm is not None:
            raise ValueError("grad_scale: the step would clip the scaled gradients' norm (max_grad_norm is set); "
                             "unscale the gradients first")
        self._grad_scale = value
        self._hyper["grad_scale"] = 0.0 if value is None else value

    @property
    def unscale_in_place(self) -> bool:
        """With grad_scale: the step also writes each unscaled gradient, ``g * (1 / grad_scale)``,
        back into `grads` (in the kernel's pass; a strided gradient from the contiguous copy the
        step reads), as torch's fused optimizers leave ``.grad`` unscaled under GradScaler
        (fusedopt.torch sets it). False by default: the gradients are never modified."""
        return bool(self._hyper["unscale_in_place"])

    @unscale_in_place.setter
    def unscale_in_place(self, value: bool) -> None:
        self._hyper["unscale_in_place"] = float(checks.flag("unscale_in_place", value))

    @property
    def check_finite(self) -> bool:
        """Raise FloatingPointError (nothing modified) on a NaN or Inf gradient."""
        return bool(self._values["check_finite"])

    @check_finite.setter
    def check_finite(self, value: bool) -> None:
        self._store("check_finite", checks.flag("check_finite", value))

    @property
    def stochastic_rounding(self) -> bool:
        """Round the bfloat16/float16 parameters stochastically (else to nearest even), with the
        bits of the counter-based generator keyed by (seed, step, element)."""
        return bool(self._values["stochastic_rounding"])

    @stochastic_rounding.setter
    def stochastic_rounding(self, value: bool) -> None:
        self._store("stochastic_rounding", checks.flag("stochastic_rounding", value))
        if self._state is not None:
            self._set_rounding(self._state)

    @property
    def stochastic_state(self) -> bool:
        """Round the 16-bit state slots of bfloat16/float16 parameters stochastically too (else
        to nearest even); each slot has its own stream of the generator."""
        return bool(self._values["stochastic_state"])

    @stochastic_state.setter
    def stochastic_state(self, value: bool) -> None:
        self._store("stochastic_state", checks.flag("stochastic_state", value))
        if self._state is not None:
            self._set_rounding(self._state)

    @property
    def seed(self) -> int:
        """The stochastic rounding's seed, an int in [0, 2**64); saved in state_dict()."""
        value: int = self._values["seed"]
        return value

    @seed.setter
    def seed(self, value: int) -> None:
        self._store("seed", lowp.check_seed("seed", value))
        if self._state is not None:
            self._set_rounding(self._state)

    @property
    def master_weights(self) -> bool:
        """Keep a float32 master copy and float32 state slots for each bfloat16/float16
        parameter (docs/lowbit.md, "Master weights"); it chooses the state's layout, so it
        changes only while the optimizer has no state."""
        return bool(self._values["master_weights"])

    @master_weights.setter
    def master_weights(self, value: bool) -> None:
        value = checks.flag("master_weights", value)
        if (self._state is not None or self._pending is not None) and value != self._values["master_weights"]:
            raise ValueError("master_weights chooses the state's layout (float32 masters and slots): it cannot "
                             "change once the optimizer has state (call reset() first)")
        self._store("master_weights", value)

    @property
    def weight_decay_mask(self) -> Mask:
        """None (every leaf decays), a tree of bools shaped like the parameters, or a callable
        ``(path, array) -> bool``; resolved at the first step (the callable sees each parameter)
        and whenever assigned after it (it then sees a read-only array of the parameter's shape
        and dtype: the parameters themselves are not kept)."""
        return self._values["weight_decay_mask"]

    @weight_decay_mask.setter
    def weight_decay_mask(self, mask: Mask) -> None:
        if self._state is not None:
            # The parameters are not kept: a callable sees read-only stand-ins of their shape and dtype.
            plan = self._state.plan
            stand_ins = [np.broadcast_to(np.zeros((), lowp.dtype(dtype)), shape)
                         for dtype, shape in zip(plan.leaf_dtypes, plan.shapes)]
            self._state.decay_mask = resolve_mask(mask, plan.paths, stand_ins)
        self._store("weight_decay_mask", mask)

    # -- state ------------------------------------------------------------------------
    @property
    def step_count(self) -> int:
        """Steps taken (t of the bias corrections is step_count + 1 at the next step)."""
        if self._state is not None:
            return self._state.step_count
        return 0 if self._pending is None else int(self._pending["step_count"])

    @property
    def last_grad_norm(self) -> Optional[float]:
        """Global L2 norm of the last step's gradient (before clipping), when max_grad_norm is set."""
        return None if self._state is None else self._state.last_grad_norm

    @property
    def scalar_state(self) -> Dict[str, float]:
        """The rule's scalar state, ``{name: value}`` (NAdam's ``mu_product``; ``{}`` for rules
        that keep none, and before the first step or init()). Assigning replaces it (every name
        the rule keeps, finite values; checked before anything changes)."""
        if self._state is not None:
            return dict(self._state.scalars)
        return {} if self._pending is None else dict(self._pending["scalars"])

    @scalar_state.setter
    def scalar_state(self, values: Mapping[str, float]) -> None:
        if self._state is None:
            raise ValueError("scalar_state: the optimizer has no state yet (step or init() first)")
        self._state.scalars = dict(values)

    def state_arrays(self) -> Dict[str, Any]:
        """{slot name: tree of writable views of that state slot}, e.g. ``exp_avg``; {} before the
        first step (or init()). Writing into a view changes the optimizer's state."""
        if self._state is None:
            return {}
        plan = self._state.plan
        return {name: plan.unflatten(self._state.slot_views(name)) for name in self._state.slot_names}

    def master_arrays(self) -> Any:
        """With master_weights: the tree of writable float32 views of the masters (None at
        float32/float64 leaves), the truth the next step reads; None before the masters exist
        (the first step creates them from the parameters) and without master_weights."""
        masters = _masters(self._state)
        return None if masters is None else self._state.plan.unflatten(masters)

    def init(self, params: Any) -> None:
        """Create the state for `params` (slots at their initial values) without stepping."""
        if self._state is None:
            self._state = self._bind(params)
            self._pending = None

    def reset(self) -> None:
        """Forget the state: the next step starts afresh (any tree structure)."""
        self._state = None
        self._pending = None

    def _new_state(self, plan: _core.Plan, mask: List[bool]) -> Any:
        """The native state of a tree: an OptimState (the 8-bit classes keep a Quant8State,
        of the same interface)."""
        state = _core.OptimState(self._native_rule(), plan, mask, self._hyper, self._values["master_weights"])
        self._set_rounding(state)
        return state

    def _set_rounding(self, state: Any) -> None:
        """The stochastic rounding options into a native state that rounds 16-bit leaves."""
        if isinstance(state, _core.OptimState):
            state.stochastic_rounding = self._values["stochastic_rounding"]
            state.stochastic_state = self._values["stochastic_state"]
            state.seed = self._values["seed"]

    def _parse_state(self, state: Mapping[str, Any], version: int) -> Optional[Dict[str, Any]]:
        """The saved leaves and scalars of a state_dict, checked against this state's."""
        return _parse_pending(state, version, _core.optim_rule_spec(self._native_rule()),
                              master=self._values["master_weights"])

    def _bind(self, params: Any) -> Any:
        plan = _core.Plan(params, "params", low_precision=True)
        mask = resolve_mask(self.weight_decay_mask, plan.paths, plan.flatten(params, "params"))
        state = self._new_state(plan, mask)
        if self._pending is not None:
            _load_pending(state, self._pending)
        return state

    def step(self, params: Any, grads: Any) -> None:
        """One step of every leaf of `params` (writeable C-contiguous float32, float64, bfloat16 or
        float16 arrays, stepped in place) with `grads` (a tree of the same structure, dtypes and
        shapes; never modified). Everything is checked before anything changes: a TypeError/ValueError names
        the leaf; check_finite raises FloatingPointError."""
        state, lr = self._state, self._lr
        if state is not None and type(lr) is float:  # steady state with a constant rate: straight in
            state.step(params, grads, lr, self._values["check_finite"])
            return
        self._step_with_lr(params, grads)

    def _step_with_lr(self, params: Any, grads: Any) -> None:
        """A step that evaluates a schedule, or creates the state. A new state is bound
        before the native step, which commits on its own: no Python code runs between the
        step and its commit, where a signal handler's exception could split them. On an
        exception, whether the step happened is its step count's change: if it did not,
        the schedule and the absence of state are restored."""
        old, pending = self._state, self._pending
        state, before, saved = old, None, None
        try:
            lr, saved = self._next_lr()
            if state is None:
                state = self._bind(params)
                self._state, self._pending = state, None
            before = state.step_count
            state.step(params, grads, lr, self._values["check_finite"])
        except BaseException:
            if before is None or state.step_count == before:  # not stepped: as before the call
                self._state, self._pending = old, pending
                if saved is not None:
                    vars(self._lr).update(saved)
            raise

    # -- state_dict / pickle ------------------------------------------------------------
    def _hyper_values(self) -> Dict[str, Any]:
        return {name: self._values[name] for name in self._hyper_names}

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume exactly, as plain arrays and scalars (the keys are listed in docs/optim.md, "State")."""
        out: Dict[str, Any] = fmt.header(type(self).__name__)
        for name, value in self._hyper_values().items():
            out[f"hyper.{name}"] = np.asarray(value) if isinstance(value, tuple) else value
        out["max_grad_norm"] = 0.0 if self.max_grad_norm is None else self.max_grad_norm
        out["check_finite"] = self.check_finite
        out["stochastic_rounding"] = self.stochastic_rounding
        out["stochastic_state"] = self.stochastic_state
        out["seed"] = np.uint64(self.seed)
        out["master_weights"] = self.master_weights
        lr = self._lr
        out["lr_kind"] = "float" if isinstance(lr, float) else "schedule" if isinstance(lr, schedules.Schedule) else "callable"
        if isinstance(lr, float):
            out["lr"] = lr
        elif isinstance(lr, schedules.Schedule):
            out.update(fmt.schedule_entries(lr))
        out["step_count"] = self.step_count
        if self._state is not None:
            plan = self._state.plan
            paths, dtypes, mask = plan.paths, plan.leaf_dtypes, self._state.decay_mask
            slots = {name: [np.array(v, copy=True) for v in self._state.slot_views(name)]
                     for name in self._state.slot_names}
            scalars = dict(self._state.scalars)
            masters = _masters(self._state)
        elif self._pending is not None:
            paths, dtypes, mask = self._pending["paths"], self._pending["dtypes"], self._pending["mask"]
            slots = {name: [a.copy() for a in leaves] for name, leaves in self._pending["slots"].items()}
            scalars = dict(self._pending["scalars"])
            masters = self._pending["master"]
        else:
            paths, dtypes, mask, slots, scalars, masters = [], [], [], {}, {}, None
        out["leaf_paths"], out["leaf_dtypes"] = fmt.strs(paths), fmt.strs(dtypes)
        out["decay_mask"] = np.array(mask, dtype=bool)
        out["slots"] = fmt.strs(list(slots))
        for name, leaves in slots.items():
            for i, leaf in enumerate(leaves):
                out[f"{name}.{i}"] = leaf
        out["scalars"] = fmt.strs(list(scalars))
        for name, value in scalars.items():
            out[f"scalar.{name}"] = value
        for i, master in enumerate(masters or []):
            if master is not None:
                out[f"master.{i}"] = np.array(master, copy=True)
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state_dict() (also as np.load reads it back), hyper-parameters included;
        everything is checked before anything changes."""
        version = fmt.check_header(state, type(self).__name__)
        values = {name: _LATER_HYPER[name] if name in _LATER_HYPER and f"hyper.{name}" not in state
                  else fmt.get_value(state, f"hyper.{name}") for name in self._hyper_names}
        max_grad_norm = fmt.get_value(state, "max_grad_norm")
        values["max_grad_norm"] = None if max_grad_norm == 0.0 else max_grad_norm
        values["check_finite"] = fmt.get_value(state, "check_finite")
        rounding = fmt.lowp_entries(state)
        lr_kind = fmt.get_str(state, "lr_kind")
        if lr_kind == "float":
            values["lr"] = fmt.get_value(state, "lr")
        elif lr_kind == "schedule":
            values["lr"] = fmt.schedule_from(state)
        elif lr_kind != "callable":
            raise ValueError(f"state['lr_kind'] must be 'float', 'schedule' or 'callable', got {lr_kind!r}")
        # The hyper-parameters on a scratch optimizer: every check of construction and assignment.
        trial = type(self).__new__(type(self))
        Optimizer.__init__(trial, values.pop("lr", 0.0), check_finite=values.pop("check_finite"),
                           max_grad_norm=values.pop("max_grad_norm"), **rounding)
        trial._set_all(values)
        pending = trial._parse_state(state, version)
        new_state = None
        if self._state is not None and pending is not None:
            new_state = trial._new_state(self._state.plan, self._state.decay_mask)
            _load_pending(new_state, pending)
        # Commit: nothing below can fail.
        trial._values["weight_decay_mask"] = self._values["weight_decay_mask"]
        keep_lr = lr_kind == "callable"
        lr = self._lr
        self._values, self._hyper, self._lr = trial._values, trial._hyper, trial._lr
        if keep_lr:
            self._lr = lr
        self._state = new_state
        self._pending = pending if new_state is None else None

    def __getstate__(self) -> Dict[str, Any]:
        return {"state": self.state_dict(), "lr": self._lr, "weight_decay_mask": self.weight_decay_mask}

    def __setstate__(self, saved: Dict[str, Any]) -> None:
        Optimizer.__init__(self, saved["lr"], weight_decay_mask=saved["weight_decay_mask"])
        self.load_state_dict(saved["state"])
        self._lr = saved["lr"]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in [("lr", self._lr), *self._hyper_values().items()])
        return f"{type(self).__name__}({args})"


def _masters(state: Any) -> Optional[List[Optional[np.ndarray]]]:
    """A native state's master views (None for leaves without one), or None when it has none."""
    if not (isinstance(state, _core.OptimState) and state.master_weights):
        return None
    views = state.master_views()
    return views if any(v is not None for v in views) else None


def _parse_pending(state: Mapping[str, Any], version: int, spec: Mapping[str, Any],
                   read_slot: Callable[..., List[np.ndarray]] = fmt.slot_leaves,
                   master: bool = False) -> Optional[Dict[str, Any]]:
    """The saved leaves and scalar state, checked against `spec` (a rule's spec: its
    "slots" and "scalars") and read by `read_slot(state, name, paths, dtypes)`; None for
    a state saved before the first step. Version 1 has no scalar state (no rule of its
    time kept one). With `master` (master_weights), the slots of 16-bit leaves are
    float32 and each such leaf may have its master (all or none)."""
    paths = fmt.get_strs(state, "leaf_paths")
    dtypes = fmt.get_strs(state, "leaf_dtypes", len(paths))
    for path, dtype in zip(paths, dtypes):
        if dtype not in lowp.LEAF_DTYPES:
            raise ValueError(f"state: leaf {path or 'at the root'} has dtype {dtype!r}, expected one of "
                             f"{', '.join(lowp.LEAF_DTYPES)}")
    mask = fmt.get(state, "decay_mask")
    if not (isinstance(mask, np.ndarray) and mask.dtype == bool and mask.shape == (len(paths),)):
        raise ValueError(f"state['decay_mask'] must be a bool array of {len(paths)} entries")
    step_count = fmt.get_int(state, "step_count")
    if not 0 <= step_count <= fmt.MAX_STEP_COUNT:
        raise ValueError(f"state['step_count'] must be in [0, 2**63 - 1], got {step_count}")
    names = fmt.get_strs(state, "slots")
    expected = list(spec["slots"]) if paths else []
    if sorted(names) != sorted(expected):
        raise ValueError(f"state: slots {names} do not match this optimizer's {expected} "
                         f"(a state of other options, e.g. amsgrad or momentum?)")
    masters = fmt.master_leaves(state, paths, dtypes, master)
    slot_dtypes = ["float32" if master and d in lowp.LOW_DTYPES else d for d in dtypes]
    slots = {name: read_slot(state, name, paths, slot_dtypes) for name in names}
    scalar_names = fmt.get_strs(state, "scalars") if version >= 2 else []
    expected = list(spec["scalars"]) if paths else []
    if sorted(scalar_names) != sorted(expected):
        raise ValueError(f"state: scalars {scalar_names} do not match this optimizer's {expected}")
    scalars = {name: fmt.get_float(state, f"scalar.{name}") for name in scalar_names}
    for name, value in scalars.items():
        if not np.isfinite(value):
            raise ValueError(f"state['scalar.{name}'] must be finite, got {value!r}")
    if not paths:
        if step_count:
            raise ValueError(f"state: step_count is {step_count} but the state has no leaves")
        return None
    return {"paths": paths, "dtypes": dtypes, "mask": [bool(b) for b in mask], "slots": slots,
            "scalars": scalars, "step_count": step_count, "master": masters}


def _load_pending(state: _core.OptimState, pending: Dict[str, Any]) -> None:
    """Loads saved leaves into a native state, matched by path (dict entries may come in
    another order); raises ValueError naming a leaf that does not fit."""
    plan = state.plan
    index = {path: i for i, path in enumerate(pending["paths"])}
    order: List[int] = []
    for path, dtype in zip(plan.paths, plan.leaf_dtypes):
        i = index.get(path)
        if i is None or len(index) != plan.num_leaves:
            raise ValueError(f"params at {path or 'the root'}: the loaded state has no leaf there, or a different "
                             f"number of leaves ({len(index)} for {plan.num_leaves})")
        if pending["dtypes"][i] != dtype:
            raise ValueError(f"params at {path or 'the root'}: the loaded state holds {pending['dtypes'][i]}, "
                             f"the parameter is {dtype}")
        order.append(i)
    masters = pending.get("master")
    extra = () if masters is None else ([masters[i] for i in order],)  # only an OptimState keeps masters
    state.load({name: [leaves[i] for i in order] for name, leaves in pending["slots"].items()},
               pending["scalars"], pending["step_count"], *extra)
    state.decay_mask = [pending["mask"][i] for i in order]
