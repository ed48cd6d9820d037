"""The check of a torch-format state dict before fusedopt.torch loads it.

torch.optim's load_state_dict matches saved parameters to the optimizer's by
position and checks only the group sizes; a moment of the wrong shape or a
missing one fails later, inside a step. fusedopt.torch checks the whole state
first, so that loading is all or nothing: the groups' hyper-parameters (as
torch's constructor checks them), and for every parameter the step count and
the moments its group's settings use.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from ._engine import check_values
from ._plan import check_scalar, check_slot, check_step, named_group
from ._specs import Spec, check_hyper, load_defaults


def check_state_dict(spec: Spec, groups: Sequence[Mapping[str, Any]], state_dict: Any) -> None:
    """ValueError/TypeError naming the first thing of `state_dict` that
    fusedopt.torch cannot load into an optimizer with these `groups`."""
    if not isinstance(state_dict, Mapping) or "state" not in state_dict or "param_groups" not in state_dict:
        raise ValueError("a state dict is a mapping with 'state' and 'param_groups' (from Optimizer.state_dict())")
    saved, state = state_dict["param_groups"], state_dict["state"]
    if len(saved) != len(groups):
        raise ValueError("loaded state dict has a different number of parameter groups "
                         f"({len(saved)}, the optimizer has {len(groups)})")
    settings = []
    for i, (group, old) in enumerate(zip(groups, saved)):
        if len(group["params"]) != len(old["params"]):
            raise ValueError(f"loaded state dict contains a parameter group that doesn't match the size of "
                             f"optimizer's group: param_groups[{i}] has {len(old['params'])} parameters, "
                             f"the optimizer's {len(group['params'])}")
        merged = {**load_defaults(spec, old), **old}
        if spec.name == "AdamW":
            merged["decoupled_weight_decay"] = True
        check_hyper(spec, merged, f"loaded param_groups[{i}]")
        with named_group(i, "loaded "):
            check_values(spec, merged)
        settings.append(merged)
    where = {saved_id: (gi, p) for gi, (group, old) in enumerate(zip(groups, saved))
             for saved_id, p in zip(old["params"], group["params"])}
    for saved_id, entry in state.items():
        if saved_id not in where:
            continue  # torch keeps state of unknown ids as it is
        gi, p = where[saved_id]
        name = f"state[{saved_id!r}]"
        if not isinstance(entry, Mapping):
            raise TypeError(f"{name}: expected a dict of state tensors, got {type(entry).__name__}")
        if not entry:
            continue
        if spec.keeps_step:
            if "step" not in entry:
                raise ValueError(f"{name} lacks 'step', which {spec.name} keeps for every stepped parameter")
            check_step(f"{name}['step']", entry["step"])
        for scalar_name, _ in spec.scalars:
            if scalar_name not in entry:
                raise ValueError(f"{name} lacks {scalar_name!r}, which {spec.name} keeps for every stepped parameter")
            check_scalar(f"{name}[{scalar_name!r}]", entry[scalar_name])
        for slot in spec.slots(settings[gi]):
            if entry.get(slot) is None:
                if spec.keeps_step:  # SGD alone starts a missing momentum buffer at its next step
                    raise ValueError(f"{name} lacks {slot!r}, which the settings of param_groups[{gi}] use")
                continue
            (spec.slot_check or check_slot)(f"{name}[{slot!r}]", slot, p, entry[slot])
