"""bfloat16 and float16 leaves of fusedopt.optim (docs/lowbit.md): the dtypes by
name, and the checks of the stochastic rounding options."""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

#: The leaf dtypes fusedopt.optim steps, by the names Plan.leaf_dtypes and state_dict use.
LEAF_DTYPES = ("float32", "float64", "bfloat16", "float16")
#: The 16-bit ones: with master_weights, each keeps a float32 master and float32 slots.
LOW_DTYPES = ("bfloat16", "float16")

MAX_SEED = 2 ** 64 - 1


def dtype(name: str) -> np.dtype:
    """The NumPy dtype of a leaf dtype name; bfloat16 is ml_dtypes'."""
    if name == "bfloat16":
        import ml_dtypes  # registers bfloat16 with NumPy
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def check_seed(name: str, value: Any) -> int:
    """An int in [0, 2**64) (numpy integers included; bool refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int in [0, 2**64), got {type(value).__name__}")
    out = int(value)
    if not 0 <= out <= MAX_SEED:
        raise ValueError(f"{name} must be in [0, 2**64), got {out}")
    return out
