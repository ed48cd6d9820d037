"""LBFGS and Muon side by side with torch.optim's (torch has one implementation
of each: no foreach or fused variant), and where a step's time goes.

Run from the repository root::

    python bench/bench_lbfgs_muon.py            # about a minute
    python bench/bench_lbfgs_muon.py --quick     # 1e4 and 1e5 elements, 3 repeats

LBFGS: a separable quadratic over 10 float32 tensors (1e4 and 1e6 elements in
all), the closure one autograd pass; max_iter=20, history_size=10, with and
without strong_wolfe. Reported: ms per step, and µs per closure evaluation of
the optimizer's own work (the step's time minus the closure's, over the
evaluations). Muon: float32 matrices (one 1024x1024, and 8 of 256x512).
Shares: the step's time in fusedopt's native passes (_core.lbfgs_* /
_core.muon_* calls), in the BLAS products (Muon), in the closure (LBFGS), and
the rest (Python). Timings are medians over repeats on whatever else the
machine runs.
"""
import argparse
import statistics
import time
from collections import defaultdict

import torch

import fusedopt.optim._lbfgs as lbfgs_core
import fusedopt.optim._muon as muon_core
import fusedopt.torch as ft
import fusedopt.torch._muon as ft_muon


class _Timed:
    """A stand-in for fusedopt._core whose lbfgs_*/muon_* calls add their time to `totals`."""

    def __init__(self, core, totals):
        self._core, self._totals = core, totals

    def __getattr__(self, name):
        fn = getattr(self._core, name)
        if not name.startswith(("lbfgs_", "muon_")):
            return fn

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self._totals["passes"] += time.perf_counter() - t0
        return timed


def lbfgs_case(cls, n, line_search, repeats, totals=None):
    torch.manual_seed(0)
    sizes = [n // 10] * 10
    ps = [torch.randn(k).requires_grad_() for k in sizes]
    cs = [torch.rand(k) + 0.5 for k in sizes]
    opt = cls(ps, max_iter=20, history_size=10, line_search_fn=line_search, lr=1 if line_search else 0.5)
    closure_time = [0.0]

    def closure():
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = sum(0.5 * (c * p * p).sum() - p.sum() for p, c in zip(ps, cs))
        loss.backward()
        closure_time[0] += time.perf_counter() - t0
        return loss
    step_times, per_eval = [], []
    for _ in range(repeats):
        for p in ps:  # start each step from a point that needs the full 20 iterations
            with torch.no_grad():
                p.add_(torch.randn_like(p))
        evals0 = opt.state[ps[0]].get("func_evals", 0) if ps[0] in opt.state else 0
        closure_time[0] = 0.0
        if totals is not None:
            before = dict(totals)
        t0 = time.perf_counter()
        opt.step(closure)
        dt = time.perf_counter() - t0
        evals = opt.state[ps[0]]["func_evals"] - evals0
        step_times.append(dt)
        per_eval.append((dt - closure_time[0]) / evals)
        if totals is not None:
            totals["closure"] += closure_time[0]
            totals["step"] += dt
    return statistics.median(step_times) * 1e3, statistics.median(per_eval) * 1e6


def muon_case(cls, shapes, repeats, totals=None):
    torch.manual_seed(0)
    ps = [torch.randn(*s) for s in shapes]
    opt = cls(ps, lr=0.02)
    times = []
    for _ in range(repeats + 2):
        for p in ps:
            p.grad = torch.randn_like(p)
        t0 = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t0)
        if totals is not None:
            totals["step"] += times[-1]
    return statistics.median(times[2:]) * 1e3


def shares(totals):
    step = totals["step"]
    known = sum(v for k, v in totals.items() if k != "step")
    parts = {k: v / step for k, v in totals.items() if k != "step"}
    parts["python"] = (step - known) / step
    return ", ".join(f"{k} {100 * v:.0f}%" for k, v in parts.items())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    repeats = 3 if args.quick else 7
    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch threads")
    print("\nLBFGS (float32, 10 tensors, max_iter=20, history_size=10)")
    print(f"{'elements':>9} {'line search':>12} {'implementation':>22} {'ms/step':>9} {'µs/eval (own)':>14}")
    for n in ((10_000, 100_000) if args.quick else (10_000, 1_000_000)):
        for ls in (None, "strong_wolfe"):
            for name, cls in (("torch.optim.LBFGS", torch.optim.LBFGS), ("fusedopt.torch.LBFGS", ft.LBFGS)):
                ms, us = lbfgs_case(cls, n, ls, repeats)
                print(f"{n:>9.0e} {str(ls):>12} {name:>22} {ms:>9.2f} {us:>14.1f}")
            totals = defaultdict(float)
            real = lbfgs_core._core
            lbfgs_core._core = _Timed(real, totals)
            try:
                lbfgs_case(ft.LBFGS, n, ls, repeats, totals)
            finally:
                lbfgs_core._core = real
            print(f"{'':>9} {'':>12} {'fusedopt step shares:':>22} {shares(totals)}")
    print("\nMuon (float32)")
    print(f"{'matrices':>14} {'implementation':>22} {'ms/step':>9}")
    for label, shapes in (("1x1024x1024", [(1024, 1024)]), ("8x256x512", [(256, 512)] * 8)):
        for name, cls in (("torch.optim.Muon", torch.optim.Muon), ("fusedopt.torch.Muon", ft.Muon)):
            print(f"{label:>14} {name:>22} {muon_case(cls, shapes, repeats):>9.2f}")
        totals = defaultdict(float)
        real_core, real_ns = muon_core._core, ft_muon._newton_schulz

        def ns(*args):
            t0 = time.perf_counter()
            try:
                return real_ns(*args)
            finally:
                totals["blas"] += time.perf_counter() - t0
        muon_core._core, ft_muon._newton_schulz = _Timed(real_core, totals), ns
        try:
            muon_case(ft.Muon, shapes, repeats, totals)
        finally:
            muon_core._core, ft_muon._newton_schulz = real_core, real_ns
        print(f"{'':>14} {'fusedopt step shares:':>22} {shares(totals)}")


if __name__ == "__main__":
    main()
