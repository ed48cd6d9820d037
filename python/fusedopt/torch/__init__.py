"""torch.optim optimizers whose steps run in fusedopt's fused kernels on CPU tensors.

::

    import fusedopt.torch as ft
    opt = ft.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
    for x, y in loader:
        opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step(); sched.step()

SGD, Adam, AdamW, NAdam, RAdam, Adamax, Adadelta, ASGD, Rprop, RMSprop, Adagrad,
Lion, Adam8bit, AdamW8bit and Lion8bit are subclasses of
``torch.optim.Optimizer`` with torch.optim 2.13's constructor signatures,
defaults and per-element semantics (its ``foreach=False`` implementations,
through fusedopt.optim), parameter groups, schedulers, closures, hooks and
state dicts in torch's own format. Each step is one native call per parameter
group (per step count, where the count enters the update), on the parameters'
own memory. CPU float32, float64, bfloat16 and float16 tensors (the options
``stochastic_rounding``, ``seed``, ``master_weights``: docs/lowbit.md), float32 for
the 8-bit classes; docs/torch.md says what is refused and why.

This module imports torch; ``import fusedopt`` does not import it.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, ClassVar, Iterable, Mapping, Optional, Union, overload

import torch
from torch.optim import Optimizer

from .. import _docs
from ._engine import check_values, engine_key
from ._hooked import hooked
from ._plan import GroupPlan, check_memory, named_group, step_dtype
from . import _lowp as lowp, _quant8
from ._specs import (IMPLEMENTATION_DEFAULTS, SPECS, STOCHASTIC_SPECS, Spec, check_flags, check_hyper, load_defaults, stochastic,
                     scalar)
from ._state import check_state_dict
from ._tracked import State, changes, plain

__all__ = ["SGD", "Adam", "AdamW", "NAdam", "RAdam", "Adamax", "Adadelta", "ASGD", "Rprop", "RMSprop", "Adagrad", "Lion"]

Params = Union[Iterable[torch.Tensor], Iterable[dict[str, Any]], Iterable[tuple[str, torch.Tensor]]]
_data_ptr = torch.Tensor.data_ptr
_USAGE = """
Usage, as torch.optim's::

    opt = fusedopt.torch.{name}(model.parameters(), lr=1e-3)
    for x, y in loader:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()                       # one native call per parameter group
