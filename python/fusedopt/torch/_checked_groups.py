"""What the torch classes off the plan (Muon, Adafactor) share: add_param_group
that does not keep a group whose options the class's ``_check_group``
refuses, torch's closure call, a group's lr as a number, and ``state`` that
finishes a pending commit (optim/_commit.py) first."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch.optim import Optimizer

from ..optim._commit import Commit, PendingCommit


def group_lr(group: dict[str, Any]) -> Any:
    """The group's lr as a Python number (a 1-element tensor read; torch's refusal of others)."""
    lr = group["lr"]
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        return lr.item()
    return lr


class CheckedGroups(PendingCommit, Optimizer):
    _check_group: Callable[[dict[str, Any]], Any]

    @property
    def state(self) -> Any:  # type: ignore[override]
        """torch's ``state``, once any step an exception cut short between its native
        call and the end of its commit is completed (or dropped, when the call did not run)."""
        self._finish()
        return self.__dict__["_state"]

    @state.setter
    def state(self, value: Any) -> None:
        self._finish()
        self.__dict__["_state"] = value

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        if "state" in state:  # torch's __setstate__ (and load_state_dict) update __dict__, past the property
            self.state = state.pop("state")
        super().__setstate__(state)

    @staticmethod
    def _closure_loss(closure: Optional[Callable[[], Any]]) -> Any:
        """torch's: the closure's result, evaluated with autograd on; None without a closure."""
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        try:
            type(self)._check_group(self.param_groups[-1])
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise
