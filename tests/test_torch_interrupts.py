"""fusedopt.torch's Adafactor and Muon under exceptions from a signal handler
(docs/torch.md, "Interrupts"): a KeyboardInterrupt raised at a random point of
a step leaves the optimizer, at the next look at it, fully before or fully
after the step: parameters, state and step counts. A timer interrupts steps of
many small parameters (the commit is a good part of such a step); after each
one the optimizer must equal, bit for bit, an uninterrupted twin either as it
is or after the twin takes the same step."""
import signal

import pytest

torch = pytest.importorskip("torch")

import fusedopt.torch as ft  # noqa: E402
from interrupt_twin import cut_short_step, interrupted_steps, step_time  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")


def _adafactor_params(seed):
    """Matrices, vectors and a transposed (non-contiguous) matrix, which the step copies back."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (5,), (2, 3, 2)] * 10
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    params.append(torch.nn.Parameter(torch.randn(6, 4, generator=g).t()))
    return [{"params": params[:16]}, {"params": params[16:], "lr": 3e-3, "weight_decay": 0.1}]


def _muon_params(seed):
    """Two groups of different lr, weight decay and dtype: one native call updates both."""
    g = torch.Generator().manual_seed(seed)
    first = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in [(6, 4), (3, 5)] * 6]
    second = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64)) for s in [(4, 4), (5, 2)] * 4]
    return [{"params": first}, {"params": second, "lr": 2e-2, "weight_decay": 0.3}]


CASES = {"Adafactor": (ft.Adafactor, _adafactor_params, {"lr": 1e-2}),
         "Muon": (ft.Muon, _muon_params, {"lr": 1e-2})}


def _params(opt):
    return [p for group in opt.param_groups for p in group["params"]]


def _snapshot(opt):
    """What a look at the optimizer shows: its state dict (every state tensor, the step
    counts) and the parameters, as copies."""
    saved = opt.state_dict()["state"]
    state = {k: {slot: v.clone() for slot, v in entry.items()} for k, entry in saved.items()}
    return state, [p.detach().clone() for p in _params(opt)]


def _bits(t):
    return t.contiguous().view(torch.int64 if t.dtype == torch.float64 else torch.int32)


def _same(a, b):
    (sa, pa), (sb, pb) = a, b
    if sa.keys() != sb.keys() or any(sa[k].keys() != sb[k].keys() for k in sa):
        return False
    tensors = [(x, y) for k in sa for x, y in ((sa[k][s], sb[k][s]) for s in sa[k])] + list(zip(pa, pb))
    return all(x.dtype == y.dtype and x.shape == y.shape and torch.equal(_bits(x), _bits(y)) for x, y in tensors)


def _set_grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)


def _plan_params(seed):
    """One group (one native call: the unit the classes on the plan commit atomically; the
    groups of a step run one after another, docs/torch.md) of many small parameters."""
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in [(3, 2), (5,)] * 20]


# The classes on the plan, stepped with gradients written into the same .grad tensors: every
# step after the first runs the steady-state path (no check repeated), whose commit is timed.
KEPT_CASES = {"AdamW": (ft.AdamW, _plan_params, {"lr": 1e-2}),
              "NAdam": (ft.NAdam, _plan_params, {"lr": 1e-2})}


def _kept_grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        new = torch.randn(p.shape, generator=g, dtype=p.dtype)
        if p.grad is None:
            p.grad = new
        else:
            p.grad.copy_(new)


@pytest.mark.parametrize("name", sorted(CASES) + [f"{n} kept grads" for n in sorted(KEPT_CASES)])
def test_an_interrupted_step_is_all_done_or_not_begun(name):
    kept = name.endswith(" kept grads")
    cls, make, hyper = KEPT_CASES[name.split()[0]] if kept else CASES[name]
    _set_grads = _kept_grads if kept else globals()["_set_grads"]
    opt, twin = cls(make(1), **hyper), cls(make(1), **hyper)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steady step times (Muon's products), also on a loaded machine
    scratch = cls(make(0), **hyper)

    def scratch_step(k):
        _set_grads(_params(scratch), k)
        scratch.step()

    def step(k):
        _set_grads(_params(opt), 100 + k)
        _set_grads(_params(twin), 100 + k)
        opt.step()

    # The timer must hit steps before their native call (not stepped) and after it (the commit
    # completed); the window after the call is a few µs, so on a loaded machine (timer jitter)
    # a few more rounds of 300 steps may be needed to land in it.
    total: dict = {}
    try:
        for seed in range(3, 9):
            outcomes = interrupted_steps(step, lambda k: twin.step(), lambda: (_snapshot(opt), _snapshot(twin)),
                                         _same, step_time(scratch_step), seed=seed)
            total = {k: total.get(k, 0) + v for k, v in outcomes.items()}
            if total[True, False] > 0 and total[True, True] > 0 and total[False, True] > 0:
                break
    finally:
        torch.set_grad_enabled(True)  # an interrupt inside torch.no_grad's __enter__ skips its __exit__
        torch.set_num_threads(threads)
    assert total[True, False] > 0 and total[True, True] > 0 and total[False, True] > 0, total
    for p, q in zip(_params(opt), _params(twin)):
        assert torch.equal(_bits(p.detach()), _bits(q.detach()))


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_commit_cut_short_shows_at_the_next_look(name, monkeypatch):
    """An exception right after the native call (as a signal handler may raise there):
    the step happened, so the next look at the state shows all of it; one raised
    just before the call leaves everything as it was."""
    cls, make, hyper = CASES[name]
    for after in (True, False):
        opt, twin = cls(make(2), **hyper), cls(make(2), **hyper)
        for o in (opt, twin):
            _set_grads(_params(o), 7)
            o.step()
            _set_grads(_params(o), 8)
        cut_short_step(monkeypatch, opt.step, after)
        if after:
            twin.step()
        assert opt._pending is not None
        assert _same(_snapshot(opt), _snapshot(twin))
        assert opt._pending is None