"""


class _FusedOptimizer(Optimizer):
    """What the optimizers on the plan share: the planned, one-call-per-group step,
    checked hyper-parameters and state, and torch's state dict format."""

    _spec: ClassVar[Spec]
    # torch.amp.GradScaler passes grad_scale and found_inf (attributes set around step()):
    # the kernels unscale (and leave .grad unscaled, as torch's fused step), an inf skips the step
    # (docs/torch.md, "GradScaler").
    _step_supports_amp_scaling = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _docs.complete(cls, _USAGE)

    def __init__(self, params: Params, defaults: dict[str, Any]) -> None:
        spec = self._spec
        check_flags(spec, defaults)
        unseeded = defaults.get("seed", 0) is None  # None: each group's own seed (lowp.group_seed)
        check_hyper(spec, {**defaults, "seed": 0} if unseeded else defaults)
        if "betas" in defaults:
            defaults["betas"] = tuple(scalar(b) for b in defaults["betas"])  # 1-element tensors become floats
        check_values(spec, {**defaults, "seed": 0} if unseeded else defaults)
        self._plans: list[Optional[GroupPlan]] = []
        super().__init__(params, defaults)

    # -- groups, pickling, state dicts --------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's add_param_group, then the new group's values checked (the
        group is not added when one is refused)."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        lowp.group_seed(group, len(self.param_groups) - 1)
        try:
            check_flags(self._spec, group)
            check_hyper(self._spec, group, f"param_groups[{len(self.param_groups) - 1}]")
            with named_group(len(self.param_groups) - 1):
                check_values(self._spec, group)
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise

    @property
    def state(self) -> State:
        """torch's ``state`` (parameter -> dict of its state tensors), read by every
        step: a dict or tensor assigned into it is what the next step uses."""
        return self._tracked_state

    @state.setter
    def state(self, value: Any) -> None:
        self._tracked_state = value if isinstance(value, State) else State(value)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "state" in self.__dict__:  # torch's __setstate__ updates __dict__, past the property
            self.state = self.__dict__.pop("state")
        if "differentiable" not in self._spec.flags:
            self.defaults.pop("differentiable", None)  # torch's __setstate__ adds it; Lion has no such flag
        for group in self.param_groups:
            for key, value in load_defaults(self._spec, group).items():
                group.setdefault(key, value)
            for key in IMPLEMENTATION_DEFAULTS:
                if key in self._spec.flags:
                    group[key] = self.defaults[key]  # a state saved by torch's foreach or fused optimizer
        self._plans = []  # the state tensors are new: the next step copies them into new arenas

    def state_dict(self) -> dict[str, Any]:
        """torch's state_dict (its per-parameter states plain dicts, as torch's),
        after completing a step whose commit an exception from a signal handler
        interrupted (so that it shows the step)."""
        self._finish()
        out = super().state_dict()
        out["state"] = plain(out["state"])
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load_state_dict (the same format and matching of parameters
        by position) in torch's order: the load pre-hooks, then a check of the
        whole state they leave (the groups' hyper-parameters, and for every
        parameter the moments its group's settings use and its step count),
        then the load, then the post-hooks. Nothing changes when the check
        refuses the state.

        A state saved by torch.optim's optimizer of the same name loads, also
        from its foreach or fused implementation (the implementation flags are
        reset to fusedopt's defaults); training continues as torch's would.
        """
        if not isinstance(state_dict, Mapping):
            raise ValueError("a state dict is a mapping with 'state' and 'param_groups' "
                             f"(from Optimizer.state_dict()), got {type(state_dict).__name__}")
        state_dict = dict(state_dict)  # shallow, as torch's: a hook may edit its entries
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        check_state_dict(self._spec, self.param_groups, state_dict)
        pre, post = self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks
        self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = \
            OrderedDict(), OrderedDict()
        try:  # torch's load, without its hooks: the pre-hooks ran, the post-hooks run after it
            super().load_state_dict(state_dict)
            self._restore_dtypes(state_dict)
        finally:
            self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = pre, post
        for post_hook in post.values():
            post_hook(self)

    def _restore_dtypes(self, state_dict: Mapping[str, Any]) -> None:
        """torch's load casts every floating state tensor to its parameter's dtype: put back
        the float32 masters and slots of master-weighted 16-bit parameters."""
        lowp.widened_state(self.param_groups, state_dict["param_groups"], state_dict["state"], self.state,
                           self._spec.slots)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's zero_grad. With set_to_none (the default) the optimizer also
        drops its references to the old gradients, so their memory is freed as
        torch frees it; set_to_none=False keeps the same gradient tensors, which
        lets the next step reuse their arrays (the fastest steps for models of
        many small tensors)."""
        super().zero_grad(set_to_none)
        if set_to_none:
            for plan in self._plans:
                if plan is not None:
                    plan.release_grads()

    # -- the step -------------------------------------------------------------------

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @hooked  # torch's step wrapper (hooks, profiler range), with a fast path when it has nothing to do
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        """One step of every parameter that has a gradient (others are skipped,
        as torch skips them), one native call per group and step count.

        Everything is checked first (every group's hyper-parameters, every
        parameter and gradient): a TypeError or ValueError naming the offending
        ``param_groups[i]['params'][j]`` or setting leaves all parameters and
        state unchanged.

        Args:
            closure: re-evaluates the model and returns the loss; called with
                gradients enabled, before the step.

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf = getattr(self, "found_inf", None)
        if found_inf is not None and float(found_inf) != 0.0:
            return loss  # as torch's fused step: nothing changes, the step count included
        scale = getattr(self, "grad_scale", None)
        if scale is not None:
            scale = lowp.grad_scale(scale)
        plans, groups, state = self._plans, self.param_groups, self._tracked_state  # (the state property's)
        if scale is None and len(plans) == len(groups):
            if len(plans) == 1:  # the common case, without the loops' iterators
                plan = plans[0]
                if plan is not None and plan.unchanged(groups[0], state):
                    plan.run(state)  # nothing the plan depends on changed: no check to repeat
                    return loss
            else:
                for plan, group in zip(plans, groups):
                    if plan is None or not plan.unchanged(group, state):
                        break
                else:
                    for plan in plans:  # nothing the plans depend on changed: no check to repeat
                        plan.run(state)
                    return loss
        ready = [self._prepare(i, group) for i, group in enumerate(self.param_groups)]
        self._memory = check_memory([plan for plan, _ in ready], getattr(self, "_memory", None))
        del self._plans[len(self.param_groups):]
        self._plans.extend([None] * (len(self.param_groups) - len(self._plans)))
        with lowp.unscaling([plan for plan, _ in ready], scale):
            for i, (plan, hyper) in enumerate(ready):
                self._plans[i] = plan
                plan.hyper = hyper
                plan.remember(self.param_groups[i])
                plan.run(self.state)
        return loss

    def _finish(self) -> None:
        """Complete any step commit that an exception from a signal handler cut short."""
        for plan in self._plans:
            if plan is not None:
                plan.finish(self.state)

    def _prepare(self, index: int, group: dict[str, Any]) -> tuple[GroupPlan, tuple[Any, ...]]:
        """The group's plan for this step (the last one when still valid, its
        engines given the group's current values) and those values; checks
        everything, changes nothing visible."""
        spec = STOCHASTIC_SPECS[self._spec.name] if stochastic(group) else self._spec
        params = group["params"]
        grads = [p.grad for p in params]
        ptrs = list(map(_data_ptr, params))
        hyper = _hyper_values(group, spec.hyper)
        plan = self._plans[index] if index < len(self._plans) else None
        if plan is not None:
            plan.finish(self.state)
        hyper_changed = plan is None or hyper != plan.hyper
        if hyper_changed:
            check_hyper(spec, group, f"param_groups[{index}]")
        if plan is not None and ptrs == plan.ptrs and plan.state_id == (id(self.state), changes(self.state)) and \
                plan.current() and (not hyper_changed or engine_key(spec, group) == plan.key):
            if list(map(id, grads)) != plan.grad_ids:
                if [g is None for g in grads] == plan.missing:
                    plan.refresh_grads(spec, index, group, grads)
                else:
                    plan = None
        else:
            plan = None
        if plan is None:
            return GroupPlan(spec, index, group, self.defaults, self.state, grads, ptrs, hyper), hyper
        if hyper_changed:
            plan.sync(index, group)
        return plan, hyper


_PLAIN = (float, int)


def _hyper_values(group: dict[str, Any], keys: tuple[str, ...]) -> tuple[Any, ...]:
    """The group's values of `keys` as plain numbers (a tensor lr changed in
    place by a scheduler must compare unequal to its old value) and tuples."""
    values = [group.get(k) for k in keys]
    for i, v in enumerate(values):
        if type(v) not in _PLAIN:
            # a bool as itself in a 1-tuple: True == 1, but seed=True is refused and seed=1 is not
            values[i] = (v,) if type(v) is bool else \
                tuple(map(_plain, v)) if isinstance(v, (list, tuple)) else _plain(v)
    return tuple(values)


def _plain(value: Any) -> Any:
    """A 1-element tensor as its number; other tensors as a new object, unequal
    to every earlier value (so the group is checked, and the tensor refused)."""
    if torch.is_tensor(value) and value.numel() != 1:
        return object()
    return scalar(value)


class SGD(_FusedOptimizer):
    """torch.optim.SGD (momentum, dampening, Nesterov, L2 weight decay, maximize)
    on fusedopt's kernels; state: 'momentum_buffer' when momentum != 0."""

    _spec = SPECS["SGD"]

    def __init__(self, params: Params, lr: float = 1e-3, momentum: float = 0, dampening: float = 0,
                 weight_decay: float = 0, nesterov: bool = False, *, maximize: bool = False,
                 foreach: Optional[bool] = None, differentiable: bool = False, fused: Optional[bool] = None,
                 stochastic_rounding: bool = False, stochastic_state: bool = False,
                 seed: Optional[int] = None, master_weights: bool = False) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "dampening": dampening,
                                  "weight_decay": weight_decay, "nesterov": nesterov, "maximize": maximize,
                                  "foreach": foreach, "differentiable": differentiable, "fused": fused,
                                  "stochastic_rounding": stochastic_rounding,
                                  "stochastic_state": stochastic_state, "seed": seed,
                                  "master_weights": master_weights})


