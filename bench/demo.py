"""fusedopt's main job, end to end: train with ADAM, the same bits as numpy, and time both.

    python bench/demo.py                 # 5 interleaved rounds (about 15 s)
    python bench/demo.py --rounds 9      # more rounds: steadier medians
    python bench/demo.py --threads-as-is # keep the thread counts as they are (no thread_limits)

A linear regression y = x @ W + b with 1,001,000 float32 parameters (W: 1000 x
1000, b: 1000) is trained from the same start on the same minibatches twice per
round: once with fusedopt's ADAM stepping the parameters in place, once with a
plain float32 numpy ADAM of the same semantics (docs/semantics.md,
peers.NumpyOptimizer). The two alternate which goes first from round to round.
The learning rate follows an ExponentialDecay schedule advanced once per epoch
with update_lr(), as paysage's training loops do.

The training runs in the thread configuration docs/threads.md recommends for
loops of matrix products and steps, ``fusedopt.thread_limits.training()``: when
BLAS's threads and fusedopt's together would outnumber the cores, fusedopt steps
on the calling thread and BLAS keeps its threads (BLAS's spinning threads would
otherwise hold the cores a step's helper threads need).

Printed: the thread settings, whether the two trainings' parameters are
bit-identical in every round (exit status 1 if not), per implementation the
median over rounds of the median optimizer step and of the whole training with
the spread over rounds ((max - min) / median), the two speedups, and one line per
other family at one size: fusedopt.optim.Adam against a numpy textbook Adam, and
fusedopt.torch.Adam against torch.optim.Adam(fused=True) (when torch is installed).
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import NumpyOptimizer, Skip  # noqa: E402
import peers_optim as textbook  # noqa: E402

import fusedopt  # noqa: E402
from fusedopt import optimizers, schedules  # noqa: E402

BATCH, BATCHES, EPOCHS = 256, 8, 8
ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def thread_report(limits):
    """One line stating the thread settings the training runs with, and why."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    blas = ", ".join(f"{lib} {n}" for lib, n in fusedopt.blas_threads()) or "none found"
    env = ", ".join(f"{k}={os.environ[k]}" for k in ENV if k in os.environ) or "none set"
    if limits is None:
        how = "as they were (--threads-as-is)"
    elif fusedopt.get_num_threads() != limits.before["fusedopt"]:
        how = (f"fusedopt.thread_limits.training(): fusedopt steps on the calling thread, as its "
               f"{limits.before['fusedopt']} threads and BLAS's would outnumber the cores")
    else:
        how = "fusedopt.thread_limits.training(): unchanged, the cores suffice"
    return (f"threads: fusedopt {fusedopt.get_num_threads()} (SIMD {fusedopt.simd_level()}), BLAS {blas}, "
            f"{cores} cores [{how}]; environment: {env}")


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


def spread(values):
    return (max(values) - min(values)) / statistics.median(values)


def summary(name, step_medians, totals):
    med_step, med_total = statistics.median(step_medians), statistics.median(totals)
    return (f"  {name:<9} optimizer step {1e3 * med_step:7.3f} ms (spread {spread(step_medians):4.0%})   "
            f"whole training {med_total:6.3f} s (spread {spread(totals):4.0%})"), med_step, med_total


