"""fusedopt.torch.Adafactor: torch.optim.Adafactor (torch 2.13) stepped by
fusedopt's native Adafactor step, one call for every parameter of every group
(fusedopt/optim/_adafactor.py has the step and its operation order)."""
from __future__ import annotations

import re
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch.optim.optimizer import _get_scalar_dtype

from ._checked_groups import CheckedGroups, Commit, group_lr
from ..optim import _adafactor
from ._plan import check_step

_FOREACH_WHY = ("fusedopt.torch.Adafactor does not take foreach=True: its native step takes every tensor of every "
                "group in one call already; leave foreach at its default")


def _hyper(group: dict[str, Any]) -> dict[str, Any]:
    lr = group_lr(group)
    if group.get("foreach"):
        raise ValueError(_FOREACH_WHY)
    return _adafactor.check_hyper({k: lr if k == "lr" else group[k] for k in _adafactor.HYPER})


def _array(t: torch.Tensor) -> np.ndarray:
    """A C-contiguous numpy array with t's values (t's own memory when it is one)."""
    return _adafactor.c_order(t.detach().resolve_conj().resolve_neg().numpy())


_NATIVE_NAME = re.compile(r"adafactor_step: (params|grads|old_rows|old_cols|old_vars)\[(\d+)\]")
_SLOT_OF = {"old_rows": "row_var", "old_cols": "col_var", "old_vars": "variance"}


def _torch_names(message: str, wheres: list[str]) -> str:
    def name(m: re.Match) -> str:
        what, k = m.group(1), wheres[int(m.group(2))]
        if what == "params":
            return k
        if what == "grads":
            return f"{k}.grad"
        return f"the optimizer's state of {k} ({_SLOT_OF[what]!r})"
    return _NATIVE_NAME.sub(name, message)


class Adafactor(CheckedGroups):
    """torch.optim.Adafactor (torch 2.13): the same constructor, defaults,
    refusals, parameter groups and state (``step``, and ``row_var`` and
    ``col_var`` for parameters of 2 or more dimensions, ``variance`` for the
    rest), so state dicts interchange with torch's. One native call steps the
    parameters of every group (docs/torch.md, "Adafactor"). Dense CPU float32
    or float64 parameters; ``foreach=True`` is refused (one implementation).

    Usage, as torch.optim.Adafactor's::

        opt = fusedopt.torch.Adafactor(model.parameters(), lr=1e-2)
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
    """

    _check_group = staticmethod(_hyper)

    def __init__(self, params: Any, lr: Any = 1e-2, beta2_decay: float = -0.8,
                 eps: tuple[Optional[float], float] = (None, 1e-3), d: float = 1.0, weight_decay: float = 0.0, *,
                 foreach: Optional[bool] = None, maximize: bool = False) -> None:
        """The arguments are explained in the class documentation, help(Adafactor)."""
        defaults = dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay, foreach=foreach,
                        maximize=maximize)
        _hyper(defaults)
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)

    def _leaf(self, where: str, p: torch.Tensor) -> tuple[int, Optional[_adafactor.LeafState]]:
        """The step count and checked old state of p (None: a first step)."""
        state = self.state.get(p)
        if not state:
            return 0, None
        count = check_step(f"{where}: state['step']", state.get("step"))
        want = _adafactor.state_shapes(tuple(p.shape))
        old = []
        for slot in _adafactor.SLOTS:
            t = state.get(slot)
            if slot not in want:
                old.append(None)
                continue
            if not torch.is_tensor(t) or tuple(t.shape) != want[slot] or t.dtype != p.dtype or \
                    t.device.type != "cpu" or t.layout != torch.strided:
                got = f"{t.dtype} tensor of shape {tuple(t.shape)}" if torch.is_tensor(t) else type(t).__name__
                raise ValueError(f"{where}: state[{slot!r}] must be a CPU {p.dtype} tensor of shape {want[slot]}, "
                                 f"got {got}")
            old.append(_array(t))
        return count, tuple(old)  # type: ignore[return-value]

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:  # type: ignore[override]
        """One torch.optim.Adafactor step of every parameter with a gradient."""
        loss = self._closure_loss(closure)
        self._finish()
        params, arrays, grads, olds, rows, counts, wheres = [], [], [], [], [], [], []
        for gi, group in enumerate(self.param_groups):  # everything checked before anything is written
            hyper = _hyper(group)
            eps1_dtype = None
            for j, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                where = f"param_groups[{gi}]['params'][{j}]"
                wheres.append(where)
                if torch.is_complex(p):
                    raise RuntimeError("Adafactor does not support complex parameters")
                if p.grad.is_sparse:
                    raise RuntimeError("Adafactor does not support sparse gradients")
                if p.device.type != "cpu" or p.layout != torch.strided or p.dtype not in (torch.float32,
                                                                                          torch.float64):
                    raise TypeError(f"{where}: fusedopt.torch.Adafactor takes dense CPU float32/float64 tensors, "
                                    f"got {p.dtype} on {p.device}")
                if p.numel() == 0:
                    raise ValueError(f"{where}: Adafactor needs at least one element (torch divides by the "
                                     "element count)")
                g = p.grad
                if g.dtype != p.dtype or g.shape != p.shape or g.device.type != "cpu":
                    raise TypeError(f"{where}.grad: expected a CPU {p.dtype} tensor of shape {tuple(p.shape)}, "
                                    f"got {g.dtype} of shape {tuple(g.shape)} on {g.device}")
                count, old = self._leaf(where, p)
                own = p.is_contiguous() and not p.is_neg() and not p.is_conj()
                arrays.append(p.detach().numpy() if own else np.array(_array(p), order="C", copy=True))
                eps1_dtype = eps1_dtype or arrays[-1].dtype  # torch: the group's first stepped parameter
                params.append((p, own))
                grads.append(_array(g))
                olds.append(old)
                rows.append(_adafactor.hyper_row(hyper, count + 1, eps1_dtype))
                counts.append(count + 1)
        if not params:
            return loss
        scalar = _get_scalar_dtype()
        steps = [self.state.get(p, {}).get("step") for p, _ in params]
        step_dtypes = [t.dtype if torch.is_tensor(t) else scalar for t in steps]
        # The new state as tensors made before the native call writes them: the commit only shows them.
        new = [tuple(None if s is None else torch.from_numpy(s) for s in leaf)
               for leaf in _adafactor.new_state(arrays)]
        state = self.state

        def show() -> None:
            for (p, own), a, leaf, count, step_dtype in zip(params, arrays, new, counts, step_dtypes):
                if not own:
                    p.detach().copy_(torch.from_numpy(a))
                entry = state[p]
                entry["step"] = torch.tensor(float(count), dtype=step_dtype)
                for slot, v in zip(_adafactor.SLOTS, leaf):
                    if v is not None:
                        entry[slot] = v

        def native(done: np.ndarray) -> None:
            _adafactor.step(arrays, grads, olds, rows, copy_grads=False,
                            new=[tuple(None if t is None else t.numpy() for t in leaf) for leaf in new], done=done)

        try:
            self._commit(Commit(show), native)
        except ValueError as e:  # the native names (params[k]) as torch's
            raise ValueError(_torch_names(str(e), wheres)) from None
        return loss
