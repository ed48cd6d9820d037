"""The optim family: torch.optim's optimizers on numpy trees, with torch.optim 2.13's single-tensor
semantics (``foreach=False``), each step one fused native call for the tree::

    from fusedopt import optim
    opt = optim.AdamW(lr=1e-3, weight_decay=1e-2)
    for batch in batches:
        opt.step(params, compute_grads(params, batch))   # params stepped in place

``params``: any tree (tuples, lists, dicts, namedtuples) of writeable
C-contiguous float32/float64 arrays; ``grads``: a tree of the same structure,
dtypes and shapes (never modified). The structure is fixed at the first step
(``reset()`` forgets it). docs/optim.md gives each rule's exact operation order.

Options of every class (keyword-only): ``weight_decay_mask`` (a tree of bools
like the parameters, or ``(path, array) -> bool``), ``max_grad_norm`` (clip the
whole gradient tree to this global L2 norm, as ``torch.nn.utils.clip_grad_norm_``;
``last_grad_norm`` reads the norm of the last step) and ``check_finite``.

The interface other code builds on (the torch adapter among them); stable:

* ``opt.step(params, grads)``; ``opt.init(params)`` creates the state without
  stepping; ``opt.reset()`` forgets it.
* ``opt.state_arrays()`` -> ``{slot: tree of views}``, readable and writable
  views of the state with torch.optim's slot names: ``momentum_buffer`` (SGD
  with momentum, RMSprop with momentum), ``exp_avg``, ``exp_avg_sq``,
  ``max_exp_avg_sq`` (Adam, AdamW with amsgrad), ``square_avg``, ``grad_avg``
  (RMSprop centered), ``sum`` (Adagrad), ``exp_avg`` (Lion). ``{}`` before the
  first step or ``init()``.
* ``opt.step_count``: steps taken (torch's per-parameter ``step``); set it with
  ``load_state_dict`` (its ``step_count`` entry).
* every hyper-parameter is an attribute, validated on assignment and used from
  the next step on: ``opt.lr`` (float, fusedopt schedule or callable
  ``step -> lr``), ``opt.betas``, ``opt.eps``, ``opt.weight_decay``, ...
  Options that choose the rule and its state (SGD's momentum on or off and
  nesterov, amsgrad, RMSprop's centered and momentum on or off) change only
  while there is no state.
* ``state_dict()`` / ``load_state_dict()`` / pickle: plain versioned arrays
  (docs/optim.md, "State", lists the keys), hyper-parameters included.
"""
from __future__ import annotations

from typing import Optional, Tuple

from ._base import LR, Optimizer, _Hyper, _RuleOption
from ._tree import Mask

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "NAdam", "RMSprop", "Adagrad", "Lion"]

