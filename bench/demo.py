"""fusedopt's main job, end to end: train with ADAM, same bits as numpy, faster.

    python bench/demo.py

A linear regression y = x @ W + b with 1,001,000 parameters (W: 1000 x 1000,
b: 1000) is trained twice from the same start on the same minibatches: once
with fusedopt's ADAM stepping the parameters in place, once with a plain
float32 numpy ADAM of the same semantics (SPEC section 3, peers.NumpyOptimizer).
The learning rate follows an ExponentialDecay schedule, advanced once per
epoch with update_lr() as paysage's training loops do. At the end the two sets
of parameters must be bit-identical; the script prints the time spent in the
optimizer steps of each, and exits with status 1 if any bit differs.
"""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import NumpyOptimizer  # noqa: E402

import fusedopt  # noqa: E402
from fusedopt import optimizers, schedules  # noqa: E402

N_IN, N_OUT, BATCH, BATCHES, EPOCHS = 1000, 1000, 256, 8, 4


def make_data(rng):
    x = rng.standard_normal((BATCHES * BATCH, N_IN), dtype=np.float32)
    w_true = (rng.standard_normal((N_IN, N_OUT), dtype=np.float32) / np.float32(np.sqrt(N_IN)))
    y = x @ w_true + np.float32(0.01) * rng.standard_normal((len(x), N_OUT), dtype=np.float32)
    return x, y


def gradient(params, x, y):
    """Loss 0.5 * mean squared error per sample, and its gradient (a dict tree like params)."""
    err = x @ params["W"] + params["b"] - y
    grad = {"W": (x.T @ err) / np.float32(len(x)), "b": err.mean(axis=0)}
    return float(0.5 * np.mean(np.sum(err * err, axis=1))), grad


def train(step, set_lr, params, x, y):
    """Minibatch training; returns (losses, seconds spent inside the optimizer steps)."""
    losses, in_step = [], 0.0
    for _ in range(EPOCHS):
        set_lr()
        for k in range(BATCHES):
            batch = slice(k * BATCH, (k + 1) * BATCH)
            loss, grad = gradient(params, x[batch], y[batch])
            losses.append(loss)
            t0 = time.perf_counter()
            step(params, grad)
            in_step += time.perf_counter() - t0
    return losses, in_step


def main():
    rng = np.random.default_rng(0)
    x, y = make_data(rng)
    start = {"W": np.zeros((N_IN, N_OUT), np.float32), "b": np.zeros(N_OUT, np.float32)}
    schedule = schedules.ExponentialDecay(initial=0.01, coefficient=0.8)

    fused_params = {k: v.copy() for k, v in start.items()}
    adam = optimizers.ADAM(stepsize=schedule.copy())
    t0 = time.perf_counter()
    fused_losses, fused_step = train(adam.update, adam.update_lr, fused_params, x, y)
    fused_total = time.perf_counter() - t0

    numpy_params = {k: v.copy() for k, v in start.items()}
    reference = NumpyOptimizer("ADAM")
    ref_schedule = schedule.copy()

    def set_reference_lr():
        reference.lr = np.float32(next(ref_schedule))

    t0 = time.perf_counter()
    numpy_losses, numpy_step = train(lambda p, g: reference.step(list(p.values()), list(g.values())),
                                     set_reference_lr, numpy_params, x, y)
    numpy_total = time.perf_counter() - t0

    steps = EPOCHS * BATCHES
    identical = all(np.array_equal(fused_params[k], numpy_params[k]) for k in start)
    n = sum(v.size for v in start.values())
    print(f"linear regression, {n:,} float32 parameters, ADAM, {steps} steps "
          f"(fusedopt: SIMD {fusedopt.simd_level()}, {fusedopt.get_num_threads()} threads)")
    print(f"loss: {fused_losses[0]:.4f} -> {fused_losses[-1]:.4f} (fusedopt), "
          f"{numpy_losses[0]:.4f} -> {numpy_losses[-1]:.4f} (numpy)")
    print(f"parameters bit-identical to the numpy ADAM: {identical}")
    print(f"optimizer steps: fusedopt {1e3 * fused_step / steps:.2f} ms/step, "
          f"numpy {1e3 * numpy_step / steps:.2f} ms/step (speedup {numpy_step / fused_step:.1f}x)")
    print(f"whole training (gradients included): fusedopt {fused_total:.2f} s, numpy {numpy_total:.2f} s")
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
