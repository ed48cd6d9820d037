"""The strategy class of a wrapped optimizer: its family by the mode, the one place that asks."""
from __future__ import annotations

import sys
from typing import Any

from .. import optimizers
from ._replicated import _ReplicatedOptim, _ReplicatedPaysage
from ._sharded_optim import _ShardedOptim
from ._sharded_paysage import _ShardedPaysage

# {(a fusedopt.optim optimizer, shard_state): the class DataParallel makes}
_STRATEGIES = {(False, False): _ReplicatedPaysage, (False, True): _ShardedPaysage,
               (True, False): _ReplicatedOptim, (True, True): _ShardedOptim}


def _is_optim(opt: Any) -> bool:
    """A fusedopt.optim optimizer (step(params, grads)); imported only when there is one."""
    optim = sys.modules.get("fusedopt.optim")  # not loaded: `opt` cannot be one of its optimizers
    return optim is not None and isinstance(opt, optim.Optimizer)


def strategy(optimizer: Any, shard_state: bool) -> type:
    is_optim = _is_optim(optimizer)
    if not (is_optim or isinstance(optimizer, optimizers.Optimizer)):
        raise TypeError(f"DataParallel wraps a fusedopt.optimizers or fusedopt.optim optimizer, "
                        f"got {type(optimizer).__name__}")
    return _STRATEGIES[is_optim, shard_state]
