"""Adam8bit, AdamW8bit and Lion8bit: Adam/AdamW and Lion with 8-bit blockwise
states (Dettmers et al. 2021), on float32 numpy trees. docs/lowbit.md gives the
map, its error, the operation order and the state format."""
from __future__ import annotations

from collections.abc import Mapping
import numbers
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .. import _core, _state_fields
from . import _state as fmt
from ._base import LR, Optimizer, _Hyper, _RuleOption, _parse_pending
from ._tree import Mask



def _int(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return int(value)


def _size(name: str, value: Any) -> int:
    """An int >= 0 (min_8bit_size)."""
    out = _int(name, value)
    if out < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return out


def _block_size(name: str, value: Any) -> int:
    """A power of two from 16 to 4096."""
    out = _int(name, value)
    if not (16 <= out <= 4096 and out & (out - 1) == 0):
        raise ValueError(f"{name} must be a power of two from 16 to 4096, got {value!r}")
    return out


def _read_slot(state: Mapping[str, Any], name: str, paths: List[str], dtypes: List[str]) -> List[np.ndarray]:
    """Saved leaves of a slot as arrays (the native load checks each one's dtype and shape:
    codes are uint8, the rest float32)."""
    out = []
    for i, path in enumerate(paths):
        leaf = fmt.get(state, f"{name}.{i}")
        if not isinstance(leaf, np.ndarray):
            raise TypeError(f"state: {name} at {path or 'the root'} must be a numpy array, got {type(leaf).__name__}")
        out.append(_state_fields.snapshot(leaf))
    return out


class _Quant8Optimizer(Optimizer):
    """What the 8-bit classes share: the native Quant8State of their rule, no clipping,
    a layout fixed while there is state, and the conversion from and to the state of
    their float32 class (``_float32_kind``, whose slots are ``_moments``)."""

    _float32_kind = ""
    _moments: Tuple[Tuple[str, bool], ...] = ()  # (slot, signed map), in the rule's order
    _float32_only: Dict[str, Any] = {}  # the float32 class's hyper entries without an 8-bit form: their value
    block_size = _RuleOption(_block_size)
    min_8bit_size = _RuleOption(_size)

    @classmethod
    def _slots(cls) -> Tuple[str, ...]:
        names = tuple(name for name, _ in cls._moments)
        return names + tuple(f"{name}_absmax" for name in names)

    def _validate(self) -> None:
        state = getattr(self, "_state", None)
        if state is not None and (self._values.get("block_size"), self._values.get("min_8bit_size")) != (
                state.block_size, state.min_8bit_size):
            raise ValueError("block_size and min_8bit_size choose the state's layout: they cannot change once "
                             "the optimizer has state (call reset() first)")

    @property
    def max_grad_norm(self) -> Optional[float]:
        """Always None: the 8-bit optimizers do not clip."""
        return None

    @max_grad_norm.setter
    def max_grad_norm(self, value: Optional[float]) -> None:
        if value is not None:
            raise ValueError(f"max_grad_norm: {type(self).__name__} does not clip gradients, got {value!r} "
                             f"(clip before the step, or use fusedopt.optim.{self._float32_kind})")
        self._store("max_grad_norm", None)

    def _new_state(self, plan: _core.Plan, mask: List[bool]) -> _core.Quant8State:
        return _core.Quant8State(plan, mask, self._hyper, self._values["block_size"], self._values["min_8bit_size"],
                                 self._native_rule())

    def _parse_state(self, state: Mapping[str, Any], version: int) -> Optional[Dict[str, Any]]:
        return _parse_pending(state, version, {"slots": dict.fromkeys(self._slots()), "scalars": {}}, _read_slot)

    # -- conversion from and to the float32 optimizers' state ----------------------------
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state_dict() of this class, or of the float32 class (``Adam`` for
        Adam8bit, ``AdamW`` for AdamW8bit, ``Lion`` for Lion8bit: its moments are quantized
        with this optimizer's block_size and min_8bit_size); everything is checked before
        anything changes."""
        if fmt.get_str(state, "kind") == self._float32_kind:
            state = self._from_float32(state)
        super().load_state_dict(state)

    def _from_float32(self, state: Mapping[str, Any]) -> Dict[str, Any]:
        for key, value in self._float32_only.items():
            if key in state and fmt.get_value(state, key) != value:
                raise ValueError(f"state: a {self._float32_kind} state with {key.split('.')[-1]}="
                                 f"{fmt.get_value(state, key)} has no 8-bit form")
        out = {k: v for k, v in state.items() if k not in self._float32_only}
        out["kind"] = type(self).__name__
        block, least = self._values["block_size"], self._values["min_8bit_size"]
        out["hyper.block_size"], out["hyper.min_8bit_size"] = block, least
        paths = fmt.get_strs(state, "leaf_paths")
        moments = sorted(name for name, _ in self._moments)
        if paths and sorted(fmt.get_strs(state, "slots")) != moments:
            raise ValueError(f"state: a {self._float32_kind} state has the slots {' and '.join(moments)}")
        for i, path in enumerate(paths):
            for name, signed in self._moments:
                leaf = fmt.get(state, f"{name}.{i}")
                if not (isinstance(leaf, np.ndarray) and leaf.dtype == np.float32):
                    raise TypeError(f"state: {name} at {path or 'the root'} must be a float32 array "
                                    f"({type(self).__name__} steps float32 parameters)")
                if leaf.size >= least:
                    out[f"{name}.{i}"], out[f"{name}_absmax.{i}"] = _core.quantize_blockwise(leaf, signed, block)
                else:
                    out[f"{name}_absmax.{i}"] = np.zeros(0, np.float32)
        out["slots"] = fmt.strs(self._slots() if paths else [])
        return out

    def float32_state_dict(self) -> Dict[str, Any]:
        """This state as the float32 class's state_dict (``Adam``, ``AdamW`` or ``Lion``,
        loadable by fusedopt.optim's class): the moments decoded from their codes (Adam's
        amsgrad False)."""
        out = self.state_dict()
        out["kind"] = self._float32_kind
        block = out.pop("hyper.block_size")
        del out["hyper.min_8bit_size"]
        out.update(self._float32_only)
        for i in range(len(out["leaf_paths"])):
            for name, signed in self._moments:
                codes, absmax = out[f"{name}.{i}"], out.pop(f"{name}_absmax.{i}")
                if codes.dtype == np.uint8:
                    out[f"{name}.{i}"] = _core.dequantize_blockwise(codes, absmax, signed, block)
        out["slots"] = fmt.strs([name for name, _ in self._moments] if len(out["leaf_paths"]) else [])
        return out


class Adam8bit(_Quant8Optimizer):
    """Adam (torch.optim.Adam's operation order, L2 weight decay) with 8-bit moments.

    ``exp_avg`` (signed map) and ``exp_avg_sq`` (unsigned map) are stored as one
    code per element and a float32 absmax per block of ``block_size`` elements;
    leaves of fewer than ``min_8bit_size`` elements keep float32 moments (as
    bitsandbytes does). Per block and step: decode ``m = value[code] * absmax``,
    the Adam element math in float32 as fusedopt.optim.Adam, the new block absmax
    (the largest ``|m|``, ``v``), then each code is the nearest of ``m / absmax``.
    float32 parameters only; no amsgrad, no ``max_grad_norm``.

    Usage (``params`` and ``grads``: trees of the same structure of float32 arrays)::

        from fusedopt import optim
        opt = optim.Adam8bit(lr=1e-3)               # block_size=256, min_8bit_size=4096
        for batch in batches:
            opt.step(params, grads_of(params, batch))   # params stepped in place, one native call

    ``lr``, ``weight_decay_mask`` and ``check_finite`` as every fusedopt.optim optimizer's.
    ``state_dict()`` holds the codes and absmax; ``load_state_dict`` also takes the state of
    the float32 class (Adam), ``float32_state_dict()`` gives this state in that class's format.
    """

    _float32_kind = "Adam"
    _moments = (("exp_avg", True), ("exp_avg_sq", False))
    _float32_only = {"hyper.amsgrad": False}
    betas = _Hyper("beta1", "beta2")
    eps = _Hyper()
    weight_decay = _Hyper()
    maximize = _Hyper()

    def __init__(self, lr: LR = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, maximize: bool = False, *, block_size: int = 256,
                 min_8bit_size: int = 4096, weight_decay_mask: Mask = None, check_finite: bool = False) -> None:
        super().__init__(lr, weight_decay_mask=weight_decay_mask, check_finite=check_finite)
        self._set_all(dict(betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize,
                           block_size=block_size, min_8bit_size=min_8bit_size))

    def _rule(self) -> str:
        return "ADAM"  # the element math; the state is the 8-bit one


class AdamW8bit(Adam8bit):
    """AdamW (torch.optim.AdamW's order: ``p = p * (1 - lr * weight_decay)`` first) with
    8-bit moments; everything else as Adam8bit (the float32 class of its state: AdamW).

    Usage (``params`` and ``grads``: trees of the same structure of float32 arrays)::

        from fusedopt import optim
        opt = optim.AdamW8bit(lr=1e-3, weight_decay=1e-2)
        for batch in batches:
            opt.step(params, grads_of(params, batch))   # params stepped in place, one native call
    """

    _fixed = {"decoupled_weight_decay": 1.0}
    _float32_kind = "AdamW"

    def __init__(self, lr: LR = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, maximize: bool = False, *, block_size: int = 256,
                 min_8bit_size: int = 4096, weight_decay_mask: Mask = None, check_finite: bool = False) -> None:
        super().__init__(lr, betas, eps, weight_decay, maximize, block_size=block_size,
                         min_8bit_size=min_8bit_size, weight_decay_mask=weight_decay_mask, check_finite=check_finite)


class Lion8bit(_Quant8Optimizer):
    """Lion (fusedopt.optim.Lion's operation order, decoupled weight decay) with an 8-bit
    moment (bitsandbytes' name).

    ``exp_avg`` (signed map) is stored as one code per element and a float32 absmax per
    block of ``block_size`` elements; leaves of fewer than ``min_8bit_size`` elements keep
    a float32 moment. Per block and step: decode ``m = value[code] * absmax``, Lion's
    element math in float32 as fusedopt.optim.Lion (``p = p * (1 - lr*weight_decay)``,
    ``p = p - lr * sign(beta1*m + (1-beta1)*g)``, ``m = beta2*m + (1-beta2)*g``), the new
    block absmax (the largest ``|m|``), then each code is the nearest of ``m / absmax``.
    float32 parameters only; no ``max_grad_norm``.

    Usage (``params`` and ``grads``: trees of the same structure of float32 arrays)::

        from fusedopt import optim
        opt = optim.Lion8bit(lr=1e-4, weight_decay=1e-2)   # block_size=256, min_8bit_size=4096
        for batch in batches:
            opt.step(params, grads_of(params, batch))   # params stepped in place, one native call

    ``lr``, ``weight_decay_mask`` and ``check_finite`` as every fusedopt.optim optimizer's.
    ``state_dict()`` holds the codes and absmax; ``load_state_dict`` also takes Lion's state,
    ``float32_state_dict()`` gives this state in Lion's format.
    """

    _float32_kind = "Lion"
    _moments = (("exp_avg", True),)
    betas = _Hyper("beta1", "beta2")
    weight_decay = _Hyper()
    maximize = _Hyper()

    def __init__(self, lr: LR = 1e-4, betas: Tuple[float, float] = (0.9, 0.99), weight_decay: float = 0,
                 maximize: bool = False, *, block_size: int = 256, min_8bit_size: int = 4096,
                 weight_decay_mask: Mask = None, check_finite: bool = False) -> None:
        super().__init__(lr, weight_decay_mask=weight_decay_mask, check_finite=check_finite)
        self._set_all(dict(betas=betas, weight_decay=weight_decay, maximize=maximize,
                           block_size=block_size, min_8bit_size=min_8bit_size))

    def _rule(self) -> str:
        return "LION"  # the element math; the state is the 8-bit one
