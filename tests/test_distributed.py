"""fusedopt.distributed under real MPI: the scripts in tests/mpi run with mpiexec -n 1, 2, 3.

MPICH from the ``mpich`` wheel, one OpenMP thread per rank, oversubscribed on small machines.
Each launch runs many checks (tests/mpi/battery.py: every fusedopt.optimizers optimizer on
both paths and every fusedopt.optim one, both shard modes, mixed float32/float64 trees, trees with fewer elements than ranks, leaves straddling
shards, errors raised on every rank, resume across rank counts; tests/mpi/paysage_sgd.py:
paysage's fit.SGD on 2 ranks) and writes what failed as JSON. A hang is a failure: every
launch has a timeout.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("mpi4py", reason="fusedopt.distributed needs mpi4py (pip install 'fusedopt[mpi]')")

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "mpi")
TIMEOUT = 150  # seconds per launch; a launch takes a few seconds, a hang would take forever


def _mpiexec():
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")  # the mpich wheel's, with mpi4py's MPI
    return beside if os.path.exists(beside) else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install 'fusedopt[mpi]')")


def _launch(n, script, tmp, name, *args):
    """Run `script` on n ranks; return its JSON result (failures and check counts)."""
    result = os.path.join(tmp, f"{name}.json")
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join([SCRIPTS, os.environ.get("PYTHONPATH", "")]))
    cmd = [MPIEXEC, "-n", str(n), sys.executable, os.path.join(SCRIPTS, script), result, *args]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"mpiexec -n {n} {script} {' '.join(args)} did not finish in {TIMEOUT} s (a hang?)\n"
                    f"{exc.stdout}\n{exc.stderr}")
    assert proc.returncode == 0, f"mpiexec -n {n} {script} failed:\n{proc.stdout}\n{proc.stderr}"
    with open(result) as f:
        out = json.load(f)
    assert out["size"] == n
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The launches, in the order the resume checks need: save at 2, load it at 3 and save,
    load that at 1 and at 2. Run once for the module."""
    tmp = str(tmp_path_factory.mktemp("mpi"))
    state = {n: os.path.join(tmp, f"state{n}.npz") for n in (2, 3)}
    out = {
        2: _launch(2, "battery.py", tmp, "battery2", "--save", state[2]),
        3: _launch(3, "battery.py", tmp, "battery3", "--load", state[2], "--save", state[3]),
        1: _launch(1, "battery.py", tmp, "battery1", "--load", state[3]),
        "resume 3->2": _launch(2, "battery.py", tmp, "resume32", "--only-resume", "--load", state[3]),
        "paysage": _launch(2, "paysage_sgd.py", tmp, "paysage"),
    }
    out["state3"] = state[3]
    return out


def _no_failures(out, at_least):
    assert out["failures"] == [], "\n".join(out["failures"][:20])
    assert min(out["checks"]) >= at_least, out["checks"]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_every_optimizer_bit_identical_errors_on_every_rank_and_resume(runs, n):
    # ~12000 checks per rank: 6 optimizers x 3 trees x 2 paths x 2 shard modes and 6 textbook
    # optimizers x 2 trees x 2 shard modes, per step and leaf, then the errors and the resumes.
    _no_failures(runs[n], at_least=10000)


def test_resume_saved_at_3_on_2_ranks(runs):
    _no_failures(runs["resume 3->2"], at_least=150)


def test_paysage_fit_sgd_on_two_ranks(runs):
    _no_failures(runs["paysage"], at_least=20)


def test_single_process_loads_state_saved_at_3_ranks(runs):
    from fusedopt import optimizers

    with np.load(runs["state3"]) as f:
        saved = {k: f[k] for k in f.files if k != "saved_size" and not k.startswith("param.")}
    opt = optimizers.ADAM()
    opt.load_state_dict(saved)
    assert opt.step_count == 3
    again = opt.state_dict()  # the moments wait for a gradient, but come back out unchanged
    for key in saved:
        assert np.array_equal(np.asarray(saved[key]), np.asarray(again[key])), key
