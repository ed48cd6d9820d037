"""Trees of masks for fusedopt.optim: leaves by path, paths spelled as
fusedopt._core.Plan spells them (``[0]``, ``['key']``, ``.field``)."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence, Tuple, Union

import numpy as np

#: ``weight_decay_mask`` of every fusedopt.optim optimizer: None (every leaf decays), a tree
#: of bools shaped like the parameters, or a callable ``(path, array) -> bool`` (path as in
#: error messages, e.g. ``"['W']"``; called once per leaf at the first step).
Mask = Union[None, Callable[[str, Any], Any], Any]


def _is_namedtuple(node: Any) -> bool:
    return isinstance(node, tuple) and hasattr(node, "_fields")


def leaves_by_path(tree: Any, path: str = "") -> Dict[str, Any]:
    """Every non-container entry of `tree` (tuples, lists, dicts, namedtuples), by path."""
    out: Dict[str, Any] = {}
    if _is_namedtuple(tree):
        for field, child in zip(tree._fields, tree):
            out.update(leaves_by_path(child, f"{path}.{field}" if path else field))
    elif isinstance(tree, (tuple, list)):
        for i, child in enumerate(tree):
            out.update(leaves_by_path(child, f"{path}[{i}]"))
    elif isinstance(tree, dict):
        for key, child in tree.items():
            out.update(leaves_by_path(child, f"{path}[{key!r}]"))
    else:
        out[path] = tree
    return out


def float_leaves(params: Any, grads: Any) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The leaves of params and grads by path, refused unless the trees have one
    structure and every parameter is a float32 or float64 numpy array (the
    classes off the rule table: Muon, Adafactor)."""
    ps, gs = leaves_by_path(params), leaves_by_path(grads)
    if list(ps) != list(gs):
        raise ValueError(f"grads must have the parameters' structure {list(ps)}, got {list(gs)}")
    for path, p in ps.items():
        if not isinstance(p, np.ndarray) or p.dtype not in (np.float32, np.float64):
            raise TypeError(f"params at {path or 'the root'}: expected a float32 or float64 numpy array, got "
                            f"{getattr(p, 'dtype', type(p).__name__)}")
    return ps, gs


def _as_flag(value: Any, where: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"weight_decay_mask {where}: expected a bool, got {type(value).__name__}")
    return bool(value)


def resolve_mask(mask: Mask, paths: Sequence[str], leaves: Sequence[Any]) -> List[bool]:
    """Per-leaf decay flags: all True for None; mask(path, leaf) for a callable;
    else a tree of bools shaped like the parameters, matched by path."""
    if mask is None:
        return [True] * len(paths)
    if callable(mask):
        return [_as_flag(mask(path, leaf), f"({mask!r} at {path or 'the root'})")
                for path, leaf in zip(paths, leaves)]
    flags = leaves_by_path(mask)
    missing = [p for p in paths if p not in flags]
    if missing:
        raise ValueError(f"weight_decay_mask has no entry at {missing[0] or 'the root'} "
                         f"(it must be a tree of bools shaped like the parameters)")
    extra = sorted(set(flags) - set(paths))
    if extra:
        raise ValueError(f"weight_decay_mask has an entry at {extra[0] or 'the root'}, where the parameters have none")
    return [_as_flag(flags[p], f"at {p or 'the root'}") for p in paths]
