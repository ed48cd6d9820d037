"""add_param_group for the classes off the plan (Muon, Adafactor): a group
whose options the class's ``_check_group`` refuses is not kept."""
from __future__ import annotations

from typing import Any, Callable

from torch.optim import Optimizer


class CheckedGroups(Optimizer):
    _check_group: Callable[[dict[str, Any]], Any]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        try:
            type(self)._check_group(self.param_groups[-1])
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise
