"""fusedopt.torch.Muon: torch.optim.Muon (torch 2.13) with fusedopt's native
momentum, rounding, scaling and update passes around torch's own bfloat16
GEMMs (fusedopt/optim/_muon.py has the step and its operation order)."""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch

from ._checked_groups import CheckedGroups, Commit, group_lr
from .. import _core
from ..optim import _muon


def _newton_schulz(x: np.ndarray, coefficients: tuple[float, float, float], steps: int) -> np.ndarray:
    """The iterations in torch's bfloat16 GEMMs (x holds bfloat16 values, so the
    cast is exact). Each product sums in float32 and adds its float32 term
    before one rounding to bfloat16, the documented order; on CPUs with
    bfloat16 dot products they run at about four times the float32 GEMM."""
    a, b, c = coefficients
    xb = torch.from_numpy(x).bfloat16()
    for _ in range(steps):
        gram = torch.mm(xb, xb.T)
        update = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        xb = torch.addmm(xb, update, xb, beta=a)
    return xb.float().numpy()


def _hyper(group: dict[str, Any]) -> dict[str, Any]:
    lr = group_lr(group)
    return _muon.check_hyper({k: lr if k == "lr" else group[k] for k in
                              ("lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "eps", "ns_steps",
                               "adjust_lr_fn")})


class Muon(CheckedGroups):
    """torch.optim.Muon (torch 2.13): the same constructor, defaults,
    refusals, parameter groups and ``momentum_buffer`` state (state dicts
    interchange with torch's). The Newton-Schulz products go through torch's
    BLAS in float32 on bfloat16 values; the momentum, the roundings, the
    scaling and the update are fusedopt's native passes (docs/torch.md,
    "Muon"). Dense CPU float32/float64 2-D parameters.

    Usage, as torch.optim.Muon's (the 2-D weights here, the rest with another optimizer)::

        opt = fusedopt.torch.Muon([p for p in model.parameters() if p.ndim == 2], lr=1e-3)
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
    """

    _check_group = staticmethod(_hyper)

    def __init__(self, params: Any, lr: Any = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_coefficients: tuple[float, float, float] = _muon.DEFAULT_NS_COEFFICIENTS,
                 eps: float = 1e-7, ns_steps: int = 5, adjust_lr_fn: Optional[str] = None) -> None:
        """The arguments are explained in the class documentation, help(Muon)."""
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        _hyper(defaults)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(
                        f"Muon only supports 2D parameters whereas we found a parameter with size: {p.size()}")

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:  # type: ignore[override]
        loss = self._closure_loss(closure)
        self._finish()
        plans = []
        for group in self.param_groups:  # everything checked before anything is written
            hyper = _hyper(group)
            params, grads, bufs = [], [], []
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if torch.is_complex(p):
                    raise RuntimeError("Muon does not support complex parameters")
                if p.grad.is_sparse:
                    raise RuntimeError("Muon does not support sparse gradients")
                if p.device.type != "cpu" or p.dtype not in (torch.float32, torch.float64) or not p.is_contiguous():
                    raise TypeError(f"params[{i}]: fusedopt.torch.Muon takes contiguous CPU float32/float64 "
                                    f"tensors, got {p.dtype} on {p.device}")
                g = p.grad
                if g.dtype != p.dtype or g.shape != p.shape:
                    raise TypeError(f"params[{i}].grad: expected {p.dtype} of shape {tuple(p.shape)}")
                buf = self.state[p]["momentum_buffer"] if p in self.state and "momentum_buffer" in self.state[p] else None
                if buf is not None and (buf.dtype != p.dtype or buf.shape != p.shape or buf.device.type != "cpu"):
                    raise ValueError(f"state of params[{i}]: momentum_buffer must be a CPU {p.dtype} tensor "
                                     f"of shape {tuple(p.shape)}")
                new = torch.zeros_like(p, memory_format=torch.contiguous_format) if buf is None else \
                    buf.detach().clone(memory_format=torch.contiguous_format)
                params.append(p)
                grads.append(g.detach().contiguous().numpy())
                bufs.append(new)
            plans.append((hyper, params, grads, bufs))
        # Every group's momentum and orthogonalisation into new buffers and scratch arrays;
        # then one native call updates every parameter, and the commit shows the buffers.
        stepped, arrays, outs, transposed, decays, negs, new_bufs = [], [], [], [], [], [], []
        for hyper, params, grads, bufs in plans:
            if params:
                ps = [p.detach().numpy() for p in params]
                tr, os = _muon.directions(ps, grads, [b.numpy() for b in bufs], hyper, _newton_schulz)
                decay, neg = _muon.update_scalars(ps, hyper)
                stepped += params
                arrays += ps
                outs += os
                transposed += tr
                decays += decay
                negs += neg
                new_bufs += bufs
        if not stepped:
            return loss
        state = self.state

        def show() -> None:
            for p, b in zip(stepped, new_bufs):
                state[p]["momentum_buffer"] = b

        self._commit(Commit(show), lambda done: _core.muon_update(arrays, outs, transposed, decays, negs, done))
        return loss
