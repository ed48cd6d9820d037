"""_core.adafactor_step's refusals (csrc/bindings/register_adafactor.cpp): every
array is checked before anything is written, and a refusal names the argument
and the index (built only then) and what was expected."""
import numpy as np
import pytest

from fusedopt import _core


def _call(rng, change=None):
    """A valid call of a matrix, a vector and a 3-d leaf (float32), with `change(args)`
    applied; returns the arrays it may write and their values before."""
    shapes = [(3, 4), (5,), (2, 3, 2)]
    ps = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    args = {"params": ps, "grads": [rng.standard_normal(s).astype(np.float32) for s in shapes],
            "old_rows": [np.ones((3, 1), np.float32), None, np.ones((2, 3, 1), np.float32)],
            "old_cols": [np.ones((1, 4), np.float32), None, np.ones((2, 1, 2), np.float32)],
            "old_vars": [None, np.ones(5, np.float32), None],
            "new_rows": [np.zeros((3, 1), np.float32), None, np.zeros((2, 3, 1), np.float32)],
            "new_cols": [np.zeros((1, 4), np.float32), None, np.zeros((2, 1, 2), np.float32)],
            "new_vars": [None, np.zeros(5, np.float32), None],
            "hyper": np.tile([1.0, 1e-2, -0.8, 1e-7, 1e-3, 1.0, 0.0, 0.0], (3, 1)), "copy_grads": True}
    if change is not None:
        change(args)
    written = [a for k in ("params", "new_rows", "new_cols", "new_vars") for a in args[k]
               if isinstance(a, np.ndarray) and a.flags.writeable]
    return args, written, [a.copy() for a in written]


def _set(key, index, make):
    def change(args):
        args[key][index] = make(args)
    return change


CASES = [
    (_set("grads", 1, lambda a: a["grads"][1].astype(np.float64)), TypeError,
     r"adafactor_step: grads\[1\] must be float32, got float64"),
    (_set("params", 2, lambda a: a["params"][2].astype(np.float64)), TypeError,
     r"adafactor_step: params\[2\] must be float32, got float64"),
    (_set("grads", 0, lambda a: [[1.0] * 4] * 3), TypeError, r"adafactor_step: grads\[0\] must be a numpy array"),
    (_set("old_rows", 2, lambda a: np.ones((2, 1, 2), np.float32)), ValueError,
     r"adafactor_step: old_rows\[2\] must have shape \(2, 3, 1\), got \(2, 1, 2\)"),
    (_set("new_cols", 0, lambda a: np.zeros((4, 1), np.float32)), ValueError,
     r"adafactor_step: new_cols\[0\] must have shape \(1, 4\), got \(4, 1\)"),
    (_set("new_vars", 1, lambda a: None), TypeError, r"adafactor_step: new_vars\[1\] must be an array, got None"),
    (_set("old_vars", 1, lambda a: np.ones(6, np.float32)), ValueError,
     r"adafactor_step: old_vars\[1\] must have shape \(5,\), got \(6,\)"),
    (_set("grads", 2, lambda a: np.asfortranarray(a["grads"][2])), ValueError,
     r"adafactor_step: grads\[2\] must be C-contiguous and aligned"),
    (_set("new_rows", 0, lambda a: _read_only(np.zeros((3, 1), np.float32))), ValueError,
     r"adafactor_step: new_rows\[0\] must be writeable"),
    (_set("new_rows", 2, lambda a: a["old_rows"][2]), ValueError,
     r"adafactor_step: new_rows\[2\] must not share memory with adafactor_step: old_rows\[2\]"),
    (_set("new_vars", 1, lambda a: a["params"][0].reshape(-1)[:5]), ValueError,
     r"adafactor_step: (params\[0\] and adafactor_step: new_vars\[1\]|new_vars\[1\] and adafactor_step: "
     r"params\[0\]) must not share memory"),
]


def _read_only(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("change,error,match", CASES)
def test_a_refused_call_names_the_array_and_writes_nothing(change, error, match, rng):
    args, written, before = _call(rng, change)
    with pytest.raises(error, match=match):
        _core.adafactor_step(**args)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(written, before))


def test_the_valid_call_runs(rng):
    args, written, before = _call(rng)
    _core.adafactor_step(**args)
    assert all(a.tobytes() != b.tobytes() for a, b in zip(written, before))
