"""The containers of fusedopt.torch's ``opt.state``: torch's ``defaultdict(dict)``
with every assignment counted.

A step reuses its plan (the arenas the state tensors are views of) only while the
state holds what the plan installed. In torch the state is the truth at every
step, so ``opt.state[p] = {...}`` (ZeroRedundancyOptimizer's load does this) or
``opt.state[p]["exp_avg"] = t`` must reach the next step. Counting assignments
makes that check free per step: a plan remembers the count it left and is
rebuilt when the count moved.

Each ``State`` counts its own changes, so that one optimizer's plan is not
rebuilt by another's (two optimizers stepped in turn, as a GAN's, rebuilt each
other's plan at every step when the count was shared: each rebuild's install
is an assignment). A parameter's ``Slots`` counts into every State it was put
in (a dict shared by two optimizers moves both counts); a State it was taken
out of still counts its changes, needlessly, never wrongly. The counts move
only when the state is assigned to, which a steady training loop does not do.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any


class _Counted:
    """What both containers count the same way: removals and in-place merges,
    each into every count in ``_owners``."""

    _owners: list[list[int]]

    def _changed(self) -> None:
        for count in self._owners:
            count[0] += 1

    def __delitem__(self, key: Any) -> None:
        self._changed()
        super().__delitem__(key)  # type: ignore[misc]

    def __ior__(self, other: Any) -> Any:
        self.update(other)  # type: ignore[attr-defined]
        return self

    def pop(self, *args: Any) -> Any:
        self._changed()
        return super().pop(*args)  # type: ignore[misc]

    def popitem(self) -> Any:
        self._changed()
        return super().popitem()  # type: ignore[misc]

    def clear(self) -> None:
        self._changed()
        super().clear()  # type: ignore[misc]


class Slots(_Counted, dict):
    """One parameter's state (``opt.state[p]``): a dict whose assignments are counted
    into the counts of the States holding it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._owners = []
        super().__init__(*args, **kwargs)

    def __reduce__(self) -> Any:
        return (Slots, (dict(self),))  # the States that unpickle it count it again

    def __setitem__(self, key: Any, value: Any) -> None:
        self._changed()
        super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._changed()
        super().update(*args, **kwargs)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self._changed()
        return super().setdefault(key, default)


def _slots(value: Any) -> Any:
    # A plain dict assigned as a parameter's state is held as Slots (a copy of it),
    # so that later assignments to its entries are counted too.
    return Slots(value) if type(value) is dict else value


class State(_Counted, defaultdict):
    """``opt.state``: parameter -> Slots, created on first access as torch's
    defaultdict(dict). ``count[0]`` counts the changes to it and to its Slots."""

    def __init__(self, items: Any = ()) -> None:
        super().__init__(Slots)
        self.count = [0]
        self._owners = [self.count]
        for key, value in (items.items() if isinstance(items, Mapping) else items):
            super().__setitem__(key, self._own(value))
        self._changed()

    def _own(self, value: Any) -> Any:
        value = _slots(value)
        if isinstance(value, Slots) and not any(c is self.count for c in value._owners):
            value._owners.append(self.count)
        return value

    def __reduce__(self) -> Any:
        return (State, (list(self.items()),))

    def __setitem__(self, key: Any, value: Any) -> None:
        self._changed()
        super().__setitem__(key, self._own(value))  # (defaultdict's new entries come here too)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]


def changes(state: State) -> int:
    """How many assignments to `state` (and its parameters' Slots) so far."""
    return state.count[0]


def plain(state: Mapping[Any, Any]) -> dict[Any, Any]:
    """A state_dict()'s 'state' with plain dicts, as torch's (torch.load with
    weights_only=True accepts no other class)."""
    return {key: dict(value) if isinstance(value, Slots) else value for key, value in state.items()}