class Adam(_FusedOptimizer):
    """torch.optim.Adam (bias-corrected, eps outside the root; L2 weight decay,
    or decoupled with decoupled_weight_decay=True; AMSGrad; maximize) on
    fusedopt's kernels; state: 'step', 'exp_avg', 'exp_avg_sq', 'max_exp_avg_sq'."""

    _spec = SPECS["Adam"]

    def __init__(self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, amsgrad: bool = False, *,
                 foreach: Optional[bool] = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, fused: Optional[bool] = None,
                 decoupled_weight_decay: bool = False,
                 stochastic_rounding: bool = False, stochastic_state: bool = False,
                 seed: Optional[int] = None, master_weights: bool = False) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                                  "amsgrad": amsgrad, "maximize": maximize, "foreach": foreach,
                                  "capturable": capturable, "differentiable": differentiable, "fused": fused,
                                  "decoupled_weight_decay": decoupled_weight_decay,
                                  "stochastic_rounding": stochastic_rounding,
                                  "stochastic_state": stochastic_state, "seed": seed,
                                  "master_weights": master_weights})


class AdamW(_FusedOptimizer):
    """torch.optim.AdamW (Adam with decoupled weight decay ``p *= 1 - lr*wd``)
    on fusedopt's kernels; state as Adam's."""

    _spec = SPECS["AdamW"]

    def __init__(self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 foreach: Optional[bool] = None, capturable: bool = False, differentiable: bool = False,
                 fused: Optional[bool] = None,
                 stochastic_rounding: bool = False, stochastic_state: bool = False,
                 seed: Optional[int] = None, master_weights: bool = False) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                                  "amsgrad": amsgrad, "maximize": maximize, "foreach": foreach,
                                  "capturable": capturable, "differentiable": differentiable, "fused": fused,
                                  "decoupled_weight_decay": True,
                                  "stochastic_rounding": stochastic_rounding,
                                  "stochastic_state": stochastic_state, "seed": seed,
                                  "master_weights": master_weights})

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True  # as torch's AdamW: always decoupled, whatever was saved


