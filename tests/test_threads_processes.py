"""Threads, fork and thread counts (docs/threads.md).

Each case runs in a fresh interpreter with a time limit: what it guards against
is a crash (use-after-free, libgomp running out of threads) or a hang (a forked
child waiting for a thread team that did not survive the fork), and either must
fail one test, not the whole run."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import fusedopt


def run_script(code, timeout=90, env=None):
    """Runs `code` in a fresh interpreter, in its own process group: on a time-out
    the whole group goes (a hung forked child included)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full_env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"the script did not finish within {timeout} s (a hang)")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # forked children left behind
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {out}\nstderr: {err[-3000:]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# ----------------------------------------------------------------------------- owned references

# Arrays above glibc's largest mmap threshold (32 MB) are unmapped when freed, so a
# kernel still reading or writing one after another thread dropped the last
# reference faults at once instead of silently touching recycled heap.
REPLACE_LEAVES = """
    import threading, time
    import numpy as np
    import fusedopt
    from fusedopt import optimizers
    fusedopt.set_num_threads({threads})
    n = 10_000_000
    params = {{"w": np.zeros(n, np.float32)}}
    grad = {{"w": np.ones(n, np.float32)}}
    class Model:
        def parameter_update(self, delta):  # a paysage model: receives delta
            pass
    model = Model()
    opt = optimizers.{cls}(1e-3)
    opt.update({model}, grad)
    stop = False
    def churn():
        while not stop:
            grad["w"] = np.empty(n, np.float32)     # the step's gradient loses its last reference
            params["w"] = np.zeros(n, np.float32)  # and so does the parameter it writes
            time.sleep(0)
    t = threading.Thread(target=churn)
    t.start()
    steps, end = 0, time.monotonic() + 1.5
    while time.monotonic() < end:
        opt.update({model}, grad)
        steps += 1
    stop = True
    t.join()
    print("steps", steps)
"""


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cls", ["ADAM", "Gradient"])
def test_another_thread_replacing_leaves_during_steps(cls, threads):
    """The step owns a reference to every array it touches while the GIL is released,
    so another thread replacing the leaves of the trees cannot free memory under it."""
    run = run_script(REPLACE_LEAVES.format(cls=cls, threads=threads, model="params"))
    assert int(run.stdout.split()[-1]) > 0


def test_another_thread_replacing_gradients_on_the_paysage_path():
    run_script(REPLACE_LEAVES.format(cls="ADAM", threads=2, model="model"))


# ----------------------------------------------------------------------------- fork

FORK_COMMON = """
    import os, multiprocessing
    import numpy as np
    import fusedopt
    from fusedopt import optimizers
    fusedopt.set_num_threads(2)
    fusedopt._core._reset_parallel_judge()
    rng = np.random.default_rng(5)
    g = rng.standard_normal(2_000_000).astype(np.float32)
    def fresh():
        opt = optimizers.ADAM(1e-3)
        p = np.zeros(g.size, np.float32)
        opt.update(p, g)            # a threaded step in the parent: libgomp's team exists now
        return opt, p
    def two_more(opt, p):
        opt.update(p, g)
        opt.update(p, g * 0.5)
        return p
    serial_opt, serial_p = fresh()
    expected = two_more(serial_opt, serial_p).copy()
"""


def test_os_fork_child_steps_and_parent_keeps_its_threads():
    code = FORK_COMMON + """
    opt, p = fresh()
    pid = os.fork()
    if pid == 0:
        try:
            ok = np.array_equal(two_more(opt, p), expected)
            os._exit(0 if ok else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    assert fusedopt.get_num_threads() == 2
    assert np.array_equal(two_more(opt, p), expected)   # the parent's team still works
    print("ok")
    """
    assert run_script(code, timeout=30).stdout.strip() == "ok"


def test_multiprocessing_fork_pool_steps():
    code = FORK_COMMON + """
    def job(i):
        opt, p = fresh()
        return np.array_equal(two_more(opt, p), expected)
    opt, p = fresh()
    with multiprocessing.get_context("fork").Pool(2) as pool:
        assert pool.map(job, range(4)) == [True] * 4
    assert np.array_equal(two_more(opt, p), expected)
    print("ok")
    """
    assert run_script(code, timeout=30).stdout.strip() == "ok"


# ----------------------------------------------------------------------------- thread counts

def test_set_num_threads_beyond_the_bound_is_refused():
    code = """
    import numpy as np
    import fusedopt
    from fusedopt import optimizers, _core
    bound = _core.max_threads
    assert bound >= 1
    before = fusedopt.get_num_threads()
    for n in (bound + 1, 40000, 10**6, 2**31 - 1):
        try:
            fusedopt.set_num_threads(n)
        except ValueError as e:
            assert str(bound) in str(e) and "at most" in str(e), e
        else:
            raise AssertionError(f"set_num_threads({n}) was accepted")
        assert fusedopt.get_num_threads() == before
    fusedopt.set_num_threads(bound)          # the bound itself is allowed
    assert fusedopt.get_num_threads() == bound
    p = np.zeros(100_000, np.float32)
    optimizers.ADAM(1e-3).update(p, np.ones_like(p))
    print("ok")
    """
    assert run_script(code).stdout.strip() == "ok"


def test_set_num_threads_rejects_non_positive_and_non_int():
    for bad in (0, -1):
        with pytest.raises(ValueError, match=">= 1"):
            fusedopt.set_num_threads(bad)
    with pytest.raises(TypeError):
        fusedopt.set_num_threads(2.5)


@pytest.mark.parametrize("value", ["100000", "2147483647", "99999999999"])
def test_out_of_range_omp_num_threads_warns_and_uses_a_sane_default(value):
    code = """
    import warnings
    import numpy as np
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import fusedopt
        from fusedopt import optimizers, _core
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert any("OMP_NUM_THREADS" in m for m in messages), messages
    n = fusedopt.get_num_threads()
    assert 1 <= n <= _core.max_threads, n
    p = np.zeros(200_000, np.float32)
    optimizers.ADAM(1e-3).update(p, np.ones_like(p))
    print(n)
    """
    run_script(code, env={"OMP_NUM_THREADS": value})


def test_in_range_omp_num_threads_is_honoured_without_warning():
    code = """
    import warnings
    warnings.simplefilter("error")
    import fusedopt
    assert fusedopt.get_num_threads() == 3, fusedopt.get_num_threads()
    print("ok")
    """
    run_script(code, env={"OMP_NUM_THREADS": "3"})