def step_time(step, repeats):
    """Median seconds of `repeats` calls of step()."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def family_line(label, ours, peer, size, rounds=5, repeats=20):
    """One line: the median step of `ours` and `peer` (make(name, params, grads) -> step on
    float32 arrays of `size` elements) in interleaved rounds, and the speedup."""
    rng = np.random.default_rng(1)
    steps = []
    try:
        for make in (ours, peer):
            p = rng.standard_normal(size, dtype=np.float32)
            g = np.float32(1e-3) * rng.standard_normal(size, dtype=np.float32)
            steps.append(make[1](make[0], [p], [g]))
    except (Skip, ImportError) as e:
        return f"  {label}: skipped ({e})"
    times = [[], []]
    for _ in range(rounds):
        for k, step in enumerate(steps):
            times[k].append(step_time(step, repeats))
    a, b = statistics.median(times[0]), statistics.median(times[1])
    return f"  {label}: {1e6 * a:,.0f} us vs {1e6 * b:,.0f} us per step of {size:,} float32 elements, {b / a:.2f}x"


def other_families(size):
    """The textbook and torch families, one line each, at `size` elements (all of fusedopt's
    threads: no matrix products compete here)."""
    import bench_torch
    return [
        family_line("fusedopt.optim.Adam vs numpy textbook Adam", ("optim.Adam", textbook.make_fusedopt),
                    ("optim.Adam", textbook.make_numpy), size),
        family_line("fusedopt.torch.Adam vs torch.optim.Adam(fused=True)", ("Adam", bench_torch.make_fusedopt_torch),
                    ("optim.Adam", textbook.make_torch("fused")), size),
    ]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--size", type=int, default=1000, help="W is size x size (default 1000)")
    ap.add_argument("--family-size", type=int, default=1_000_000,
                    help="elements of the other families' comparison (default 1,000,000)")
    ap.add_argument("--threads-as-is", action="store_true",
                    help="train with the thread counts as they are, not fusedopt.thread_limits.training()")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.size < 1 or args.family_size < 1:
        ap.error("--rounds, --size and --family-size must be positive")

    rng = np.random.default_rng(0)
    x, y = make_data(rng, args.size, args.size)
    start = {"W": np.zeros((args.size, args.size), np.float32), "b": np.zeros(args.size, np.float32)}
    schedule = schedules.ExponentialDecay(initial=0.01, coefficient=0.8)
    n = sum(v.size for v in start.values())
    print(f"linear regression, {n:,} float32 parameters, ADAM, {EPOCHS * BATCHES} steps per training, "
          f"{args.rounds} interleaved rounds")

    limits = None if args.threads_as_is else fusedopt.thread_limits.training()
    print(thread_report(limits))
    runs = {"fusedopt": run_fusedopt, "numpy": run_numpy}
    steps = {k: [] for k in runs}
    totals = {k: [] for k in runs}
    identical_rounds = 0
    try:
        for r in range(args.rounds):
            order = list(runs) if r % 2 == 0 else list(runs)[::-1]
            results = {}
            for name in order:
                params, (losses, step_times, total) = runs[name](start, schedule, x, y)
                results[name] = params, losses
                steps[name].append(statistics.median(step_times))
                totals[name].append(total)
            identical_rounds += all(np.array_equal(results["fusedopt"][0][k], results["numpy"][0][k])
                                    for k in start)
    finally:
        if limits is not None:
            limits.restore()
    losses = results["fusedopt"][1]
    print(f"loss: {losses[0]:.4f} -> {losses[-1]:.4f}")
    print(f"parameters bit-identical to the numpy ADAM: {identical_rounds == args.rounds} "
          f"({identical_rounds} of {args.rounds} rounds)")
    print("medians over rounds (each round: the median step of its training), spread = (max - min) / median:")
    line_f, step_f, total_f = summary("fusedopt", steps["fusedopt"], totals["fusedopt"])
    line_n, step_n, total_n = summary("numpy", steps["numpy"], totals["numpy"])
    print(line_f)
    print(line_n)
    print(f"speedup of fusedopt: optimizer step {step_n / step_f:.2f}x, whole training {total_n / total_f:.2f}x "
          f"(the gradients' matrix products are the same numpy code in both)")
    print(f"the other families, fusedopt against its peer (all {fusedopt.get_num_threads()} fusedopt threads):")
    for line in other_families(args.family_size):
        print(line)
    widest = max(spread(v) for v in (*steps.values(), *totals.values()))
    if widest > 0.15:
        print(f"note: a spread of {widest:.0%} over rounds (above 15%): other work disturbed some rounds; "
              "the medians still hold, --rounds 9 steadies them")
    load = os.getloadavg()[0]
    if load > 1.0:
        print(f"note: load average {load:.1f} on {os.cpu_count()} cores: other processes competed for the CPU "
              "during these measurements")
    return 0 if identical_rounds == args.rounds else 1


if __name__ == "__main__":
    sys.exit(main())