class NAdam(_FusedOptimizer):
    """torch.optim.NAdam (Nesterov momentum in Adam with torch's momentum
    schedule ``momentum_decay``; L2 weight decay, or decoupled with
    decoupled_weight_decay=True; maximize) on fusedopt's kernels; state:
    'step', 'mu_product' (0-d, torch's scalar dtype), 'exp_avg', 'exp_avg_sq'."""

    _spec = SPECS["NAdam"]

    def __init__(self, params: Params, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, *, foreach: Optional[bool] = None, maximize: bool = False,
                 capturable: bool = False, differentiable: bool = False,
                 stochastic_rounding: bool = False, stochastic_state: bool = False,
                 seed: Optional[int] = None, master_weights: bool = False) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                                  "momentum_decay": momentum_decay, "decoupled_weight_decay": decoupled_weight_decay,
                                  "maximize": maximize, "foreach": foreach, "capturable": capturable,
                                  "differentiable": differentiable,
                                  "stochastic_rounding": stochastic_rounding,
                                  "stochastic_state": stochastic_state, "seed": seed,
                                  "master_weights": master_weights})


class RAdam(_FusedOptimizer):
    """torch.optim.RAdam (Adam with the variance rectified from the step
    where torch's rho_t > 5; L2 weight decay, or decoupled with
    decoupled_weight_decay=True; maximize) on fusedopt's kernels; state:
    'step', 'exp_avg', 'exp_avg_sq'."""

    _spec = SPECS["RAdam"]

    def __init__(self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, decoupled_weight_decay: bool = False, *,
                 foreach: Optional[bool] = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False,
                 stochastic_rounding: bool = False, stochastic_state: bool = False,
                 seed: Optional[int] = None, master_weights: bool = False) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                                  "decoupled_weight_decay": decoupled_weight_decay, "maximize": maximize,
                                  "foreach": foreach, "capturable": capturable, "differentiable": differentiable,
                                  "stochastic_rounding": stochastic_rounding,
                                  "stochastic_state": stochastic_state, "seed": seed,
                                  "master_weights": master_weights})


