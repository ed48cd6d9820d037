"""Which strategy class DataParallel makes: the wrapped optimizer's family by the mode, the one
place that asks. The table is filled by the package's __init__, which imports the classes (they
subclass DataParallel, whose constructor looks here)."""
from __future__ import annotations

import sys
from typing import Any

from .. import optimizers

# {(a fusedopt.optim optimizer, shard_state): the class DataParallel makes}
STRATEGIES: dict[tuple[bool, bool], type] = {}


def _is_optim(opt: Any) -> bool:
    """A fusedopt.optim optimizer (step(params, grads)); imported only when there is one."""
    optim = sys.modules.get("fusedopt.optim")  # not loaded: `opt` cannot be one of its optimizers
    return optim is not None and isinstance(opt, optim.Optimizer)


def strategy(optimizer: Any, shard_state: bool) -> type:
    is_optim = _is_optim(optimizer)
    if not (is_optim or isinstance(optimizer, optimizers.Optimizer)):
        raise TypeError(f"DataParallel wraps a fusedopt.optimizers or fusedopt.optim optimizer, "
                        f"got {type(optimizer).__name__}")
    return STRATEGIES[is_optim, shard_state]
