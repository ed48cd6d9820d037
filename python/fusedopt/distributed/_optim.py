"""Sharded state of fusedopt.optim optimizers under fusedopt.distributed (ZeRO stage 1).

The wrapped optimizer steps this rank's pieces (a list of 1-D views), so its own state
holds a slot piece per piece. This module translates between that and the whole tree's
state in fusedopt.optim's documented format (docs/optim.md, "State": ``leaf_paths``,
``leaf_dtypes``, ``decay_mask``, ``slots`` and ``<slot>.<i>``): whole-tree flags of the
weight-decay mask, and the shard's state cut from a whole one.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Callable, Optional

import numpy as np

from ._layout import Layout, aligned_bytes

LEAF_KEYS = ("leaf_paths", "leaf_dtypes", "decay_mask")


def _strs(items: list[str]) -> np.ndarray:
    return np.array(items, dtype=str) if items else np.zeros(0, dtype=str)


def slot_names(state: Mapping[str, Any]) -> list[str]:
    return [str(s) for s in np.asarray(state["slots"]).reshape(-1)]


def leaf_paths(state: Mapping[str, Any]) -> list[str]:
    return [str(s) for s in np.asarray(state["leaf_paths"]).reshape(-1)]


def without_leaves(state: Mapping[str, Any]) -> dict[str, Any]:
    """The state's scalars and hyper-parameters (every key but the leaves' and slots')."""
    names, n = slot_names(state), len(leaf_paths(state))
    leaf_keys = {f"{name}.{i}" for name in names for i in range(n)}
    return {k: v for k, v in state.items() if k not in leaf_keys and k not in LEAF_KEYS}


def whole_tree_flags(opt: Any, lay: Layout) -> list[bool]:
    """Each leaf's weight-decay flag as the optimizer resolves its mask over the whole tree
    (a copy of it creates its state for a whole-sized stand-in of the parameters)."""
    probe = copy.deepcopy(opt)
    probe.reset()
    probe.init(lay.tree(aligned_bytes(lay.nbytes)))
    return [bool(b) for b in probe.state_dict()["decay_mask"]]


def piece_mask(lay: Layout, flags: list[bool]) -> Callable[[str, Any], bool]:
    """A mask for the shard's list of pieces: piece j decays as its leaf does."""
    by_path = {f"[{j}]": flags[leaf] for j, (leaf, _, _, _) in enumerate(lay.pieces)}
    return lambda path, array: by_path.get(path, False)


def shard_state(state: Mapping[str, Any], lay: Layout, flats: Optional[Mapping[str, np.ndarray]] = None
                ) -> dict[str, Any]:
    """This rank's state cut from a whole tree's (ValueError if its leaves do not fit the layout);
    with `flats`, the slots' shard bytes by name (a sharded checkpoint's) instead of its leaves."""
    paths, names = leaf_paths(state), slot_names(state)
    out = without_leaves(state)
    if not paths:
        out.update({"leaf_paths": _strs([]), "leaf_dtypes": _strs([]), "decay_mask": np.zeros(0, bool)})
        return out
    index = {p: i for i, p in enumerate(paths)}
    dtypes = [str(s) for s in np.asarray(state["leaf_dtypes"]).reshape(-1)]
    for path, dtype in zip(lay.paths, lay.dtypes):
        i = index.get(path)
        if i is None or len(index) != len(lay.paths) or dtypes[i] != dtype:
            raise ValueError(f"params at {path or 'the root'}: the loaded state has no {dtype} leaf there "
                             f"(its leaves: {', '.join(paths[:4])}{', ...' if len(paths) > 4 else ''})")
    order = [index[p] for p in lay.paths]
    mask = np.asarray(state["decay_mask"]).reshape(-1)
    pieces = lay.pieces
    out["leaf_paths"] = _strs([f"[{j}]" for j in range(max(len(pieces), 1))])
    out["leaf_dtypes"] = _strs([lay.dtypes[leaf] for leaf, _, _, _ in pieces] or ["float32"])
    out["decay_mask"] = np.array([bool(mask[order[leaf]]) for leaf, _, _, _ in pieces] or [False])
    for name in names:
        if flats is not None:
            shard = flats[name]
        else:
            flat = aligned_bytes(lay.nbytes)
            lay.pack.pack([np.asarray(state[f"{name}.{i}"]) for i in order], flat, name)
            shard = flat[lay.lo:lay.hi]
        for j, piece in enumerate(lay.shard_pieces(shard)):
            out[f"{name}.{j}"] = piece.copy()
    return out


def whole_leaf_keys(lay: Layout, flags: Optional[list[bool]]) -> dict[str, Any]:
    """The whole tree's leaf keys of a state (`flags` None: a state without leaves)."""
    if flags is None:
        return {"leaf_paths": _strs([]), "leaf_dtypes": _strs([]), "decay_mask": np.zeros(0, bool)}
    return {"leaf_paths": _strs(lay.paths), "leaf_dtypes": _strs(lay.dtypes), "decay_mask": np.array(flags, bool)}


def whole_state_from(scalars: Mapping[str, Any], lay: Layout, flats: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """A whole tree's state from its leaves' keys and scalars, and each slot's whole flat buffer."""
    out = dict(scalars)
    for name, flat in flats.items():
        for i, leaf in enumerate(lay.plan.flatten(lay.tree(flat))):
            out[f"{name}.{i}"] = np.array(leaf, copy=True)
    return out


def whole_state(state: Mapping[str, Any], lay: Layout, flags: list[bool],
                gather: Callable[[Layout, list[Any]], Any]) -> dict[str, Any]:
    """The whole tree's state from this rank's (`gather` all-gathers every rank's pieces of a
    slot into a tree of the layout: a collective)."""
    names = slot_names(state)
    n = len(leaf_paths(state))
    out = without_leaves(state)
    out.update(whole_leaf_keys(lay, flags))
    for name in names:
        whole = lay.plan.flatten(gather(lay, [state[f"{name}.{j}"] for j in range(n)]))
        for i, leaf in enumerate(whole):
            out[f"{name}.{i}"] = np.array(leaf, copy=True)
    return out


# -- the rate of a step, drawn before the agreement --------------------------------------------
# A schedule or callable rate is evaluated inside step(); under the wrapper it is drawn before
# the ranks agree, so that its value is agreed on and an error in it is raised on every rank
# before any collective, and the step then runs at that rate.
def draw_lr(opt: Any) -> tuple[float, Any]:
    """(this step's rate, what undraw_lr needs to put the schedule back)."""
    return opt._next_lr()  # type: ignore[no-any-return]


def undraw_lr(opt: Any, drawn: tuple[float, Any]) -> None:
    saved = drawn[1]
    if saved is not None:
        vars(opt.lr).update(saved)


def step_at(opt: Any, lr: float, params: Any, grads: Any) -> None:
    """opt.step(params, grads) at the rate `lr` (its own schedule or callable is not called)."""
    own = opt._lr
    opt._lr = float(lr)
    try:
        opt.step(params, grads)
    finally:
        opt._lr = own