class Adamax(_FusedOptimizer):
    """torch.optim.Adamax (Adam with the infinity norm; L2 weight decay,
    maximize) on fusedopt's kernels; state: 'step', 'exp_avg', 'exp_inf'."""

    _spec = SPECS["Adamax"]

    def __init__(self, params: Params, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, foreach: Optional[bool] = None, *,
                 maximize: bool = False, differentiable: bool = False, capturable: bool = False,
                 stochastic_rounding: bool = False, stochastic_state: bool = False,
                 seed: Optional[int] = None, master_weights: bool = False) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                                  "foreach": foreach, "maximize": maximize, "differentiable": differentiable,
                                  "capturable": capturable,
                                  "stochastic_rounding": stochastic_rounding,
                                  "stochastic_state": stochastic_state, "seed": seed,
                                  "master_weights": master_weights})


class Adadelta(_FusedOptimizer):
    """torch.optim.Adadelta (L2 weight decay, maximize) on fusedopt's kernels;
    state: 'step', 'square_avg', 'acc_delta'."""

    _spec = SPECS["Adadelta"]

    def __init__(self, params: Params, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0, foreach: Optional[bool] = None, *, capturable: bool = False,
                 maximize: bool = False, differentiable: bool = False,
                 stochastic_rounding: bool = False, stochastic_state: bool = False,
                 seed: Optional[int] = None, master_weights: bool = False) -> None:
        super().__init__(params, {"lr": lr, "rho": rho, "eps": eps, "weight_decay": weight_decay,
                                  "foreach": foreach, "capturable": capturable, "maximize": maximize,
                                  "differentiable": differentiable,
                                  "stochastic_rounding": stochastic_rounding,
                                  "stochastic_state": stochastic_state, "seed": seed,
                                  "master_weights": master_weights})


class ASGD(_FusedOptimizer):
    """torch.optim.ASGD (averaged SGD: the decay term lambd, eta's power alpha,
    averaging from step t0; L2 weight decay, maximize) on fusedopt's kernels;
    state: 'step', 'eta', 'mu' (0-d, torch's scalar dtype), 'ax'."""

    _spec = SPECS["ASGD"]

    def __init__(self, params: Params, lr: float = 1e-2, lambd: float = 1e-4, alpha: float = 0.75,
                 t0: float = 1e6, weight_decay: float = 0, foreach: Optional[bool] = None, maximize: bool = False,
                 differentiable: bool = False, capturable: bool = False, *,
                 stochastic_rounding: bool = False, stochastic_state: bool = False,
                 seed: Optional[int] = None, master_weights: bool = False) -> None:
        super().__init__(params, {"lr": lr, "lambd": lambd, "alpha": alpha, "t0": t0, "weight_decay": weight_decay,
                                  "foreach": foreach, "maximize": maximize, "differentiable": differentiable,
                                  "capturable": capturable,
                                  "stochastic_rounding": stochastic_rounding,
                                  "stochastic_state": stochastic_state, "seed": seed,
                                  "master_weights": master_weights})


