"""What the torch classes off the plan (Muon, Adafactor) share: add_param_group
that does not keep a group whose options the class's ``_check_group``
refuses, torch's closure call, a group's lr as a number, and the commit of a
step that an exception from a signal handler cannot leave half done."""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch
from torch.optim import Optimizer


def group_lr(group: dict[str, Any]) -> Any:
    """The group's lr as a Python number (a 1-element tensor read; torch's refusal of others)."""
    lr = group["lr"]
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        return lr.item()
    return lr


class Commit:
    """The writes of a step that show after its native call: ``mark`` is passed to
    that call, which sets it to 1 once it has written the parameters (in the same
    call, so no exception from a signal handler comes between them). ``apply``
    shows the rest (the new state tensors, the copied-back parameters); every line
    of it can run again with the same result."""

    def __init__(self, apply: Callable[[], None]) -> None:
        self.mark = np.zeros(1)
        self.apply = apply


class CheckedGroups(Optimizer):
    _check_group: Callable[[dict[str, Any]], Any]
    # The step whose native call may have run but whose commit has not ended (None: none).
    _pending: Optional[Commit] = None

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

    def _finish(self) -> None:
        pending = self._pending
        if pending is None:
            return
        if pending.mark[0]:
            pending.apply()
        self._pending = None

    def _commit(self, pending: Commit, native: Callable[[np.ndarray], None]) -> None:
        """Run the native call that writes the parameters, then show the step.
        From the store of `pending` on, every look at the optimizer finds the
        step all done or not begun."""
        self._pending = pending
        try:
            native(pending.mark)
        except BaseException:
            if not pending.mark[0]:
                self._pending = None  # refused before writing anything
            raise
        self._finish()

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
