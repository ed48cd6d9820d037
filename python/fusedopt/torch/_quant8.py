"""fusedopt.torch's Adam8bit, AdamW8bit and Lion8bit: fusedopt.optim's 8-bit
optimizers (docs/lowbit.md) as torch.optim.Optimizer subclasses on float32 CPU
tensors, and the conversion of their state from and to their float32 class's
(torch.optim.Adam/AdamW's, fusedopt.torch.Lion's).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping, NamedTuple, Optional

import numpy as np
import torch

from .. import _core
from ._specs import LOWP_OPTIONS, SPECS


class Float32Form(NamedTuple):
    """The float32 class of an 8-bit class's state."""

    name: str  # as messages name it
    moments: tuple[tuple[str, bool], ...]  # (slot, signed map)
    group_keys: Mapping[str, Any]  # its group keys the 8-bit class lacks, with their values in a converted state
    decoupled: Optional[bool] = None  # Adam/AdamW: the decoupled_weight_decay a loaded group must have


# torch.optim.Adam/AdamW's group keys that the 8-bit classes do not have, with their values
# in a state converted to torch's format.
_TORCH_KEYS = {"amsgrad": False, "foreach": None, "capturable": False, "differentiable": False, "fused": None}
_ADAM_MOMENTS = (("exp_avg", True), ("exp_avg_sq", False))
FORMS = {"Adam8bit": Float32Form("torch.optim.Adam", _ADAM_MOMENTS, _TORCH_KEYS, False),
         "AdamW8bit": Float32Form("torch.optim.AdamW", _ADAM_MOMENTS, _TORCH_KEYS, True),
         "Lion8bit": Float32Form("fusedopt.torch.Lion", (("exp_avg", True),), LOWP_OPTIONS)}


def check_slot(where: str, slot: str, p: torch.Tensor, value: Any) -> None:
    """A slot of the 8-bit state: the moments as uint8 codes or float32 (a parameter below
    min_8bit_size), of the parameter's shape; the absmax float32 and one-dimensional."""
    absmax = slot.endswith("_absmax")
    ok = torch.is_tensor(value) and value.layout == torch.strided and (
        value.dtype == torch.float32 and value.dim() == 1 if absmax else
        value.dtype in (torch.uint8, torch.float32) and value.shape == p.shape)
    if not ok:
        got = f"a {value.dtype} tensor of shape {tuple(value.shape)}" if torch.is_tensor(value) else \
            type(value).__name__
        want = "a 1-d float32 tensor (one absmax per block)" if absmax else \
            f"uint8 codes or float32 values of shape {tuple(p.shape)}"
        raise ValueError(f"{where}: expected {want}, got {got}")


QUANT8_SPECS = {name: replace(SPECS[name], slot_check=check_slot) for name in FORMS}


