"""Hyper-parameters as attributes, for the classes off the rule table (Muon,
Adafactor): ``_given`` keeps them as passed (what state_dict saves),
``_hyper`` as the class's ``_check_hyper`` returned them; an assignment is
checked whole before anything is kept."""
from __future__ import annotations

from typing import Any, Callable, Dict


class GivenHyper:
    _check_hyper: Callable[[Dict[str, Any]], Dict[str, Any]]
    _given: Dict[str, Any]
    _hyper: Dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        hyper = self.__dict__.get("_hyper", {})
        if name in hyper:
            return hyper[name]
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        if name not in self._given:
            raise AttributeError(f"{type(self).__name__} has no hyper-parameter {name!r}")
        given = dict(self._given, **{name: value})
        self._hyper = type(self)._check_hyper(given)
        self._given = given
