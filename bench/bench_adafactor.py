"""Adafactor side by side: fusedopt.optim.Adafactor (numpy), fusedopt.torch.Adafactor,
torch.optim.Adafactor with foreach=True (its fastest) and its default single-tensor loop.

Run from the repository root::

    python bench/bench_adafactor.py            # a few minutes
    python bench/bench_adafactor.py --quick    # the small cases, fewer rounds

Cases: one float32 matrix of 1e3 to 4e6 elements (near square), and a tree of
1000 matrices of 10x10 ("1000x100"). Each implementation steps its own copy;
the time per step is bench_step.measure's median (after warm-up), then the
median over interleaved rounds (every implementation once per round), reported with the ratio to torch's foreach. Timings are
taken on whatever else the machine runs: give its load with the table.
"""
import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_step  # noqa: E402  (bench/ is not a package)

import fusedopt
import fusedopt.torch as ft
from fusedopt import optim

CASES = {"1e3": [(25, 40)], "1e4": [(100, 100)], "1e5": [(250, 400)], "1e6": [(1000, 1000)],
         "4e6": [(2000, 2000)], "1000x100": [(10, 10)] * 1000}
QUICK = ("1e3", "1e4", "1e5", "1000x100")


def steppers(shapes):
    gen = torch.Generator().manual_seed(0)
    made = {}
    for name in ("torch foreach", "torch single", "fusedopt.torch"):
        ps = [torch.randn(s, generator=gen) for s in shapes]
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen)
        if name == "fusedopt.torch":
            opt = ft.Adafactor(ps)
        else:
            opt = torch.optim.Adafactor(ps, foreach=name == "torch foreach")
        made[name] = opt.step
    arrays = [np.asarray(np.random.default_rng(1).standard_normal(s), np.float32) for s in shapes]
    grads = [np.asarray(np.random.default_rng(2).standard_normal(s), np.float32) for s in shapes]
    numpy_opt = optim.Adafactor()
    made["fusedopt.optim"] = lambda: numpy_opt.step(arrays, grads)
    return made


def run(case, rounds, budget):
    made = steppers(CASES[case])
    times = {name: [] for name in made}
    for _ in range(rounds):
        for name, step in made.items():
            times[name].append(bench_step.measure(step, budget, 50)[0])
    return {name: statistics.median(v) for name, v in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--budget", type=float, default=0.1, help="seconds per measurement")
    args = ap.parse_args(argv)
    cases = QUICK if args.quick else tuple(CASES)
    rounds = args.rounds or (5 if args.quick else 9)
    print(f"fusedopt {fusedopt.__version__}, torch {torch.__version__}, {fusedopt.get_num_threads()} threads, "
          f"SIMD {fusedopt.simd_level()}, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    names = ("fusedopt.optim", "fusedopt.torch", "torch foreach", "torch single")
    print("| case | " + " | ".join(f"{n} µs" for n in names) + " | fusedopt.torch / torch foreach |")
    print("|---" * (len(names) + 2) + "|")
    for case in cases:
        med = run(case, rounds, args.budget)
        cells = " | ".join(f"{med[n] * 1e6:.1f}" for n in names)
        print(f"| {case} | {cells} | {med['torch foreach'] / med['fusedopt.torch']:.2f}x faster |")


if __name__ == "__main__":
    main()
