"""What the step's machinery (_step.py), the facade and the strategy classes use of each other:
DataParallel's attributes, and the methods each strategy class defines (its mode's and its
family's), declared for the type checker; this module runs nothing."""
from __future__ import annotations

from typing import Any, Optional

from ._layout import Layout


class _Interface:
    """The attributes every strategy has (declarations only)."""

    # DataParallel's attributes (see its __init__)
    _comm: Any
    _opt: Any
    _det: bool
    _size: int
    _rank: int
    _config: tuple[Any, ...]
    _layout: Optional[Layout]
    _pending: Optional[dict[str, Any]]
    _bufs: Any
    _src: Any
    _fused: Any
    _drawn: Any
    _static: Any
    _plan: tuple[str, ...]
    _done: int
    _adopting: Any
    _step_layout: Any
    _gather_flat: Any
    _message: list[Any]
    _flag: list[Any]
    _kernel_averages: bool
    _grad_in_place: bool
    _stepped: bool
    _inplace: bool
    _probe: Any
    _probe_gathers: bool
    timings: dict[str, float]
    shard_state: Any
    # What each strategy class defines: its mode's (_replicated.py, _sharded.py) and its family's
    # (_families.py) parts of a step; a few have a default in DataParallel.
    _BUFFERS: Any
    _DET_EXCHANGE: tuple[str, ...]
    _REDUCE: str
    _STATIC_NAMES: tuple[str, ...]
    _is_model: Any
    _key: Any
    _fields: Any
    _ready: Any
    _undraw: Any
    _holds_moments: Any
    _prepare_new: Any
    _install: Any
    _exchanged: Any
    _after_exchange: Any
    _gather_target: Any
    _step_agreed: Any
    _reduce: Any
    # (and, for the rest of DataParallel: the mode's)
    _held_state: Any
    _sends_in_place: Any
    _whole_delta: Any
    _converged: Any
    _whole_state: Any
    _blank_copy: Any
    _check_state: Any
    _load: Any
    _cut: Any
    _data_range: Any
    _part_nbytes: Any
    _moment_leaves: Any
    _moment_tree: Any
    _slot_leaves: Any
    _step_pieces: Any
    # (the family's)
    _averages_in_kernel: Any
    _state_trees: Any
    _state_parts: Any
    _loader: Any
    _step_wrapped: Any
    _own_delta: Any
    # (what is both's)
    _keeps_delta: Any
    _model_step: Any
    _delta_buffer: Any
    _gather_state: Any
    _decay_flags: Any
    _state_from: Any
    _mask_for: Any
    _set_mask: Any
