"""What differs between the optimizers of fusedopt.torch, as data: their
hyper-parameters and how torch 2.13 checks them, the state slots a group's
settings use, and whether the step count enters the update.

Imports neither torch nor numpy: fusedopt.torch and its state checks read it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

# Checks of one hyper-parameter: (group key, torch's name for it in messages, predicate).
_Check = tuple[str, str, Callable[[float], bool]]


def _nonneg(x: float) -> bool:
    return 0.0 <= x < math.inf


def _unit(x: float) -> bool:
    return 0.0 <= x < 1.0


def _unit_closed(x: float) -> bool:
    return 0.0 <= x <= 1.0


_LR: _Check = ("lr", "learning rate", _nonneg)
_EPS: _Check = ("eps", "epsilon value", _nonneg)
_WD: _Check = ("weight_decay", "weight_decay value", _nonneg)


@dataclass(frozen=True)
class Spec:
    """One optimizer of fusedopt.torch.

    Attributes:
        name: the class name (torch.optim's, or Lion).
        hyper: group keys that are hyper-parameters, in the order the engine takes them.
        checks: the value checks of torch 2.13's constructor (message names); betas,
            where the spec has them, are checked entry by entry (torch names the index).
        flags: implementation flags of torch's signature that fusedopt refuses when true.
        counted: whether the step count enters the update (bias correction, lr decay);
            parameters of one group then share a native call only with equal counts.
        keeps_step: whether torch keeps a per-parameter 'step' in the state.
        slots: the state slots that a group's settings use, in torch's names.
        fresh: the value a slot starts at (before the first step).
        slot_check: the check of a state slot (Adam8bit's codes and absmax); None:
            a floating-point tensor of the parameter's shape.
        made_by_first_step: the slot the rule's first step makes (Rprop's
            'step_size', from lr), not the step count: a parameter whose state
            has it steps as a later step, whatever its count.
        scalars: per-parameter scalar state (0-d tensors in torch's state, e.g.
            NAdam's 'mu_product') with the value each starts at; fusedopt.optim's
            rule keeps the same scalars, so parameters share a native call only
            with equal values.
        scalars_in_place: torch updates the scalar state in place, rounded to its
            tensor's dtype (NAdam's ``mu_product *= mu``); else it makes each value
            anew in its default dtype and copies it in (ASGD's ``torch.as_tensor``).
    """

    name: str
    hyper: tuple[str, ...]
    checks: tuple[_Check, ...]
    flags: tuple[str, ...]
    counted: bool
    keeps_step: bool
    slots: Callable[[Mapping[str, Any]], tuple[str, ...]]
    fresh: Callable[[str, Mapping[str, Any]], float] = lambda slot, defaults: 0.0
    scalars: tuple[tuple[str, float], ...] = ()
    scalars_in_place: bool = True
    made_by_first_step: str = ""
    slot_check: Any = None  # check(where, slot, p, value) of a state slot, when not a floating tensor of p's shape


def _sgd_slots(g: Mapping[str, Any]) -> tuple[str, ...]:
    return ("momentum_buffer",) if g["momentum"] != 0 else ()


def _adam_slots(g: Mapping[str, Any]) -> tuple[str, ...]:
    return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if g["amsgrad"] else ("exp_avg", "exp_avg_sq")


def _rmsprop_slots(g: Mapping[str, Any]) -> tuple[str, ...]:
    return ("square_avg",) + (("momentum_buffer",) if g["momentum"] > 0 else ()) + (
        ("grad_avg",) if g["centered"] else ())


_ADAM_HYPER = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize")
_ADAM_CHECKS = (_LR, _EPS, _WD)

SPECS: dict[str, Spec] = {
    "SGD": Spec("SGD", ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"),
                (_LR, ("momentum", "momentum value", _nonneg), ("dampening", "dampening value", math.isfinite), _WD),
                ("foreach", "differentiable", "fused"), counted=False, keeps_step=False, slots=_sgd_slots),
    "Adam": Spec("Adam", _ADAM_HYPER + ("decoupled_weight_decay",), _ADAM_CHECKS,
                 ("foreach", "capturable", "differentiable", "fused"), counted=True, keeps_step=True,
                 slots=_adam_slots),
    "AdamW": Spec("AdamW", _ADAM_HYPER, _ADAM_CHECKS, ("foreach", "capturable", "differentiable", "fused"),
                  counted=True, keeps_step=True, slots=_adam_slots),
    "RMSprop": Spec("RMSprop", ("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize"),
                    (_LR, _EPS, ("momentum", "momentum value", _nonneg), _WD, ("alpha", "alpha value", _nonneg)),
                    ("capturable", "foreach", "differentiable"), counted=False, keeps_step=True,
                    slots=_rmsprop_slots),
    "Adagrad": Spec("Adagrad", ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps", "maximize"),
                    (_LR, ("lr_decay", "lr_decay value", _nonneg), _WD,
                     ("initial_accumulator_value", "initial_accumulator_value value", _nonneg), _EPS),
                    ("foreach", "differentiable", "fused"), counted=True, keeps_step=True,
                    slots=lambda g: ("sum",),
                    fresh=lambda slot, defaults: float(defaults["initial_accumulator_value"])),
    "NAdam": Spec("NAdam", ("lr", "betas", "eps", "weight_decay", "momentum_decay", "decoupled_weight_decay",
                            "maximize"),
                  (_LR, _EPS, _WD, ("momentum_decay", "momentum_decay value", _nonneg)),
                  ("foreach", "capturable", "differentiable"), counted=True, keeps_step=True,
                  slots=lambda g: ("exp_avg", "exp_avg_sq"), scalars=(("mu_product", 1.0),)),
    "RAdam": Spec("RAdam", ("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay", "maximize"),
                  _ADAM_CHECKS, ("foreach", "capturable", "differentiable"), counted=True, keeps_step=True,
                  slots=lambda g: ("exp_avg", "exp_avg_sq")),
    "Adamax": Spec("Adamax", ("lr", "betas", "eps", "weight_decay", "maximize"), _ADAM_CHECKS,
                   ("foreach", "differentiable", "capturable"), counted=True, keeps_step=True,
                   slots=lambda g: ("exp_avg", "exp_inf")),
    "Adadelta": Spec("Adadelta", ("lr", "rho", "eps", "weight_decay", "maximize"),
                     (_LR, ("rho", "rho value", _unit_closed), _EPS, _WD),
                     ("foreach", "capturable", "differentiable"), counted=False, keeps_step=True,
                     slots=lambda g: ("square_avg", "acc_delta")),
    "ASGD": Spec("ASGD", ("lr", "lambd", "alpha", "t0", "weight_decay", "maximize"),
                 (_LR, ("lambd", "lambd value", _nonneg), ("alpha", "alpha value", math.isfinite),
                  ("t0", "t0 value", math.isfinite), _WD),
                 ("foreach", "differentiable", "capturable"), counted=True, keeps_step=True,
                 slots=lambda g: ("ax",), scalars=(("eta", -1.0), ("mu", 1.0)), scalars_in_place=False),
    "Rprop": Spec("Rprop", ("lr", "etas", "step_sizes", "maximize"), (_LR,),
                  ("capturable", "foreach", "differentiable"), counted=False, keeps_step=True,
                  slots=lambda g: ("step_size", "prev"), made_by_first_step="step_size"),
    "Lion": Spec("Lion", ("lr", "betas", "weight_decay", "maximize"), (_LR, _WD),
                 (), counted=False, keeps_step=True, slots=lambda g: ("exp_avg",)),
}

# The options of bfloat16/float16 parameters (docs/lowbit.md), group keys of every class,
# with the value a group saved without them (by torch.optim) loads with, as fusedopt.optim's.
LOWP_OPTIONS: dict[str, Any] = {"stochastic_rounding": False, "stochastic_state": False, "seed": 0,
                                "master_weights": False}
for _name, _spec in SPECS.items():
    SPECS[_name] = replace(_spec, hyper=_spec.hyper + tuple(LOWP_OPTIONS))
# The 8-bit classes (fusedopt.optim's Adam8bit/AdamW8bit/Lion8bit): float32 parameters, no 16-bit options.
_QUANT8_HYPER = ("lr", "betas", "eps", "weight_decay", "maximize", "block_size", "min_8bit_size")
QUANT8_SLOTS = ("exp_avg", "exp_avg_sq", "exp_avg_absmax", "exp_avg_sq_absmax")
for _name in ("Adam8bit", "AdamW8bit"):
    SPECS[_name] = Spec(_name, _QUANT8_HYPER, _ADAM_CHECKS, (), counted=True, keeps_step=True,
                        slots=lambda g: QUANT8_SLOTS)
# Lion8bit: Lion's hyper-parameters and checks, one moment.
SPECS["Lion8bit"] = Spec("Lion8bit", ("lr", "betas", "weight_decay", "maximize", "block_size", "min_8bit_size"),
                         (_LR, _WD), (), counted=False, keeps_step=True, slots=lambda g: ("exp_avg", "exp_avg_absmax"))

# With stochastic rounding the random bits of a step are keyed by its number, the
# parameter's 'step' (docs/lowbit.md): parameters share a native call only with equal
# counts, and SGD keeps a 'step' too (its momentum buffer still starts at the first
# step that uses it).
STOCHASTIC_SPECS: dict[str, Spec] = {
    name: replace(spec, counted=True, keeps_step=True,
                  made_by_first_step="momentum_buffer" if name == "SGD" else spec.made_by_first_step)
    for name, spec in SPECS.items()}

# Keys of torch's groups that name an implementation, not the math: loading a
# state saved by torch.optim's foreach or fused optimizers resets them.
IMPLEMENTATION_DEFAULTS: dict[str, Any] = {"foreach": None, "fused": None, "capturable": False, "differentiable": False}
# Settings that torch's __setstate__ gives a loaded group lacking them (states
# saved by older torch versions), with torch's values.
LOAD_DEFAULTS: dict[str, Any] = {"maximize": False, "amsgrad": False, "nesterov": False,
                                 "decoupled_weight_decay": False, "momentum": 0, "centered": False, **LOWP_OPTIONS}


def load_defaults(spec: Spec, group: Mapping[str, Any]) -> dict[str, Any]:
    """The values a loaded group lacking keys of spec's takes: LOAD_DEFAULTS', except that a
    group saved before stochastic_state existed (when stochastic_rounding rounded the slots
    too) keeps rounding its slots as it did."""
    out = {k: v for k, v in LOAD_DEFAULTS.items() if k in spec.hyper}
    if "stochastic_state" in out:
        out["stochastic_state"] = group.get("stochastic_rounding", False)
    return out


def stochastic(group: Mapping[str, Any]) -> bool:
    """Whether a group rounds anything stochastically (its steps are then keyed by 'step')."""
    return bool(group.get("stochastic_rounding") or group.get("stochastic_state"))


def scalar(x: Any) -> Any:
    """A 1-element tensor (torch allows them for lr, betas, weight_decay) as a float."""
    item = getattr(x, "item", None)
    return item() if callable(item) and not isinstance(x, (bool, int, float)) else x


def check_hyper(spec: Spec, group: Mapping[str, Any], where: str = "") -> None:
    """Raise torch's ValueError for a value that torch 2.13's constructor
    refuses, and for non-finite ones, which fusedopt refuses too; TypeError for
    a value that is not a number (or bool). With `where` (e.g. "param_groups[1]")
    the message starts by naming the group's entry: ``param_groups[1]['lr']: ...``."""

    def at(key: str) -> str:
        return f"{where}[{key!r}]: " if where else ""

    for key in spec.hyper:
        if key not in group:
            raise ValueError(f"{where or 'the defaults'} lack {spec.name}'s hyper-parameter {key!r}")
    if "betas" in spec.hyper:
        _check_betas(group["betas"], at("betas"))
    if "etas" in spec.hyper:
        etaminus, etaplus = _number_pair(group["etas"], at("etas"), "etas")
        if not 0.0 < etaminus < 1.0 < etaplus:
            raise ValueError(f"{at('etas')}Invalid eta values: {etaminus}, {etaplus}")
    if "step_sizes" in spec.hyper:
        for i, size in enumerate(_number_pair(group["step_sizes"], at("step_sizes"), "step_sizes")):
            if not _nonneg(size):  # torch takes any; a negative or infinite size makes no step
                raise ValueError(f"{at('step_sizes')}Invalid step size at index {i}: {size}")
    for key, label, ok in spec.checks:
        _check_one_element(group[key], f"{at(key)}Tensor {key}")
        value = scalar(group[key])
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{at(key)}{key} must be a number, got {type(value).__name__}")
        if not ok(value):
            raise ValueError(f"{at(key)}Invalid {label}: {value}")
    if "seed" in spec.hyper:
        _check_seed(group["seed"], at("seed"))
    if spec.name == "SGD" and group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
        raise ValueError(f"{at('nesterov')}Nesterov momentum requires a momentum and zero dampening")
    for key in spec.hyper:
        if key in ("amsgrad", "maximize", "nesterov", "centered", "decoupled_weight_decay", "stochastic_rounding",
                   "stochastic_state", "master_weights") and \
                not isinstance(group[key], bool):
            raise TypeError(f"{at(key)}{key} must be a bool, got {type(group[key]).__name__}")


def _check_seed(value: Any, at: str) -> None:
    """TypeError/ValueError unless value is an int in [0, 2**64) (bool refused)."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{at}seed must be an int in [0, 2**64) or None, got {type(value).__name__}")
    if not 0 <= value.__index__() < 2 ** 64:
        raise ValueError(f"{at}seed must be in [0, 2**64), got {value}")


def _is_tensor(x: Any) -> bool:
    """Whether x is a tensor (without importing torch: it has numel())."""
    return callable(getattr(x, "numel", None))


def _check_one_element(x: Any, what: str) -> None:
    """torch's ValueError for a tensor hyper-parameter of other than one element."""
    if _is_tensor(x) and x.numel() != 1:
        raise ValueError(f"{what} must be 1-element")


def _number_pair(pair: Any, at: str, name: str) -> tuple[float, float]:
    """A pair of numbers (1-element tensors read as theirs), or TypeError."""
    if not isinstance(pair, Sequence) or len(pair) != 2:
        raise TypeError(f"{at}{name} must be a pair of numbers, got {pair!r}")
    values = tuple(scalar(x) for x in pair)
    for i, x in enumerate(values):
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise TypeError(f"{at}{name}[{i}] must be a number, got {type(x).__name__}")
    return values[0], values[1]


def _check_betas(betas: Any, at: str) -> None:
    if not isinstance(betas, Sequence) or len(betas) != 2:
        raise TypeError(f"{at}betas must be a pair of numbers, got {betas!r}")
    if _is_tensor(betas[0]) != _is_tensor(betas[1]):
        raise ValueError(f"{at}betas must be either both floats or both Tensors")
    for i, b in enumerate(betas):
        _check_one_element(b, f"{at}Tensor betas[{i}]")
    for i, b in enumerate(scalar(b) for b in betas):
        if isinstance(b, bool) or not isinstance(b, (int, float)):
            raise TypeError(f"{at}betas[{i}] must be a number, got {type(b).__name__}")
        if not _unit(b):
            raise ValueError(f"{at}Invalid beta parameter at index {i}: {b}")


def check_flags(spec: Spec, flags: Mapping[str, Any]) -> None:
    """ValueError for an implementation flag set to True (torch's foreach,
    fused, capturable, differentiable): fusedopt has one implementation, which
    is already fused, runs on CPU and is not differentiable."""
    for key in spec.flags:
        if flags.get(key):
            why = {"foreach": "its CPU kernels step every tensor of a group in one call already",
                   "fused": "its CPU kernels are already fused",
                   "capturable": "it has no CUDA graphs to capture (CPU tensors only)",
                   "differentiable": "its steps are not recorded by autograd"}[key]
            raise ValueError(f"fusedopt.torch.{spec.name} does not take {key}=True: {why}; "
                             f"leave {key} at its default")
