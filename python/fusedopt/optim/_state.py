"""The plain, versioned state of fusedopt.optim's optimizers.

``state_dict()`` holds only numpy arrays and Python scalars, so ``np.savez``
stores it and ``np.load`` gives it back (scalars then come back as 0-d
arrays, which loading accepts). Format "fusedopt.optim", version 2 (version 1,
the same without the rule's scalar state, still loads):

    format, version, kind (class name)            str, int, str
    hyper.<name>                                  each constructor hyper-parameter
                                                  (betas as hyper.betas, a 2-array)
    max_grad_norm                                 float, 0.0 for None
    check_finite                                  bool
    stochastic_rounding, seed                     bool, uint64: bfloat16/float16
                                                  rounding (absent in older states:
                                                  False, 0)
    stochastic_state                              bool: the 16-bit slots too (absent:
                                                  stochastic_rounding's value)
    master_weights                                bool: float32 masters and slots for
                                                  the 16-bit leaves (absent: False)
    lr_kind                                       "float", "schedule" or "callable"
    lr                                            float (lr_kind "float")
    schedule, schedule.names, schedule.<name>     a fusedopt schedule's class and
                                                  attributes (lr_kind "schedule")
    step_count                                    int, steps taken
    leaf_paths, leaf_dtypes                       str arrays, one entry per leaf
                                                  (empty before the first step)
    decay_mask                                    bool array, one entry per leaf
    slots                                         str array of the slot names
    <slot>.<i>                                    slot of leaf i (torch.optim's
                                                  names: exp_avg, momentum_buffer, ...)
    scalars                                       str array of the rule's scalar state
                                                  (empty for most rules; version 2)
    scalar.<name>                                 float, e.g. NAdam's mu_product
    master.<i>                                    float32 master of 16-bit leaf i
                                                  (master_weights, once it exists)

A callable lr is not saved (it may not be data): the optimizer that loads
the state keeps its own lr then.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Dict, List, Optional

import numpy as np

from .. import _state_fields as _fields, schedules
from . import _lowp as lowp

FORMAT = "fusedopt.optim"
VERSION = 2
MAX_STEP_COUNT = 2 ** 63 - 1  # the native count is a signed 64-bit integer


_FORMAT = _fields.Format(FORMAT, VERSION, oldest=1)
get, get_str, get_int, get_strs = _FORMAT.get, _FORMAT.get_str, _FORMAT.get_int, _FORMAT.get_strs
get_float = _FORMAT.get_float
header, check_header = _FORMAT.header, _FORMAT.check_header


def get_value(state: Mapping[str, Any], key: str) -> Any:
    """A scalar as a Python object (0-d arrays unwrapped), or a sequence as a tuple."""
    value = get(state, key)
    if isinstance(value, np.ndarray) and value.ndim == 1:
        return tuple(v.item() for v in value)
    value = _fields.scalar(value)
    return value.item() if isinstance(value, np.generic) else value


strs = _fields.strs


def lowp_entries(state: Mapping[str, Any]) -> Dict[str, Any]:
    """stochastic_rounding, stochastic_state, seed and master_weights as constructor keywords;
    a state saved before they existed rounds to nearest without masters (False, False, seed 0,
    False). One saved before stochastic_state existed, when stochastic_rounding rounded the
    slots too, keeps doing so (stochastic_state = its stochastic_rounding)."""
    out: Dict[str, Any] = {"stochastic_rounding": False, "stochastic_state": False, "seed": 0,
                           "master_weights": False}
    if "master_weights" in state:
        out["master_weights"] = _fields.as_bool(get(state, "master_weights"), "master_weights")
    if "stochastic_rounding" in state:
        out["stochastic_rounding"] = _fields.as_bool(get(state, "stochastic_rounding"), "stochastic_rounding")
        out["stochastic_state"] = out["stochastic_rounding"]
    if "stochastic_state" in state:
        out["stochastic_state"] = _fields.as_bool(get(state, "stochastic_state"), "stochastic_state")
    if "seed" in state:
        out["seed"] = lowp.check_seed("state['seed']", _fields.scalar(get(state, "seed")))
    return out


# -- schedules: attributes with their exact types (float vs numpy scalars round differently)
def schedule_entries(schedule: schedules.Schedule) -> Dict[str, Any]:
    name, attrs = schedule.get_config()
    out: Dict[str, Any] = {"schedule": name, "schedule.names": strs(attrs)}
    for key, value in attrs.items():
        # Python floats and ints are stored as themselves; numpy scalars keep their dtype.
        out[f"schedule.{key}"] = value if isinstance(value, (int, float)) else np.asarray(value)
    return out


def schedule_from(state: Mapping[str, Any]) -> schedules.Schedule:
    names = get_strs(state, "schedule.names")
    attrs: Dict[str, Any] = {}
    for key in names:
        value = get(state, f"schedule.{key}")
        if isinstance(value, np.ndarray) and value.ndim == 0:
            # np.savez turns Python floats into float64 0-d arrays: float64 arithmetic is
            # the same either way; float32 stays a numpy float32 scalar.
            value = value[()] if value.dtype == np.float32 else value.item()
        attrs[key] = value
    return schedules.schedule_from_config([get_str(state, "schedule"), attrs])


def master_leaves(state: Mapping[str, Any], paths: List[str], dtypes: List[str],
                  master: bool) -> Optional[List[Optional[np.ndarray]]]:
    """The saved masters (float32 arrays at the 16-bit leaves, None elsewhere), or None
    when the state has none (they are then created from the parameters at the next step)."""
    low = [i for i, d in enumerate(dtypes) if d in lowp.LOW_DTYPES]
    where = lambda i: f"master.{i} (leaf {paths[i] or 'at the root'})"  # noqa: E731
    for i, d in enumerate(dtypes):
        if d not in lowp.LOW_DTYPES and f"master.{i}" in state:
            raise ValueError(f"state: {where(i)}: a {d} leaf has no master")
    saved = [i for i in low if f"master.{i}" in state]
    if not saved:
        return None
    if not master:
        raise ValueError(f"state: {where(saved[0])} is a master weight, but the state has master_weights False")
    missing = [i for i in low if i not in saved]
    if missing:
        raise ValueError(f"state: {where(missing[0])} is missing (a state has the masters of all its "
                         f"16-bit leaves or none)")
    out: List[Optional[np.ndarray]] = [None] * len(paths)
    for i in saved:
        leaf = get(state, f"master.{i}")
        if not (isinstance(leaf, np.ndarray) and leaf.dtype == np.float32):
            raise TypeError(f"state: {where(i)} must be a float32 array, got "
                            f"{leaf.dtype if isinstance(leaf, np.ndarray) else type(leaf).__name__}")
        out[i] = _fields.snapshot(leaf)
    return out


def slot_leaves(state: Mapping[str, Any], name: str, paths: List[str], dtypes: List[str]) -> List[np.ndarray]:
    """The saved leaves of slot `name`, checked to be arrays of the saved dtypes."""
    out = []
    for i, (path, dtype) in enumerate(zip(paths, dtypes)):
        leaf = get(state, f"{name}.{i}")
        where = f"{name} at {path}" if path else name
        if not isinstance(leaf, np.ndarray):
            raise TypeError(f"state: {where} must be a numpy array, got {type(leaf).__name__}")
        if dtype == "bfloat16" and leaf.dtype == np.dtype("V2"):
            leaf = leaf.view(lowp.dtype(dtype))  # np.save stores ml_dtypes' bfloat16 as 2-byte voids
        if leaf.dtype != lowp.dtype(dtype):
            raise ValueError(f"state: {where} has dtype {leaf.dtype}, the state says {dtype}")
        out.append(_fields.snapshot(leaf))
    return out
