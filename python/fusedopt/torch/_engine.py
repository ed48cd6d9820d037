"""The bridge from a torch parameter group to fusedopt.optim: which
fusedopt.optim optimizer steps a bucket of the group, made from the group's
values, loaded with the bucket's state, and kept in step with the group.

Uses fusedopt.optim's public interface only: init(), state_arrays(),
state_dict()/load_state_dict() (the way to set its step count) and
hyper-parameter attributes. Imports numpy, not torch.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .. import optim
from ._specs import Spec, scalar, stochastic

# Settings that choose fusedopt.optim's rule and state slots: they cannot
# change while an engine has state, so a change of one makes a new plan.
_RULE_KEYS = {"SGD": ("nesterov",), "Adam": ("amsgrad", "decoupled_weight_decay"), "AdamW": ("amsgrad",),
              "RMSprop": ("centered",), "Adagrad": (), "Lion": (), "NAdam": (), "RAdam": (), "Adamax": (), "Adadelta": (), "ASGD": (), "Rprop": (),
              "Adam8bit": ("block_size", "min_8bit_size"), "AdamW8bit": ("block_size", "min_8bit_size"),
              "Lion8bit": ("block_size", "min_8bit_size")}


def engine_key(spec: Spec, group: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a group's engines are made for: the rule-choosing settings and slots."""
    return tuple(group[k] for k in _RULE_KEYS[spec.name]) + (group.get("master_weights"), stochastic(group)) + spec.slots(group)


def _engine_class(spec: Spec, group: Mapping[str, Any]) -> type[optim.Optimizer]:
    if spec.name == "Adam" and group["decoupled_weight_decay"]:
        return optim.AdamW  # torch's Adam(decoupled_weight_decay=True) is AdamW
    cls: type[optim.Optimizer] = getattr(optim, spec.name)
    return cls


def _values(spec: Spec, group: Mapping[str, Any]) -> dict[str, Any]:
    """The group's hyper-parameters under fusedopt.optim's names (the same as torch's)."""
    dropped = ("lr", "decoupled_weight_decay") if spec.name == "Adam" else ("lr",)  # Adam's picks the class
    out = {k: scalar(group[k]) for k in spec.hyper if k not in dropped}
    for pair in ("betas", "etas", "step_sizes"):
        if pair in out:
            out[pair] = tuple(float(scalar(b)) for b in out[pair])
    return out


def check_values(spec: Spec, group: Mapping[str, Any]) -> None:
    """fusedopt.optim's own checks of the group's values (a few ranges are
    stricter than torch's, e.g. RMSprop's alpha <= 1): an engine made and dropped."""
    _engine_class(spec, group)(lr=float(scalar(group["lr"])), **_values(spec, group))


class Engine:
    """One fusedopt.optim optimizer over a bucket's list of parameter arrays.

    Args:
        spec, group: the torch optimizer and the group's current values.
        arrays: the arrays the bucket steps (C-contiguous, writeable).
        moments: per slot, one array per parameter (its state to carry on), or
            None for a parameter whose slot starts afresh at ``fresh[slot]``.
        fresh: per slot, the value a new slot starts at.
        count: the step count the bucket's parameters share.
        float32_scalars: the rule's scalar state is rounded to float32 (the
            dtype of torch's 0-d tensors holding it is float32).
        masters: with master_weights, per parameter its float32 master to carry on
            (None: none, for 16-bit parameters the parameter itself, widened).
    """

    def __init__(self, spec: Spec, group: Mapping[str, Any], arrays: Sequence[np.ndarray],
                 moments: Mapping[str, Sequence[Optional[np.ndarray]]], fresh: Mapping[str, float],
                 count: int, float32_scalars: bool = False,
                 masters: Optional[Sequence[Optional[np.ndarray]]] = None) -> None:
        self.spec = spec
        options = {"float32_scalars": float32_scalars} if spec.scalars else {}
        self.opt = _engine_class(spec, group)(lr=float(scalar(group["lr"])), **_values(spec, group), **options)
        self.opt.init(list(arrays))
        if count or masters:
            # fusedopt.optim restores a step count and masters through its state dict only
            saved = self.opt.state_dict()
            saved["step_count"] = count
            for slot, leaves in moments.items():
                for i, (m, a) in enumerate(zip(leaves, arrays)):
                    like = saved[f"{slot}.{i}"]  # the slot's dtype: float32 for a master-weighted leaf
                    saved[f"{slot}.{i}"] = np.full_like(like, fresh[slot]) if m is None else \
                        np.asarray(m, dtype=like.dtype)
            for i, m in enumerate(masters or ()):
                if m is not None:
                    saved[f"master.{i}"] = np.asarray(m, dtype=np.float32)
            self.opt.load_state_dict(saved)
        else:
            views = self.opt.state_arrays()
            for slot, leaves in moments.items():
                for view, m in zip(views[slot], leaves):
                    np.copyto(view, np.asarray(fresh[slot], view.dtype) if m is None else m, casting="same_kind")
        self._views = self.opt.state_arrays()

    def masters(self) -> Optional[list[Optional[np.ndarray]]]:
        """Writable views of the float32 masters, one per parameter (None where there is
        none), or None before the first step makes them and without master_weights."""
        views: Optional[list[Optional[np.ndarray]]] = self.opt.master_arrays()
        return views

    def views(self, slot: str) -> list[np.ndarray]:
        """Writable views of a slot's arena, one per parameter: the state itself."""
        leaves: list[np.ndarray] = self._views[slot]
        return leaves

    def sync(self, group: Mapping[str, Any]) -> None:
        """Take the group's current values (validated by fusedopt.optim on assignment)."""
        self.opt.lr = float(scalar(group["lr"]))
        for key, value in _values(self.spec, group).items():
            if getattr(self.opt, key) != value:
                setattr(self.opt, key, value)

    @property
    def scalars(self) -> tuple[float, ...]:
        """The rule's scalar state, in the order of spec.scalars."""
        values = self.opt.scalar_state
        return tuple(values[name] for name, _ in self.spec.scalars)

    @scalars.setter
    def scalars(self, values: Sequence[float]) -> None:
        self.opt.scalar_state = {name: float(v) for (name, _), v in zip(self.spec.scalars, values)}

    @property
    def step_count(self) -> int:
        """Kernel runs so far (counted in the same native call as the run itself)."""
        count: int = self.opt.step_count
        return count

    def step(self, arrays: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        self.opt.step(arrays, grads)