class Rprop(_FusedOptimizer):
    """torch.optim.Rprop (sign-based per-element step sizes: etas, step_sizes;
    maximize) on fusedopt's kernels; state: 'step', 'prev', 'step_size'
    (made from the group's lr at the parameter's first step)."""

    _spec = SPECS["Rprop"]

    def __init__(self, params: Params, lr: float = 1e-2, etas: tuple[float, float] = (0.5, 1.2),
                 step_sizes: tuple[float, float] = (1e-6, 50), *, capturable: bool = False,
                 foreach: Optional[bool] = None, maximize: bool = False, differentiable: bool = False,
                 stochastic_rounding: bool = False, stochastic_state: bool = False,
                 seed: Optional[int] = None, master_weights: bool = False) -> None:
        super().__init__(params, {"lr": lr, "etas": etas, "step_sizes": step_sizes, "capturable": capturable,
                                  "foreach": foreach, "maximize": maximize, "differentiable": differentiable,
                                  "stochastic_rounding": stochastic_rounding,
                                  "stochastic_state": stochastic_state, "seed": seed,
                                  "master_weights": master_weights})


class RMSprop(_FusedOptimizer):
    """torch.optim.RMSprop (centered, momentum, L2 weight decay, maximize) on
    fusedopt's kernels; state: 'step', 'square_avg', 'momentum_buffer', 'grad_avg'."""

    _spec = SPECS["RMSprop"]

    def __init__(self, params: Params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0, momentum: float = 0, centered: bool = False, capturable: bool = False,
                 foreach: Optional[bool] = None, maximize: bool = False, differentiable: bool = False, *,
                 stochastic_rounding: bool = False, stochastic_state: bool = False,
                 seed: Optional[int] = None, master_weights: bool = False) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "alpha": alpha, "eps": eps,
                                  "centered": centered, "weight_decay": weight_decay, "capturable": capturable,
                                  "foreach": foreach, "maximize": maximize, "differentiable": differentiable,
                                  "stochastic_rounding": stochastic_rounding,
                                  "stochastic_state": stochastic_state, "seed": seed,
                                  "master_weights": master_weights})


class Adagrad(_FusedOptimizer):
    """torch.optim.Adagrad (lr decay, L2 weight decay, initial accumulator,
    maximize) on fusedopt's kernels; state: 'step', 'sum' (made at construction,
    as torch makes it)."""

    _spec = SPECS["Adagrad"]

    def __init__(self, params: Params, lr: float = 1e-2, lr_decay: float = 0, weight_decay: float = 0,
                 initial_accumulator_value: float = 0, eps: float = 1e-10, foreach: Optional[bool] = None, *,
                 maximize: bool = False, differentiable: bool = False, fused: Optional[bool] = None,
                 stochastic_rounding: bool = False, stochastic_state: bool = False,
                 seed: Optional[int] = None, master_weights: bool = False) -> None:
        super().__init__(params, {"lr": lr, "lr_decay": lr_decay, "eps": eps, "weight_decay": weight_decay,
                                  "initial_accumulator_value": initial_accumulator_value, "foreach": foreach,
                                  "maximize": maximize, "differentiable": differentiable, "fused": fused,
                                  "stochastic_rounding": stochastic_rounding,
                                  "stochastic_state": stochastic_state, "seed": seed,
                                  "master_weights": master_weights})
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["step"] = torch.tensor(0.0, dtype=step_dtype())
                wide = master_weights and p.dtype in lowp.LOW  # the float32 state of a master-weighted parameter
                self.state[p]["sum"] = torch.full_like(p, initial_accumulator_value, dtype=torch.float32 if wide
                                                       else p.dtype, memory_format=torch.preserve_format)


class Lion(_FusedOptimizer):
    """Lion (Chen et al. 2023) with decoupled weight decay, as fusedopt.optim.Lion:
    ``p = p*(1 - lr*wd) - lr*sign(b1*m + (1-b1)*g)``, then ``m = b2*m + (1-b2)*g``;
    state: 'step', 'exp_avg'. torch.optim has no Lion."""

    _spec = SPECS["Lion"]

    def __init__(self, params: Params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0, maximize: bool = False, *,
                 stochastic_rounding: bool = False, stochastic_state: bool = False,
                 seed: Optional[int] = None, master_weights: bool = False) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay, "maximize": maximize,
                                  "stochastic_rounding": stochastic_rounding,
                                  "stochastic_state": stochastic_state, "seed": seed,
                                  "master_weights": master_weights})


