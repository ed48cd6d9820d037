"""What fusedopt.optim.Adafactor's checked step leaves for the steps after it,
so that a step of an unchanged tree runs no per-leaf Python: the tree's
structure (a _core.Plan walks it natively), the leaves' paths, the hyper rows
of the native call, and a spare set of state arrays.

The state is two sets of arrays used in turn: a step writes the spare set
(never the state it reads) and its commit swaps the two, so the state is
never half stepped and no step allocates. Every array the native call gets is
checked there before anything is written; a refusal sends the step back to
the checked path, which names the leaf."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import _core

# Per slot (row_var, col_var, variance), one entry per leaf: its array, or None where absent.
Slots = Tuple[List[Optional[np.ndarray]], List[Optional[np.ndarray]], List[Optional[np.ndarray]]]


def tree_plan(params: Any) -> Optional[_core.Plan]:
    """The native record of `params`' structure, or None for a tree it does not take
    (such trees always take the checked path)."""
    try:
        return _core.Plan(params, "params")
    except (TypeError, ValueError):
        return None


class StepPlan:
    def __init__(self, tree: Optional[_core.Plan], paths: List[str], hyper: Dict[str, Any],
                 rows: Sequence[Sequence[float]]) -> None:
        self.tree, self.paths, self.hyper = tree, paths, hyper
        self.rows = np.array(rows, np.float64).reshape(len(paths), 8)
        self.spare: Optional[Slots] = None  # the arrays the next step writes (not the state's)

    def leaves(self, params: Any, grads: Any) -> Optional[Tuple[List[Any], List[Any]]]:
        """Both trees' leaves in the plan's order, or None when a tree's structure differs."""
        if self.tree is None:
            return None
        try:
            return self.tree.flatten(params, "params"), self.tree.flatten(grads, "grads")
        except (TypeError, ValueError):
            return None

    def hyper_rows(self, hyper: Dict[str, Any], count: int, row: Any) -> np.ndarray:
        """The native call's rows at step `count`; `row(hyper, count)` makes one leaf's row
        when the hyper-parameters were reassigned since the last step."""
        if hyper is not self.hyper:
            self.rows[:] = row(hyper, count)
            self.hyper = hyper
        self.rows[:, 0] = count
        return self.rows
