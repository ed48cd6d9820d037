"""Every SIMD level the machine has and 1 or 2 threads give the same bits (docs/threads.md),
equal to the NumPy reference, including trees large enough for OpenMP to run."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import fusedopt
from fusedopt import _core, schedules
from paysage_cases import CLASSES
from reference import (RATE_GENERATORS, MockModel, RefOptimizer, apply, assert_leaves_equal, flatten, like_tree,
                       tree_copy)

LEVELS = list(_core.simd_levels_supported())
THREADS = (1, 2)
KINDS = CLASSES
PATHS = ("paysage", "inplace")
STEPS = 4
DECAY = dict(initial=0.05, coefficient=0.8)


def make_trees(rng):
    """Trees on both sides of the serial threshold (32768 elements): one long leaf per dtype
    with odd tails, 1000 leaves of 100 elements, and a small mixed tree that stays serial."""
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    return {
        "long": {"w": f32(50021), "b": rng.standard_normal(40009)},
        "many": [f32(100) for _ in range(1000)],
        "small": [f32(17), rng.standard_normal(9), f32(), f32(33)],
    }


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(20240607)
    trees = make_trees(rng)
    return {name: (tree, [like_tree(tree, rng) for _ in range(STEPS)]) for name, tree in trees.items()}


def run_reference(kind, path, params, grads):
    ref = RefOptimizer(kind, RATE_GENERATORS["ExponentialDecay"](**DECAY))
    current = [np.array(a) for a in flatten(params)]
    deltas = []
    for grad in grads:
        ref.update_lr()
        deltas.append(ref.step(flatten(grad)))
        current = apply(current, deltas[-1])
    return dict(deltas=deltas, params=current, mean=ref.memory.mean, square=ref.memory.mean_square)


def run_fused(kind, path, params, grads):
    opt = KINDS[kind](stepsize=schedules.ExponentialDecay(**DECAY))
    target = MockModel(params) if path == "paysage" else tree_copy(params)
    deltas, sums = [], []
    for grad in grads:
        opt.update_lr()
        opt.update(target, grad)
        if path == "paysage":
            deltas.append(opt.delta)
        sums.append(np.array(opt._memory._sumsq))
    mem = getattr(opt, "memory", None)
    return dict(opt=opt, deltas=deltas, sums=sums, params=target.params if path == "paysage" else target,
                mean=mem.mean_gradient if mem else None, square=mem.mean_square_gradient if mem else None)


@pytest.fixture(scope="module")
def references(inputs):
    return {(kind, path, name): run_reference(kind, path, *inputs[name])
            for kind in KINDS for path in PATHS for name in inputs}


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("level", LEVELS)
def test_every_level_and_thread_count_matches_reference(level, threads, inputs, references,
                                                        restore_simd_level, restore_num_threads):
    _core._set_simd_level(level)
    fusedopt.set_num_threads(threads)
    assert fusedopt.simd_level() == level
    # A build without OpenMP (FUSEDOPT_OPENMP=OFF) always runs on one thread.
    assert fusedopt.get_num_threads() == (threads if _core.have_openmp() else 1)
    for (kind, path, name), want in references.items():
        got = run_fused(kind, path, *inputs[name])
        where = f"{kind}/{path}/{name} at {level} with {threads} thread(s)"
        for step, delta in enumerate(got["deltas"]):
            assert_leaves_equal(delta, want["deltas"][step], f"{where}: step {step} delta")
        assert_leaves_equal(got["params"], want["params"], f"{where}: param")
        for moment in ("mean", "square"):
            if want[moment] is None:
                assert got[moment] is None
            else:
                assert_leaves_equal(got[moment], want[moment], f"{where}: {moment}")


def test_sum_of_squares_is_identical_for_every_level_and_thread_count(inputs, restore_simd_level,
                                                                       restore_num_threads):
    baseline = {}
    for level in LEVELS:
        for threads in THREADS:
            _core._set_simd_level(level)
            fusedopt.set_num_threads(threads)
            for kind in ("gradient", "adam"):
                for name in ("long", "many"):
                    got = run_fused(kind, "inplace", *inputs[name])
                    key = (kind, name)
                    baseline.setdefault(key, got["sums"])
                    for step, (a, b) in enumerate(zip(got["sums"], baseline[key])):
                        assert np.array_equal(a, b), \
                            f"{kind}/{name} step {step}: sum of delta**2 at {level}, {threads} thread(s) differs"
                    # And so check_convergence agrees: tolerance just above / below the value.
                    opt = got["opt"]
                    sizes = np.array(opt._memory._plan.leaf_sizes, dtype=np.float64)  # the sums' order
                    value = math.sqrt(float(np.sum(got["sums"][-1] / sizes)) / len(sizes))
                    opt.tolerance = value * (1 + 1e-12)
                    assert opt.check_convergence() is True
                    opt.tolerance = value * (1 - 1e-12)
                    assert opt.check_convergence() is False


def test_threads_really_split_the_big_trees():
    # Guard for the tests above: the big trees are over the serial threshold.
    for name, tree in make_trees(np.random.default_rng(0)).items():
        total = sum(np.size(a) for a in flatten(tree))
        if name != "small":
            assert total >= max(_core.serial_below, 40000)
        else:
            assert total < _core.serial_below


def simd_level_in_fresh_process(value):
    env = dict(os.environ, FUSEDOPT_SIMD=value)
    out = subprocess.run([sys.executable, "-c", "import fusedopt; print(fusedopt.simd_level())"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_environment_forces_baseline():
    assert simd_level_in_fresh_process("baseline") == "baseline"


@pytest.mark.parametrize("level", ["avx2", "avx512"])
def test_environment_forces_a_supported_level(level):
    if level not in LEVELS:
        pytest.skip(f"this CPU does not run {level}")
    assert simd_level_in_fresh_process(level) == level
