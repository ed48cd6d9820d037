"""fusedopt.optim against torch.optim 2.13 (foreach=False) over many steps:
float64 to 1e-12 relative, float32 to 1e-5 relative (torch's CPU kernels use
FMAs in their vector loops and fusedopt does not, so the last bits differ);
masks against parameter groups, clipping against clip_grad_norm_. torch runs
with float64 as its default dtype: it keeps per-parameter scalar state (the
step, NAdam's mu_product) in the default dtype, fusedopt keeps it in double."""
import inspect

import numpy as np
import pytest

from fusedopt import optim
from optim_cases import FUSEDOPT_ONLY, OPTIM, TORCH_CASES

torch = pytest.importorskip("torch")

TOL = {np.float64: dict(rtol=1e-12, atol=1e-14), np.float32: dict(rtol=1e-5, atol=1e-6)}

SHAPES = [(7,), (33, 5), (100,)]


def _grads(rng, dtype, step):
    # Non-trivial gradients: changing scale and sign pattern, a few exact zeros.
    out = []
    for s in SHAPES:
        g = rng.standard_normal(s) * (1 + np.sin(step))
        g[..., 0] = 0.0
        out.append(g.astype(dtype))
    return out


@pytest.fixture(autouse=True)
def _torch_default_float64():
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(saved)


def _compare(kind, hyper, dtype, rng, steps=60, groups=None, clip=None, mask=None, ours=None):
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    tparams = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    lr = 0.01
    opt = getattr(optim, kind)(lr=lr, weight_decay_mask=mask, max_grad_norm=clip, **hyper, **(ours or {}))
    tcls = getattr(torch.optim, kind)
    if groups is None:
        topt = tcls(tparams, lr=lr, foreach=False, **hyper)
    else:
        topt = tcls([{"params": [t for t, g in zip(tparams, groups) if g]},
                     {"params": [t for t, g in zip(tparams, groups) if not g], "weight_decay": 0.0}],
                    lr=lr, foreach=False, **hyper)
    for step in range(steps):
        grads = _grads(rng, dtype, step)
        opt.step(params, grads)
        for t, g in zip(tparams, grads):
            t.grad = torch.tensor(g.copy())
        if clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(tparams, clip, foreach=False)
            assert opt.last_grad_norm == pytest.approx(float(norm), rel=1e-5 if dtype == np.float32 else 1e-12)
        topt.step()
    for p, t in zip(params, tparams):
        np.testing.assert_allclose(p, t.detach().numpy(), **TOL[dtype])
    state = opt.state_arrays()
    for name, leaves in state.items():
        for leaf, t in zip(leaves, tparams):
            np.testing.assert_allclose(leaf, topt.state[t][name].numpy(), **TOL[dtype])
    assert opt.step_count == steps


@pytest.mark.parametrize("kind,hyper", TORCH_CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_parity_with_torch(kind, hyper, dtype, rng):
    _compare(kind, hyper, dtype, rng)


@pytest.mark.parametrize("kind,hyper", [(k, {n: v for n, v in h.items() if n not in FUSEDOPT_ONLY})
                                        for k, h in [(e.name, h) for e in OPTIM for h in e.cases]
                                        if set(h) & set(FUSEDOPT_ONLY)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_float32_scalars_match_torch_under_its_float32_default(kind, hyper, dtype, rng):
    """float32_scalars=True: the scalar state rounded as torch's 0-d float32 tensors, so
    float64 leaves agree with torch under its default dtype float32 to float64's tolerance."""
    torch.set_default_dtype(torch.float32)
    _compare(kind, hyper, dtype, rng, ours={"float32_scalars": True})


@pytest.mark.parametrize("kind,hyper", [(e.name, e.rich) for e in OPTIM if e.torch and
                                        "weight_decay" in inspect.signature(getattr(optim, e.name)).parameters])
def test_mask_matches_parameter_groups(kind, hyper, rng):  # (Rprop has no weight decay to mask)
    groups = [True, False, True]
    _compare(kind, {**hyper, "weight_decay": 0.2}, np.float64, rng, steps=20, groups=groups, mask=groups)


def test_callable_mask_matches_parameter_groups(rng):
    # Decay only the 2-d leaf (optax's "no decay on biases" idiom).
    _compare("AdamW", {"weight_decay": 0.3}, np.float64, rng, steps=20, groups=[False, True, False],
             mask=lambda path, a: a.ndim == 2)


@pytest.mark.parametrize("kind,hyper", [(e.name, e.rich) for e in OPTIM if e.torch])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_clipping_matches_clip_grad_norm(kind, hyper, dtype, rng):
    # max_norm 1.5: gradients of norm ~10-20, so every step clips (and the scale varies).
    _compare(kind, hyper, dtype, rng, steps=30, clip=1.5)


def test_clipping_is_a_no_op_below_the_norm(rng):
    _compare("Adam", {}, np.float64, rng, steps=10, clip=1e6)
