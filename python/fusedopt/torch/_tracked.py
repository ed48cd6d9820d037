"""The containers of fusedopt.torch's ``opt.state``: torch's ``defaultdict(dict)``
with every assignment counted.

A step reuses its plan (the arenas the state tensors are views of) only while the
state holds what the plan installed. In torch the state is the truth at every
step, so ``opt.state[p] = {...}`` (ZeroRedundancyOptimizer's load does this) or
``opt.state[p]["exp_avg"] = t`` must reach the next step. Counting assignments
makes that check free per step: a plan remembers the count it left and is
rebuilt when the count moved. The count is shared by all optimizers (a change
elsewhere rebuilds a plan needlessly, never wrongly); it moves only when the
state is assigned to, which a steady training loop does not do.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

_changes = [0]


def changes() -> int:
    """How many assignments to any fusedopt.torch state so far."""
    return _changes[0]


def _changed() -> None:
    _changes[0] += 1


class _Counted:
    """What both containers count the same way: removals and in-place merges."""

    def __delitem__(self, key: Any) -> None:
        _changed()
        super().__delitem__(key)  # type: ignore[misc]

    def __ior__(self, other: Any) -> Any:
        self.update(other)  # type: ignore[attr-defined]
        return self

    def pop(self, *args: Any) -> Any:
        _changed()
        return super().pop(*args)  # type: ignore[misc]

    def popitem(self) -> Any:
        _changed()
        return super().popitem()  # type: ignore[misc]

    def clear(self) -> None:
        _changed()
        super().clear()  # type: ignore[misc]


class Slots(_Counted, dict):
    """One parameter's state (``opt.state[p]``): a dict whose assignments are counted."""

    def __setitem__(self, key: Any, value: Any) -> None:
        _changed()
        super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        _changed()
        super().update(*args, **kwargs)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        _changed()
        return super().setdefault(key, default)


def _slots(value: Any) -> Any:
    # A plain dict assigned as a parameter's state is held as Slots (a copy of it),
    # so that later assignments to its entries are counted too.
    return Slots(value) if type(value) is dict else value


class State(_Counted, defaultdict):
    """``opt.state``: parameter -> Slots, created on first access as torch's defaultdict(dict)."""

    def __init__(self, items: Any = ()) -> None:
        super().__init__(Slots)
        for key, value in (items.items() if isinstance(items, Mapping) else items):
            super().__setitem__(key, _slots(value))
        _changed()

    def __reduce__(self) -> Any:
        return (State, (list(self.items()),))

    def __setitem__(self, key: Any, value: Any) -> None:
        _changed()
        super().__setitem__(key, _slots(value))

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]


def plain(state: Mapping[Any, Any]) -> dict[Any, Any]:
    """A state_dict()'s 'state' with plain dicts, as torch's (torch.load with
    weights_only=True accepts no other class)."""
    return {key: dict(value) if isinstance(value, Slots) else value for key, value in state.items()}