class _Quant8Optimizer(_FusedOptimizer):
    """What the 8-bit classes share: loading their float32 class's state (``_form``)
    quantized, giving theirs decoded, and the uint8 codes kept through torch's load."""

    _form: _quant8.Float32Form

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """A state_dict() of this class, or its float32 class's (torch.optim.Adam for
        Adam8bit, torch.optim.AdamW for AdamW8bit, amsgrad False, also fusedopt.torch's;
        fusedopt.torch.Lion for Lion8bit): its moments are quantized with this optimizer's
        groups' block_size and min_8bit_size."""
        if _quant8.is_float32_format(state_dict):
            state_dict = _quant8.from_float32(state_dict, self.param_groups, self._form)
        super().load_state_dict(state_dict)

    def _restore_dtypes(self, state_dict: Mapping[str, Any]) -> None:
        """The codes, which torch's load made float32 values: the saved uint8 tensors again."""
        _quant8.restore_codes(self.param_groups, state_dict, self.state, self._form)

    def float32_state_dict(self) -> dict[str, Any]:
        """This state in the float32 class's format (torch.optim.Adam or AdamW with amsgrad
        False, fusedopt.torch.Lion): the moments decoded, loadable by that class."""
        return _quant8.to_float32(self.state_dict(), self._form)


class Adam8bit(_Quant8Optimizer):
    """fusedopt.optim.Adam8bit (bitsandbytes' and torchao's name): Adam with its moments
    as 8-bit codes and a float32 absmax per block of block_size elements (parameters of
    fewer than min_8bit_size elements keep float32 moments); float32 parameters only;
    state: 'step', 'exp_avg', 'exp_avg_sq' (uint8 codes), 'exp_avg_absmax',
    'exp_avg_sq_absmax'. load_state_dict also takes torch.optim.Adam's state (the moments
    quantized); float32_state_dict() gives this state in torch.optim.Adam's format."""

    _spec = _quant8.QUANT8_SPECS["Adam8bit"]
    _form = _quant8.FORMS["Adam8bit"]

    def __init__(self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, *, maximize: bool = False, block_size: int = 256,
                 min_8bit_size: int = 4096) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                                  "maximize": maximize, "block_size": block_size, "min_8bit_size": min_8bit_size})


class AdamW8bit(Adam8bit):
    """fusedopt.optim.AdamW8bit: AdamW (decoupled weight decay, default 1e-2) with 8-bit
    moments; everything else as Adam8bit (the float32 class: torch.optim.AdamW)."""

    _spec = _quant8.QUANT8_SPECS["AdamW8bit"]
    _form = _quant8.FORMS["AdamW8bit"]

    def __init__(self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, *, maximize: bool = False, block_size: int = 256,
                 min_8bit_size: int = 4096) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, maximize=maximize, block_size=block_size,
                         min_8bit_size=min_8bit_size)


class Lion8bit(_Quant8Optimizer):
    """fusedopt.optim.Lion8bit (bitsandbytes' name): Lion (as fusedopt.torch.Lion,
    decoupled weight decay) with its moment as 8-bit codes and a float32 absmax per block
    of block_size elements (parameters of fewer than min_8bit_size elements keep a float32
    moment); float32 parameters only; state: 'step', 'exp_avg' (uint8 codes),
    'exp_avg_absmax'. torch.optim has no Lion: load_state_dict also takes
    fusedopt.torch.Lion's state (the moment quantized), float32_state_dict() gives this
    state in its format."""

    _spec = _quant8.QUANT8_SPECS["Lion8bit"]
    _form = _quant8.FORMS["Lion8bit"]

    def __init__(self, params: Params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0, maximize: bool = False, *, block_size: int = 256,
                 min_8bit_size: int = 4096) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay, "maximize": maximize,
                                  "block_size": block_size, "min_8bit_size": min_8bit_size})


__all__ += ["Adam8bit", "AdamW8bit", "Lion8bit"]

# Not on the plan/engine path: L-BFGS's flat-vector passes and Muon's BLAS products (own files).
from ._lbfgs import LBFGS  # noqa: E402
from ._muon import Muon  # noqa: E402
from ._adafactor import Adafactor  # noqa: E402

__all__ += ["LBFGS", "Muon", "Adafactor"]