class SGD(Optimizer):
    """Stochastic gradient descent, with momentum and Nesterov momentum (torch.optim.SGD).

    Per element, in this order (each operation rounded in the leaf's dtype;
    ``-lr`` rounded as a scalar of that dtype)::

        g = g * s                       s: the clip scale (1 without clipping), negated for maximize
        g = g + weight_decay * p        if weight_decay != 0 and the leaf decays
        buf = g                         first step, if momentum != 0
        buf = buf * momentum + (1 - dampening) * g     later steps
        d = g + momentum * buf          nesterov; d = buf with momentum; d = g without
        p = p + (-lr) * d
    """

    momentum = _Hyper(selects_rule=True)
    dampening = _Hyper()
    weight_decay = _Hyper()
    nesterov = _RuleOption()
    maximize = _Hyper()

    def __init__(self, lr: LR = 1e-3, momentum: float = 0, dampening: float = 0, weight_decay: float = 0,
                 nesterov: bool = False, maximize: bool = False, *, weight_decay_mask: Mask = None,
                 max_grad_norm: Optional[float] = None, check_finite: bool = False,
                 stochastic_rounding: bool = False, seed: int = 0) -> None:
        super().__init__(lr, weight_decay_mask=weight_decay_mask, max_grad_norm=max_grad_norm,
                         check_finite=check_finite,
                         stochastic_rounding=stochastic_rounding, seed=seed)
        self._set_all(dict(momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                           nesterov=nesterov, maximize=maximize))

    def _validate(self) -> None:
        v = self._values
        if v.get("nesterov") and (v.get("momentum", 0.0) <= 0.0 or v.get("dampening", 0.0) != 0.0):
            raise ValueError("nesterov momentum requires momentum > 0 and dampening == 0")

    def _rule(self) -> str:
        if self._values["momentum"] == 0.0:
            return "SGD"
        return "SGD_NESTEROV" if self._values["nesterov"] else "SGD_MOMENTUM"


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction, as torch.optim.Adam (L2 weight decay).

    Per step t (1 for the first), in double as torch computes them in Python:
    ``step_size = lr / (1 - beta1**t)``, ``bc2 = (1 - beta2**t) ** 0.5``; then
    per element, each operation rounded in the leaf's dtype::

        g = g * s                                  s: clip scale, negated for maximize
        g = g + weight_decay * p                   Adam, if weight_decay != 0 and the leaf decays
        p = p * (1 - lr * weight_decay)            AdamW instead (decoupled)
        m = m + w * (g - m)                        w = 1 - beta1 (torch's lerp; for w >= 0.5:
                                                   m = g - (g - m) * (1 - w))
        v = v * beta2 + ((1 - beta2) * g) * g
        vmax = max(vmax, v); den = vmax            amsgrad; else den = v
        den = sqrt(den) / bc2 + eps
        p = p + ((-step_size) * m) / den

    State slots: exp_avg (m), exp_avg_sq (v), max_exp_avg_sq (vmax, amsgrad).
    """

    betas = _Hyper("beta1", "beta2")
    eps = _Hyper()
    weight_decay = _Hyper()
    amsgrad = _RuleOption()
    maximize = _Hyper()

    def __init__(self, lr: LR = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, amsgrad: bool = False, maximize: bool = False, *,
                 weight_decay_mask: Mask = None, max_grad_norm: Optional[float] = None,
                 check_finite: bool = False,
                 stochastic_rounding: bool = False, seed: int = 0) -> None:
        super().__init__(lr, weight_decay_mask=weight_decay_mask, max_grad_norm=max_grad_norm,
                         check_finite=check_finite,
                         stochastic_rounding=stochastic_rounding, seed=seed)
        self._set_all(dict(betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize))

    def _rule(self) -> str:
        return "ADAM_AMSGRAD" if self._values["amsgrad"] else "ADAM"


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019), as torch.optim.AdamW: Adam with decoupled
    weight decay ``p = p * (1 - lr * weight_decay)`` before the moments (see Adam)."""

    _fixed = {"decoupled_weight_decay": 1.0}

    def __init__(self, lr: LR = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, maximize: bool = False, *,
                 weight_decay_mask: Mask = None, max_grad_norm: Optional[float] = None,
                 check_finite: bool = False,
                 stochastic_rounding: bool = False, seed: int = 0) -> None:
        super().__init__(lr, betas, eps, weight_decay, amsgrad, maximize, weight_decay_mask=weight_decay_mask,
                         max_grad_norm=max_grad_norm, check_finite=check_finite,
                         stochastic_rounding=stochastic_rounding, seed=seed)


class NAdam(Optimizer):
    """NAdam (Dozat 2016, Adam with Nesterov momentum), as torch.optim.NAdam.

    Per step t (1 for the first), in double as torch computes them in Python::

        mu = beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))
        mu_next = beta1 * (1 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
        mu_product = mu_product * mu                       the scalar state, 1 before the first step
        c_g = -lr * (1 - mu) / (1 - mu_product)
        c_m = -lr * mu_next / (1 - mu_product * mu_next)

    then per element, each operation rounded in the leaf's dtype::

        g = g * s                                  s: clip scale, negated for maximize
        g = g + weight_decay * p                   if the leaf decays (L2)
        p = p * (1 - lr * weight_decay)            decoupled_weight_decay instead
        m = m + w * (g - m)                        w = 1 - beta1 (torch's lerp, as Adam's)
        v = v * beta2 + ((1 - beta2) * g) * g
        den = sqrt(v / (1 - beta2**t)) + eps
        p = p + (c_g * g) / den
        p = p + (c_m * m) / den

    State slots: exp_avg (m), exp_avg_sq (v); scalar state: mu_product (kept in double;
    torch keeps it in its default dtype).
    """

    betas = _Hyper("beta1", "beta2")
    eps = _Hyper()
    weight_decay = _Hyper()
    momentum_decay = _Hyper()
    decoupled_weight_decay = _Hyper()
    maximize = _Hyper()

    def __init__(self, lr: LR = 2e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, momentum_decay: float = 4e-3, decoupled_weight_decay: bool = False, *,
                 maximize: bool = False, weight_decay_mask: Mask = None, max_grad_norm: Optional[float] = None,
                 check_finite: bool = False,
                 stochastic_rounding: bool = False, seed: int = 0) -> None:
        super().__init__(lr, weight_decay_mask=weight_decay_mask, max_grad_norm=max_grad_norm,
                         check_finite=check_finite,
                         stochastic_rounding=stochastic_rounding, seed=seed)
        self._set_all(dict(betas=betas, eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay,
                           decoupled_weight_decay=decoupled_weight_decay, maximize=maximize))

    def _rule(self) -> str:
        return "NADAM"


