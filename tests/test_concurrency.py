"""Steps release the GIL, so two Python threads stepping two optimizers really run at
once: the results must equal serial runs, bit for bit."""
import threading
import time

import numpy as np
import pytest

import fusedopt
from fusedopt import optimizers, schedules

import reference as ref
from paysage_cases import CLASSES


def job(kind, rng, shapes, dtype, steps):
    """An optimizer, its params and its gradients; the work of one thread."""
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]
    cls = CLASSES[kind]
    return cls(schedules.ExponentialDecay(0.01, 0.95)), params, grads


def run(opt, params, grads, barrier=None):
    for g in grads:
        if barrier is not None:
            barrier.wait()  # both threads enter every step together
        opt.update_lr()
        opt.update(params, g)


def outcome(opt, params):
    mem = opt._memory
    trees = [params] + [t for t in (mem.mean_gradient, mem.mean_square_gradient) if t is not None]
    return [ref.tree_bytes(t) for t in trees], opt.check_convergence()


CASES = {
    # large leaves: each step splits into OpenMP chunks, so threads of both calls interleave
    "large": (("adam", [(300_000,), (513, 129)], np.float32), ("momentum", [(200_003,), (7,)], np.float64)),
    # many small leaves: the serial path, dominated by the binding
    "many_leaves": (("rmsprop", [(17,)] * 200, np.float32), ("adam", [(3, 5)] * 150, np.float64)),
    # same kind and sizes on both sides
    "same_kind": (("adam", [(100_000,)], np.float32), ("adam", [(100_000,)], np.float32)),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", sorted(CASES))
def test_two_threads_match_serial_runs(case, threads, restore_num_threads):
    fusedopt.set_num_threads(threads)
    steps = 6
    specs = CASES[case]
    serial = []
    for i, (kind, shapes, dtype) in enumerate(specs):
        opt, params, grads = job(kind, np.random.default_rng(i), shapes, dtype, steps)
        run(opt, params, grads)
        serial.append(outcome(opt, params))

    jobs = [job(kind, np.random.default_rng(i), shapes, dtype, steps) for i, (kind, shapes, dtype) in enumerate(specs)]
    barrier = threading.Barrier(len(jobs))
    errors = []

    def work(j):
        try:
            run(*j, barrier=barrier)
        except BaseException as exc:  # reported below: an exception in a thread would be lost
            errors.append(exc)
            barrier.abort()

    workers = [threading.Thread(target=work, args=(j,)) for j in jobs]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not errors, errors
    assert [outcome(opt, params) for opt, params, _ in jobs] == serial


def test_one_optimizer_per_thread_many_threads(restore_num_threads):
    """Four threads, four optimizers of every kind, no barrier: free interleaving."""
    fusedopt.set_num_threads(2)
    kinds = ("gradient", "momentum", "rmsprop", "adam")
    serial = []
    for i, kind in enumerate(kinds):
        opt, params, grads = job(kind, np.random.default_rng(10 + i), [(40_000,), (33,)], np.float32, 8)
        run(opt, params, grads)
        serial.append(outcome(opt, params))
    jobs = [job(kind, np.random.default_rng(10 + i), [(40_000,), (33,)], np.float32, 8) for i, kind in enumerate(kinds)]
    workers = [threading.Thread(target=run, args=j) for j in jobs]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [outcome(opt, params) for opt, params, _ in jobs] == serial


def test_the_gil_is_released_during_a_step(restore_num_threads):
    """While one thread is inside a long step, another Python thread keeps running.

    With the GIL held for the whole call no Python code could run strictly between
    the call's start and end; a few tries absorb scheduling noise on a busy machine."""
    fusedopt.set_num_threads(1)
    n = 4_000_000
    rng = np.random.default_rng(0)
    params, grad = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    opt = optimizers.ADAM(0.001)
    opt.update(params, grad)  # arenas allocated; the steps below are steady-state kernels
    ticks, stop = [], threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.0001)

    thread = threading.Thread(target=ticker)
    thread.start()
    try:
        overlapped = False
        for _ in range(10):
            time.sleep(0.01)
            start = time.perf_counter()
            opt.update(params, grad)
            end = time.perf_counter()
            margin = (end - start) * 0.1
            if any(start + margin < t < end - margin for t in ticks[-5000:]):
                overlapped = True
                break
    finally:
        stop.set()
        thread.join()
    assert overlapped, "no Python thread ran during any of 10 steps: is the GIL released?"
