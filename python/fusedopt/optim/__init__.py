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
  (RMSprop centered), ``sum`` (Adagrad), ``exp_avg`` (Lion), ``exp_avg``,
  ``exp_avg_sq`` (NAdam, RAdam), ``exp_avg``, ``exp_inf`` (Adamax), ``square_avg``, ``acc_delta``
  (Adadelta), ``ax`` (ASGD), ``step_size``, ``prev`` (Rprop). ``{}`` before the
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

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "NAdam", "RAdam", "Adamax", "Adadelta", "ASGD", "Rprop", "RMSprop", "Adagrad", "Lion"]

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
                 stochastic_rounding: bool = False, stochastic_state: bool = False, seed: int = 0, master_weights: bool = False) -> None:
        super().__init__(lr, weight_decay_mask=weight_decay_mask, max_grad_norm=max_grad_norm,
                         check_finite=check_finite,
                         stochastic_rounding=stochastic_rounding,
                         stochastic_state=stochastic_state, seed=seed, master_weights=master_weights)
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
                 stochastic_rounding: bool = False, stochastic_state: bool = False, seed: int = 0, master_weights: bool = False) -> None:
        super().__init__(lr, weight_decay_mask=weight_decay_mask, max_grad_norm=max_grad_norm,
                         check_finite=check_finite,
                         stochastic_rounding=stochastic_rounding,
                         stochastic_state=stochastic_state, seed=seed, master_weights=master_weights)
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
                 stochastic_rounding: bool = False, stochastic_state: bool = False, seed: int = 0, master_weights: bool = False) -> None:
        super().__init__(lr, betas, eps, weight_decay, amsgrad, maximize, weight_decay_mask=weight_decay_mask,
                         max_grad_norm=max_grad_norm, check_finite=check_finite,
                         stochastic_rounding=stochastic_rounding,
                         stochastic_state=stochastic_state, seed=seed, master_weights=master_weights)


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
    torch keeps it in its default dtype: ``float32_scalars=True`` rounds mu and the
    product to float32 as torch's 0-d float32 tensor does, ``mu_product = f32(mu_product *
    f32(mu))``, for torch's results under its default dtype float32).
    """

    betas = _Hyper("beta1", "beta2")
    eps = _Hyper()
    weight_decay = _Hyper()
    momentum_decay = _Hyper()
    decoupled_weight_decay = _Hyper()
    maximize = _Hyper()
    float32_scalars = _Hyper()

    def __init__(self, lr: LR = 2e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, momentum_decay: float = 4e-3, decoupled_weight_decay: bool = False, *,
                 maximize: bool = False, float32_scalars: bool = False, weight_decay_mask: Mask = None,
                 max_grad_norm: Optional[float] = None, check_finite: bool = False,
                 stochastic_rounding: bool = False, stochastic_state: bool = False, seed: int = 0, master_weights: bool = False) -> None:
        super().__init__(lr, weight_decay_mask=weight_decay_mask, max_grad_norm=max_grad_norm,
                         check_finite=check_finite,
                         stochastic_rounding=stochastic_rounding,
                         stochastic_state=stochastic_state, seed=seed, master_weights=master_weights)
        self._set_all(dict(betas=betas, eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay,
                           decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                           float32_scalars=float32_scalars))

    def _rule(self) -> str:
        return "NADAM"


class RAdam(Optimizer):
    """RAdam (Liu et al. 2020, Adam with the variance rectified), as torch.optim.RAdam.

    Per step t (1 for the first), in double as torch computes them in Python::

        bc1 = 1 - beta1**t;  bc2 = 1 - beta2**t
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * t * beta2**t / bc2
        rectified = rho_t > 5                  torch's branch, chosen per step
        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5

    then per element, each operation rounded in the leaf's dtype::

        g = g * s                              s: clip scale, negated for maximize
        g = g + weight_decay * p               if the leaf decays (L2)
        p = p * (1 - lr * weight_decay)        decoupled_weight_decay instead
        m = m + w * (g - m)                    w = 1 - beta1 (torch's lerp, as Adam's)
        v = v * beta2 + ((1 - beta2) * g) * g
        u = (m / bc1) * lr
        p = p - (u * ((1 / (sqrt(v) + eps)) * bc2 ** 0.5)) * rect      if rectified
        p = p - u                                                       otherwise

    State slots: exp_avg (m), exp_avg_sq (v).
    """

    betas = _Hyper("beta1", "beta2")
    eps = _Hyper()
    weight_decay = _Hyper()
    decoupled_weight_decay = _Hyper()
    maximize = _Hyper()

    def __init__(self, lr: LR = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, decoupled_weight_decay: bool = False, *, maximize: bool = False,
                 weight_decay_mask: Mask = None, max_grad_norm: Optional[float] = None,
                 check_finite: bool = False,
                 stochastic_rounding: bool = False, stochastic_state: bool = False, seed: int = 0, master_weights: bool = False) -> None:
        super().__init__(lr, weight_decay_mask=weight_decay_mask, max_grad_norm=max_grad_norm,
                         check_finite=check_finite,
                         stochastic_rounding=stochastic_rounding,
                         stochastic_state=stochastic_state, seed=seed, master_weights=master_weights)
        self._set_all(dict(betas=betas, eps=eps, weight_decay=weight_decay,
                           decoupled_weight_decay=decoupled_weight_decay, maximize=maximize))

    def _rule(self) -> str:
        return "RADAM"


class Adamax(Optimizer):
    """Adamax (Kingma & Ba 2015, Adam with the infinity norm), as torch.optim.Adamax.

    Per element, in this order (each operation rounded in the leaf's dtype;
    ``clr = lr / (1 - beta1**t)`` computed in double, then rounded)::

        g = g * s                              s: clip scale, negated for maximize
        g = g + weight_decay * p               if the leaf decays (L2)
        m = m + w * (g - m)                    w = 1 - beta1 (torch's lerp, as Adam's)
        u = maximum(u * beta2, |g| + eps)      NaN if either side is NaN (torch.maximum)
        p = p + ((-clr) * m) / u

    State slots: exp_avg (m), exp_inf (u).
    """

    betas = _Hyper("beta1", "beta2")
    eps = _Hyper()
    weight_decay = _Hyper()
    maximize = _Hyper()

    def __init__(self, lr: LR = 2e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, *, maximize: bool = False, weight_decay_mask: Mask = None,
                 max_grad_norm: Optional[float] = None, check_finite: bool = False,
                 stochastic_rounding: bool = False, stochastic_state: bool = False, seed: int = 0, master_weights: bool = False) -> None:
        super().__init__(lr, weight_decay_mask=weight_decay_mask, max_grad_norm=max_grad_norm,
                         check_finite=check_finite,
                         stochastic_rounding=stochastic_rounding,
                         stochastic_state=stochastic_state, seed=seed, master_weights=master_weights)
        self._set_all(dict(betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize))

    def _rule(self) -> str:
        return "ADAMAX"


class Adadelta(Optimizer):
    """Adadelta (Zeiler 2012), as torch.optim.Adadelta.

    Per element, in this order (each operation rounded in the leaf's dtype)::

        g = g * s                              s: clip scale, negated for maximize
        g = g + weight_decay * p               if the leaf decays (L2)
        v = v * rho + ((1 - rho) * g) * g
        delta = (sqrt(a + eps) / sqrt(v + eps)) * g
        a = a * rho + ((1 - rho) * delta) * delta
        p = p + (-lr) * delta

    State slots: square_avg (v), acc_delta (a).
    """

    rho = _Hyper()
    eps = _Hyper()
    weight_decay = _Hyper()
    maximize = _Hyper()

    def __init__(self, lr: LR = 1.0, rho: float = 0.9, eps: float = 1e-6, weight_decay: float = 0, *,
                 maximize: bool = False, weight_decay_mask: Mask = None, max_grad_norm: Optional[float] = None,
                 check_finite: bool = False,
                 stochastic_rounding: bool = False, stochastic_state: bool = False, seed: int = 0, master_weights: bool = False) -> None:
        super().__init__(lr, weight_decay_mask=weight_decay_mask, max_grad_norm=max_grad_norm,
                         check_finite=check_finite,
                         stochastic_rounding=stochastic_rounding,
                         stochastic_state=stochastic_state, seed=seed, master_weights=master_weights)
        self._set_all(dict(rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize))

    def _rule(self) -> str:
        return "ADADELTA"


class ASGD(Optimizer):
    """Averaged SGD (Polyak & Juditsky 1992), as torch.optim.ASGD.

    The scalar state eta (the step size) and mu (the averaging weight) are
    torch's: at the first step eta = lr and mu = 1; after step t, in double as
    torch computes them in Python::

        eta = lr / (1 + lambd * lr * t) ** alpha
        mu = 1 / max(1, t - t0)

    Per element, in this order (each operation rounded in the leaf's dtype)::

        g = g * s                              s: clip scale, negated for maximize
        g = g + weight_decay * p               if the leaf decays (L2)
        p = p * (1 - lambd * eta)
        p = p + (-eta) * g
        ax = ax + (p - ax) * mu                if mu != 1 (torch's test, per step)
        ax = p                                 otherwise

    State slot: ax (the average); scalar state: eta, mu (kept in double;
    ``float32_scalars=True`` rounds each to float32 as torch's 0-d tensors
    under its default dtype float32). Before the first step eta reads -1: not
    made yet, the first step takes lr (torch makes eta = lr then).
    """

    lambd = _Hyper()
    alpha = _Hyper("power")
    t0 = _Hyper()
    weight_decay = _Hyper()
    maximize = _Hyper()
    float32_scalars = _Hyper()

    def __init__(self, lr: LR = 1e-2, lambd: float = 1e-4, alpha: float = 0.75, t0: float = 1e6,
                 weight_decay: float = 0, *, maximize: bool = False, float32_scalars: bool = False,
                 weight_decay_mask: Mask = None, max_grad_norm: Optional[float] = None,
                 check_finite: bool = False,
                 stochastic_rounding: bool = False, stochastic_state: bool = False, seed: int = 0, master_weights: bool = False) -> None:
        super().__init__(lr, weight_decay_mask=weight_decay_mask, max_grad_norm=max_grad_norm,
                         check_finite=check_finite,
                         stochastic_rounding=stochastic_rounding,
                         stochastic_state=stochastic_state, seed=seed, master_weights=master_weights)
        self._set_all(dict(lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay, maximize=maximize,
                           float32_scalars=float32_scalars))

    def _rule(self) -> str:
        return "ASGD"


class Rprop(Optimizer):
    """Rprop (Riedmiller & Braun 1993, resilient backpropagation), as torch.optim.Rprop.

    Sign-based: each element keeps its own step size, grown by etaplus while its
    gradient keeps its sign and shrunk by etaminus when the sign flips. Per
    element, in this order (each operation rounded in the leaf's dtype)::

        g = g * s                              s: clip scale, negated for maximize
        step_size = lr                         at the first step (torch makes it then)
        s = sign(g * prev)                     prev starts at 0; sign is torch's: 0 for NaN
        f = etaplus if s > 0, etaminus if s < 0, else 1
        step_size = min(max(step_size * f, step_size_min), step_size_max)    NaN-propagating
        g = 0 where s < 0                      no step after a sign change
        p = p - sign(g) * step_size
        prev = g

    State slots: step_size, prev. lr is read at the first step only (as torch's).
    torch's Rprop has no weight decay: this one has none either (weight_decay_mask,
    every class's option, has nothing to mask).
    """

    etas = _Hyper("etaminus", "etaplus")
    step_sizes = _Hyper("step_size_min", "step_size_max")
    maximize = _Hyper()

    def __init__(self, lr: LR = 1e-2, etas: Tuple[float, float] = (0.5, 1.2),
                 step_sizes: Tuple[float, float] = (1e-6, 50), *, maximize: bool = False,
                 weight_decay_mask: Mask = None, max_grad_norm: Optional[float] = None,
                 check_finite: bool = False,
                 stochastic_rounding: bool = False, stochastic_state: bool = False, seed: int = 0, master_weights: bool = False) -> None:
        super().__init__(lr, weight_decay_mask=weight_decay_mask, max_grad_norm=max_grad_norm,
                         check_finite=check_finite,
                         stochastic_rounding=stochastic_rounding,
                         stochastic_state=stochastic_state, seed=seed, master_weights=master_weights)
        self._set_all(dict(etas=etas, step_sizes=step_sizes, maximize=maximize))

    def _validate(self) -> None:
        etaminus, etaplus = self._values.get("etas", (0.5, 1.2))
        if not 0.0 < etaminus < 1.0 < etaplus:
            raise ValueError(f"etas must satisfy 0 < etas[0] < 1 < etas[1], got ({etaminus!r}, {etaplus!r})")

    def _rule(self) -> str:
        return "RPROP"


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
                 stochastic_rounding: bool = False, stochastic_state: bool = False, seed: int = 0, master_weights: bool = False) -> None:
        super().__init__(lr, weight_decay_mask=weight_decay_mask, max_grad_norm=max_grad_norm,
                         check_finite=check_finite,
                         stochastic_rounding=stochastic_rounding,
                         stochastic_state=stochastic_state, seed=seed, master_weights=master_weights)
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
                 stochastic_rounding: bool = False, stochastic_state: bool = False, seed: int = 0, master_weights: bool = False) -> None:
        super().__init__(lr, weight_decay_mask=weight_decay_mask, max_grad_norm=max_grad_norm,
                         check_finite=check_finite,
                         stochastic_rounding=stochastic_rounding,
                         stochastic_state=stochastic_state, seed=seed, master_weights=master_weights)
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
                 stochastic_rounding: bool = False, stochastic_state: bool = False, seed: int = 0, master_weights: bool = False) -> None:
        super().__init__(lr, weight_decay_mask=weight_decay_mask, max_grad_norm=max_grad_norm,
                         check_finite=check_finite,
                         stochastic_rounding=stochastic_rounding,
                         stochastic_state=stochastic_state, seed=seed, master_weights=master_weights)
        self._set_all(dict(betas=betas, weight_decay=weight_decay, maximize=maximize))

    def _rule(self) -> str:
        return "LION"


# Not on the rule table: L-BFGS's flat-vector passes and Muon's BLAS products (own files).
from ._lbfgs_tree import LBFGS  # noqa: E402
from ._muon import Muon  # noqa: E402
from ._adafactor import Adafactor  # noqa: E402

__all__ += ["LBFGS", "Muon", "Adafactor"]

# Adam's and Lion's element math on 8-bit blockwise states of their own (docs/lowbit.md).
from ._quant8 import Adam8bit, AdamW8bit, Lion8bit  # noqa: E402

__all__ += ["Adam8bit", "AdamW8bit", "Lion8bit"]