def from_float32(state_dict: Mapping[str, Any], groups: Any, form: Float32Form) -> dict[str, Any]:
    """A state dict of the float32 class (float32 moments, no absmax) in the 8-bit
    format: each moment quantized with its group's block_size and min_8bit_size (this
    optimizer's), by the step's encoder (fusedopt._core.quantize_blockwise)."""
    saved = state_dict["param_groups"]
    if len(saved) != len(groups):
        raise ValueError("loaded state dict has a different number of parameter groups "
                         f"({len(saved)}, the optimizer has {len(groups)})")
    out_groups, layout = [], {}
    for i, (old, group) in enumerate(zip(saved, groups)):
        if old.get("amsgrad"):
            raise ValueError(f"loaded param_groups[{i}]: a state with amsgrad=True has no 8-bit form")
        decoupled = form.decoupled
        if decoupled is not None and bool(old.get("decoupled_weight_decay", decoupled)) != decoupled:
            raise ValueError(f"loaded param_groups[{i}]: a state of torch.optim.{'Adam' if decoupled else 'AdamW'}; "
                             f"load it into fusedopt.torch.{'Adam8bit' if decoupled else 'AdamW8bit'}")
        new = {k: v for k, v in old.items() if k not in form.group_keys and k != "decoupled_weight_decay"}
        new["block_size"], new["min_8bit_size"] = group["block_size"], group["min_8bit_size"]
        out_groups.append(new)
        layout.update({pid: (new["block_size"], new["min_8bit_size"]) for pid in old["params"]})
    state = {}
    slots = {"step"} | {slot for slot, _ in form.moments}
    for pid, entry in state_dict["state"].items():
        entry = dict(entry)
        other = sorted(set(entry) - slots)
        if other:
            raise ValueError(f"state[{pid!r}]: {', '.join(map(repr, other))} is no slot of {form.name} "
                             f"(its slots: {', '.join(sorted(slots))}): a state of another optimizer")
        if pid in layout and entry:
            block, least = layout[pid]
            for slot, signed in form.moments:
                m = entry.get(slot)
                if not (torch.is_tensor(m) and m.dtype == torch.float32):
                    raise TypeError(f"state[{pid!r}][{slot!r}]: expected a float32 tensor (the 8-bit classes "
                                    f"step float32 parameters), got {type(m).__name__ if m is None else m.dtype}")
                values = m.detach().contiguous().numpy()
                if values.size >= least:
                    codes, absmax = _core.quantize_blockwise(values, signed, block)
                    entry[slot] = torch.from_numpy(np.asarray(codes).reshape(values.shape))
                    entry[f"{slot}_absmax"] = torch.from_numpy(np.asarray(absmax))
                else:
                    entry[slot] = m.detach().clone()
                    entry[f"{slot}_absmax"] = torch.zeros(0)
        state[pid] = entry
    return {"state": state, "param_groups": out_groups}


def to_float32(state_dict: Mapping[str, Any], form: Float32Form) -> dict[str, Any]:
    """An 8-bit state dict in the float32 class's format: the moments decoded, the
    absmax dropped, that class's group keys added (torch.optim.Adam's amsgrad False)."""
    block_of = {pid: g["block_size"] for g in state_dict["param_groups"] for pid in g["params"]}
    state = {}
    for pid, entry in state_dict["state"].items():
        entry = dict(entry)
        for slot, signed in form.moments:
            codes, absmax = entry.get(slot), entry.pop(f"{slot}_absmax", None)
            if torch.is_tensor(codes) and codes.dtype == torch.uint8:
                values = _core.dequantize_blockwise(codes.contiguous().numpy(), absmax.contiguous().numpy(),
                                                    signed, block_of[pid])
                entry[slot] = torch.from_numpy(np.asarray(values).reshape(codes.shape))
        state[pid] = entry
    groups = []
    for g in state_dict["param_groups"]:
        new = {k: v for k, v in g.items() if k not in ("block_size", "min_8bit_size")}
        new.update(form.group_keys)
        if form.decoupled is not None:
            new["decoupled_weight_decay"] = form.decoupled
        groups.append(new)
    return {"state": state, "param_groups": groups}


def is_float32_format(state_dict: Any) -> bool:
    """Whether a state dict holds float32 moments without absmax (the float32 class's)."""
    entries = state_dict.get("state", {}) if isinstance(state_dict, Mapping) else {}
    groups = state_dict.get("param_groups", []) if isinstance(state_dict, Mapping) else []
    has_8bit_keys = any(isinstance(g, Mapping) and "block_size" in g for g in groups)
    return not has_8bit_keys and all(isinstance(e, Mapping) and "exp_avg_absmax" not in e for e in entries.values())


def restore_codes(groups: Any, state_dict: Mapping[str, Any], state: Any, form: Float32Form) -> None:
    """After torch's load (which casts every state tensor to its float32 parameter's dtype):
    copies of the saved uint8 codes in place of their float32 casts."""
    for group, old in zip(groups, state_dict["param_groups"]):
        for pid, p in zip(old["params"], group["params"]):
            entry = state_dict["state"].get(pid) or {}
            for slot, _ in form.moments:
                codes = entry.get(slot)
                if torch.is_tensor(codes) and codes.dtype == torch.uint8:
                    state[p][slot] = codes.detach().clone()
