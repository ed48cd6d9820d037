"""fusedopt's main job, end to end: train with ADAM, the same bits as numpy, and time both.

    python bench/demo.py                 # 5 interleaved rounds (about 10-20 s)
    python bench/demo.py --rounds 9      # more rounds: steadier medians

A linear regression y = x @ W + b with 1,001,000 float32 parameters (W: 1000 x
1000, b: 1000) is trained from the same start on the same minibatches twice per
round: once with fusedopt's ADAM stepping the parameters in place, once with a
plain float32 numpy ADAM of the same semantics (docs/semantics.md,
peers.NumpyOptimizer). The two alternate which goes first from round to round.
The learning rate follows an ExponentialDecay schedule advanced once per epoch
with update_lr(), as paysage's training loops do.

Printed: the thread settings (fusedopt's, BLAS's, the OpenMP environment), a
warning when they ask for more threads than the machine has cores, whether the
two trainings' parameters are bit-identical in every round (exit status 1 if
not), and, per implementation, the median over rounds of the median optimizer
step and of the whole training, with the range over rounds.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import NumpyOptimizer  # noqa: E402

import fusedopt  # noqa: E402
from fusedopt import optimizers, schedules  # noqa: E402

BATCH, BATCHES, EPOCHS = 256, 8, 4
ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def blas_threads():
    """[(library, threads)] of the BLAS libraries numpy loaded, or None without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return [(i.get("internal_api", i["prefix"]), i["num_threads"]) for i in threadpool_info()
            if i.get("user_api") == "blas"]


def thread_report():
    """Lines stating the thread settings, and a warning if BLAS and fusedopt oversubscribe the cores."""
    cores = os.cpu_count() or 1
    ours = fusedopt.get_num_threads()
    blas = blas_threads()
    env = ", ".join(f"{k}={os.environ[k]}" for k in ENV if k in os.environ) or "none set"
    lines = [f"threads: fusedopt {ours} (SIMD {fusedopt.simd_level()}); BLAS "
             + ("unknown (pip install threadpoolctl to see it)" if blas is None else
                ", ".join(f"{lib} {n}" for lib, n in blas) or "none loaded")
             + f"; {cores} cores; environment: {env}"]
    blas_max = max((n for _, n in blas or []), default=1)
    if blas and ours > 1 and blas_max > 1 and ours + blas_max > cores:
        lines.append(
            f"note: BLAS ({blas_max} threads) and fusedopt ({ours} threads) together want more than the "
            f"{cores} cores; between matrix products BLAS's threads spin and a fusedopt step can wait for a "
            "descheduled thread. Choose one: OPENBLAS_NUM_THREADS=1 (or threadpoolctl's threadpool_limits), "
            "fusedopt.set_num_threads(1) / OMP_NUM_THREADS=1, or OMP_WAIT_POLICY=passive.")
    return lines


def make_data(rng, n_in, n_out):
    x = rng.standard_normal((BATCHES * BATCH, n_in), dtype=np.float32)
    w_true = rng.standard_normal((n_in, n_out), dtype=np.float32) / np.float32(np.sqrt(n_in))
    y = x @ w_true + np.float32(0.01) * rng.standard_normal((len(x), n_out), dtype=np.float32)
    return x, y


def gradient(params, x, y):
    """Loss 0.5 * mean squared error per sample, and its gradient (a dict tree like params)."""
    err = x @ params["W"] + params["b"] - y
    grad = {"W": (x.T @ err) / np.float32(len(x)), "b": err.mean(axis=0)}
    return float(0.5 * np.mean(np.sum(err * err, axis=1))), grad


def train(step, set_lr, params, x, y):
    """Minibatch training; returns (losses, seconds of each optimizer step, seconds in all)."""
    losses, steps = [], []
    t_all = time.perf_counter()
    for _ in range(EPOCHS):
        set_lr()
        for k in range(BATCHES):
            batch = slice(k * BATCH, (k + 1) * BATCH)
            loss, grad = gradient(params, x[batch], y[batch])
            losses.append(loss)
            t0 = time.perf_counter()
            step(params, grad)
            steps.append(time.perf_counter() - t0)
    return losses, steps, time.perf_counter() - t_all


def run_fusedopt(start, schedule, x, y):
    params = {k: v.copy() for k, v in start.items()}
    adam = optimizers.ADAM(stepsize=schedule.copy())
    return params, train(adam.update, adam.update_lr, params, x, y)


def run_numpy(start, schedule, x, y):
    params = {k: v.copy() for k, v in start.items()}
    reference = NumpyOptimizer("ADAM")
    ref_schedule = schedule.copy()

    def set_lr():
        reference.lr = np.float32(next(ref_schedule))

    def step(p, g):
        reference.step(list(p.values()), list(g.values()))

    return params, train(step, set_lr, params, x, y)


def summary(name, step_medians, totals):
    med_step, med_total = statistics.median(step_medians), statistics.median(totals)
    return (f"  {name:<9} optimizer step {1e3 * med_step:7.3f} ms (rounds {1e3 * min(step_medians):.3f}-"
            f"{1e3 * max(step_medians):.3f})   whole training {med_total:6.2f} s "
            f"(rounds {min(totals):.2f}-{max(totals):.2f})"), med_step, med_total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--size", type=int, default=1000, help="W is size x size (default 1000)")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.size < 1:
        ap.error("--rounds and --size must be positive")

    rng = np.random.default_rng(0)
    x, y = make_data(rng, args.size, args.size)
    start = {"W": np.zeros((args.size, args.size), np.float32), "b": np.zeros(args.size, np.float32)}
    schedule = schedules.ExponentialDecay(initial=0.01, coefficient=0.8)
    n = sum(v.size for v in start.values())
    print(f"linear regression, {n:,} float32 parameters, ADAM, {EPOCHS * BATCHES} steps per training, "
          f"{args.rounds} interleaved rounds")
    for line in thread_report():
        print(line)

    runs = {"fusedopt": run_fusedopt, "numpy": run_numpy}
    steps = {k: [] for k in runs}
    totals = {k: [] for k in runs}
    identical_rounds = 0
    for r in range(args.rounds):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        results = {}
        for name in order:
            params, (losses, step_times, total) = runs[name](start, schedule, x, y)
            results[name] = params, losses
            steps[name].append(statistics.median(step_times))
            totals[name].append(total)
        identical_rounds += all(np.array_equal(results["fusedopt"][0][k], results["numpy"][0][k]) for k in start)
    losses = results["fusedopt"][1]
    print(f"loss: {losses[0]:.4f} -> {losses[-1]:.4f}")
    print(f"parameters bit-identical to the numpy ADAM: {identical_rounds == args.rounds} "
          f"({identical_rounds} of {args.rounds} rounds)")
    print("medians over rounds (each round: the median step of its training):")
    line_f, step_f, total_f = summary("fusedopt", steps["fusedopt"], totals["fusedopt"])
    line_n, step_n, total_n = summary("numpy", steps["numpy"], totals["numpy"])
    print(line_f)
    print(line_n)
    print(f"  ratio numpy / fusedopt: optimizer step {step_n / step_f:.2f}x, whole training "
          f"{total_n / total_f:.2f}x (the matrix products of the gradients are the same numpy code in both)")
    load = os.getloadavg()[0]
    if load > 1.0:
        print(f"note: load average {load:.1f} on {os.cpu_count()} cores: other processes competed for the CPU "
              "during these measurements")
    return 0 if identical_rounds == args.rounds else 1


if __name__ == "__main__":
    sys.exit(main())
