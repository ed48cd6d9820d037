"""bfloat16/float16 parameters of fusedopt.torch (docs/lowbit.md, "fusedopt.torch"):
the tensors as NumPy arrays and back, the options' group keys, the seed a group
gets from ``seed=None``, and the float32 state that torch's load would narrow.

Imports torch: only fusedopt.torch uses it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping, MutableMapping, Sequence

import numpy as np
import torch

#: The key of a master-weighted parameter's float32 master in ``opt.state[p]``.
MASTER = "master_param"
LOW = (torch.bfloat16, torch.float16)
_MAX_SEED = 2 ** 64 - 1


def numpy_of(t: torch.Tensor) -> np.ndarray:
    """A bfloat16 tensor's memory as an ml_dtypes.bfloat16 array (a view): NumPy has no
    bfloat16 of its own, so torch's .numpy() refuses it."""
    import ml_dtypes  # only needed once a bfloat16 tensor is stepped
    return t.detach().resolve_neg().view(torch.int16).numpy().view(ml_dtypes.bfloat16)


def tensor_of(a: np.ndarray) -> torch.Tensor:
    """A tensor viewing array `a` (bfloat16 arrays included)."""
    if a.dtype.kind == "V" or a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def group_seed(group: MutableMapping[str, Any], index: int) -> None:
    """``seed=None``: the group's seed is torch.initial_seed() plus the group's index
    (mod 2**64), fixed when the group is added (torch.manual_seed decides it; torch's
    random stream is not drawn from)."""
    if "seed" in group and group["seed"] is None:
        group["seed"] = (torch.initial_seed() + index) % (_MAX_SEED + 1)


def widened_state(groups: Sequence[Mapping[str, Any]], saved_groups: Sequence[Mapping[str, Any]],
                  saved_state: Mapping[Any, Any], state: MutableMapping[Any, Any],
                  slots_of: Any) -> None:
    """torch's load_state_dict casts every floating state tensor to its parameter's dtype;
    with master_weights the master and the slots of a 16-bit parameter are float32: put
    back float32 copies of the saved tensors (called after torch's load, which
    checked and matched them)."""
    for group, old in zip(groups, saved_groups):
        if not old.get("master_weights"):
            continue
        keys = (MASTER,) + tuple(slots_of(group))
        for saved_id, p in zip(old["params"], group["params"]):
            entry = saved_state.get(saved_id)
            if p.dtype not in LOW or not entry:
                continue
            for key in keys:
                value = entry.get(key)
                if torch.is_tensor(value):
                    state[p][key] = value.detach().to(torch.float32, copy=True)


def masters(group: Mapping[str, Any], params: Sequence[torch.Tensor], arrays: Sequence[np.ndarray],
            state: Mapping[Any, Any]) -> Any:
    """The masters a bucket's engine carries on: None without master_weights or when no
    parameter has one yet (the first step makes them); else per parameter its saved
    master, the parameter widened where a 16-bit one has none yet (what the first step
    would make), None at float32/float64 parameters."""
    if not group.get("master_weights"):
        return None
    saved = [state[p].get(MASTER) if p in state else None for p in params]
    if all(m is None for m in saved):
        return None
    out: list[Any] = []
    for p, a, m in zip(params, arrays, saved):
        if p.dtype not in LOW:
            out.append(None)
        elif m is None:
            out.append(a.astype(np.float32))
        elif not torch.is_tensor(m) or m.shape != p.shape or not m.is_floating_point():
            got = f"a {m.dtype} tensor of shape {tuple(m.shape)}" if torch.is_tensor(m) else type(m).__name__
            at = next(i for i, q in enumerate(group["params"]) if q is p)
            raise ValueError(f"state of ['params'][{at}][{MASTER!r}]: expected a floating-point tensor of the "
                             f"parameter's shape {tuple(p.shape)}, got {got}")
        else:
            out.append(m.detach().to(torch.float32).numpy())
    return out


def grad_scale(value: Any) -> Any:
    """GradScaler's ``grad_scale`` (a 1-element tensor, or None) as a float: finite and > 0."""
    if value is None:
        return None
    if torch.is_tensor(value) and value.numel() != 1:
        raise ValueError(f"grad_scale must be a 1-element tensor (GradScaler's scale), got shape {tuple(value.shape)}")
    if not (torch.is_tensor(value) or isinstance(value, (int, float))) or isinstance(value, bool):
        raise TypeError(f"grad_scale must be a 1-element tensor or a number, got {type(value).__name__}")
    out = float(value)
    if not 0.0 < out < float("inf"):
        raise ValueError(f"grad_scale must be finite and > 0, got {out}")
    return out


@contextmanager
def unscaling(plans: Sequence[Any], scale: Any) -> Iterator[None]:
    """The plans' engines divide the gradients by `scale` in the kernel for the runs
    inside, and write them back unscaled, as torch's fused optimizers leave ``.grad``
    (none when scale is None)."""
    if scale is None:
        yield
        return
    engines = [bucket.engine.opt for plan in plans for bucket in plan.buckets]
    try:
        for engine in engines:
            engine.grad_scale = scale
            engine.unscale_in_place = True
        yield
    finally:
        for engine in engines:
            engine.grad_scale = None
            engine.unscale_in_place = False