class RMSprop(Optimizer):
    """RMSprop (Hinton), as torch.optim.RMSprop: plain, centered, with momentum.

    Per element, each operation rounded in the leaf's dtype::

        g = g * s                                  s: clip scale, negated for maximize
        g = g + weight_decay * p                   if weight_decay != 0 and the leaf decays
        v = v * alpha + ((1 - alpha) * g) * g
        ga = ga + w * (g - ga)                     centered; w = 1 - alpha (torch's lerp, as Adam's m)
        avg = sqrt(v - ga * ga) + eps              centered; else avg = sqrt(v) + eps
        buf = buf * momentum + g / avg;  p = p + (-lr) * buf     if momentum > 0
        p = p + ((-lr) * g) / avg                                else

    State slots: square_avg (v), grad_avg (ga, centered), momentum_buffer (buf, momentum > 0).
    """

    alpha = _Hyper()
    eps = _Hyper()
    weight_decay = _Hyper()
    momentum = _Hyper(selects_rule=True)
    centered = _RuleOption()
    maximize = _Hyper()

    def __init__(self, lr: LR = 1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0,
                 momentum: float = 0, centered: bool = False, maximize: bool = False, *,
                 weight_decay_mask: Mask = None, max_grad_norm: Optional[float] = None,
                 check_finite: bool = False,
                 stochastic_rounding: bool = False, seed: int = 0) -> None:
        super().__init__(lr, weight_decay_mask=weight_decay_mask, max_grad_norm=max_grad_norm,
                         check_finite=check_finite,
                         stochastic_rounding=stochastic_rounding, seed=seed)
        self._set_all(dict(alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                           centered=centered, maximize=maximize))

    def _rule(self) -> str:
        centered, momentum = self._values["centered"], self._values["momentum"] > 0.0
        if centered:
            return "RMSPROP_CENTERED_MOMENTUM" if momentum else "RMSPROP_CENTERED"
        return "RMSPROP_MOMENTUM" if momentum else "RMSPROP"


class Adagrad(Optimizer):
    """Adagrad (Duchi et al. 2011), as torch.optim.Adagrad (dense gradients).

    Per step t: ``clr = lr / (1 + (t - 1) * lr_decay)`` in double; per element::

        g = g * s                                  s: clip scale, negated for maximize
        g = g + weight_decay * p                   if weight_decay != 0 and the leaf decays
        sum = sum + g * g
        p = p + ((-clr) * g) / (sqrt(sum) + eps)

    State slot: sum, which starts at initial_accumulator_value (read when the state is created).
    """

    lr_decay = _Hyper()
    weight_decay = _Hyper()
    initial_accumulator_value = _Hyper()
    eps = _Hyper()
    maximize = _Hyper()

    def __init__(self, lr: LR = 1e-2, lr_decay: float = 0, weight_decay: float = 0,
                 initial_accumulator_value: float = 0, eps: float = 1e-10, maximize: bool = False, *,
                 weight_decay_mask: Mask = None, max_grad_norm: Optional[float] = None,
                 check_finite: bool = False,
                 stochastic_rounding: bool = False, seed: int = 0) -> None:
        super().__init__(lr, weight_decay_mask=weight_decay_mask, max_grad_norm=max_grad_norm,
                         check_finite=check_finite,
                         stochastic_rounding=stochastic_rounding, seed=seed)
        self._set_all(dict(lr_decay=lr_decay, weight_decay=weight_decay,
                           initial_accumulator_value=initial_accumulator_value, eps=eps, maximize=maximize))

    def _rule(self) -> str:
        return "ADAGRAD"


class Lion(Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), decoupled decay.

    Per element, each operation rounded in the leaf's dtype::

        g = g * s                                  s: clip scale, negated for maximize
        p = p * (1 - lr * weight_decay)            if weight_decay != 0 and the leaf decays
        u = beta1 * m + (1 - beta1) * g
        p = p - lr * sign(u)                       sign(0) = 0
        m = beta2 * m + (1 - beta2) * g

    State slot: exp_avg (m).
    """

    betas = _Hyper("beta1", "beta2")
    weight_decay = _Hyper()
    maximize = _Hyper()

    def __init__(self, lr: LR = 1e-4, betas: Tuple[float, float] = (0.9, 0.99), weight_decay: float = 0,
                 maximize: bool = False, *, weight_decay_mask: Mask = None, max_grad_norm: Optional[float] = None,
                 check_finite: bool = False,
                 stochastic_rounding: bool = False, seed: int = 0) -> None:
        super().__init__(lr, weight_decay_mask=weight_decay_mask, max_grad_norm=max_grad_norm,
                         check_finite=check_finite,
                         stochastic_rounding=stochastic_rounding, seed=seed)
        self._set_all(dict(betas=betas, weight_decay=weight_decay, maximize=maximize))

    def _rule(self) -> str:
        return "LION"


# Not on the rule table: L-BFGS's flat-vector passes and Muon's BLAS products (own files).
from ._lbfgs_tree import LBFGS  # noqa: E402
from ._muon import Muon  # noqa: E402

__all__ += ["LBFGS", "Muon"]

# Adam's element math on 8-bit blockwise states of their own (docs/lowbit.md).
from ._quant8 import Adam8bit, AdamW8bit  # noqa: E402

__all__ += ["Adam8bit", "AdamW8bit"]
