"""A fusedopt.optim optimizer stepping this rank's pieces: its state holds a slot piece per
piece (translated to and from the whole tree's format by _optim.py), and its weight-decay mask
is the caller's cut into the pieces."""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np

from . import _optim as optim_family
from ._data_parallel import _state_of
from ._families import _Optim
from ._layout import Layout
from ._sharded import _Sharded


class _ShardedOptim(_Optim, _Sharded):
    """A fusedopt.optim optimizer, sharded (no max_grad_norm: it needs the whole gradient)."""

    def _check_wrappable(self) -> None:
        if self._opt.max_grad_norm is not None:
            raise TypeError(f"{type(self._opt).__name__}(max_grad_norm=...) needs the whole gradient's norm: wrap "
                            "it with shard_state=False (each rank then holds every moment)")

    _check_ready = _check_wrappable

    def _held_state(self) -> Optional[dict[str, Any]]:
        """The state the optimizer held before it was wrapped (to be cut into this rank's shard), or None."""
        opt = self._opt
        return _state_of(opt) if optim_family.leaf_paths(_state_of(opt)) else None

    def _keeps_delta(self, is_model: bool) -> bool:
        return False

    def _step_pieces(self, pieces: Any, avg_pieces: Any) -> bool:
        self._step_wrapped(pieces, avg_pieces)
        return False

    # -- state ---------------------------------------------------------------------------------
    def _gather_state(self) -> dict[str, Any]:
        own = _state_of(self._opt)  # this rank's pieces (stepped, or loaded and waiting for the next step)
        if self._layout is not None and optim_family.leaf_paths(own):
            return optim_family.whole_state(own, self._layout, self._flags, self._gather_pieces)
        return own  # (without state: its own, pending or empty)

    def _load(self, state: Mapping[str, Any], shard: Optional[dict[str, Any]]) -> None:
        opt = self._opt
        opt.reset()
        opt.load_state_dict(shard if shard is not None else state)
        self._pending = dict(state) if self._layout is None else None

    def _decay_flags(self, state: Mapping[str, Any]) -> list[bool]:
        return self._flags

    def _state_from(self, scalars: Mapping[str, Any], lay: Layout, flats: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return optim_family.shard_state(scalars, lay, flats)

    # -- the layout and the mask -----------------------------------------------------------------
    def _prepare_same(self, lay: Layout) -> Any:
        return (None, self._mask_for(lay)) if self._opt.weight_decay_mask is not self._piece_mask else None

    def _prepare_new(self, lay: Layout) -> Any:
        shard = None
        if self._pending is not None:
            shard = optim_family.shard_state(self._pending, lay)
            probe = copy.deepcopy(self._opt)
            probe.reset()
            probe.load_state_dict(shard)  # what _install does, on a copy
        return shard, self._mask_for(lay)

    def _install(self, lay: Layout, prepared: Any) -> None:
        shard, mask = prepared
        if shard is not None:
            self._opt.reset()
            self._opt.load_state_dict(shard)
            self._pending = None
        self._set_mask(mask)

    def _mask_for(self, lay: Layout) -> tuple[Any, list[bool], Any]:
        """(the caller's weight-decay mask, its flags over the whole tree, the mask of this
        rank's pieces)."""
        opt = self._opt
        user = self._user_mask
        if user is None or opt.weight_decay_mask is not self._piece_mask:
            user = (opt.weight_decay_mask,)  # the caller's (None is a valid mask)
        probe = copy.deepcopy(opt)
        probe.weight_decay_mask = user[0]
        flags = optim_family.whole_tree_flags(probe, lay)
        return user, flags, optim_family.piece_mask(lay, flags)

    def _set_mask(self, mask: tuple[Any, list[bool], Any]) -> None:
        self._user_mask, self._flags, self._piece_mask = mask
        self._opt.weight_decay_mask = self._piece_mask
