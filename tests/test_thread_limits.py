"""fusedopt.thread_limits and blas_threads: both thread counts set in one call and restored,
numpy's OpenBLAS found without threadpoolctl (threadpoolctl, when installed, is the
independent reference of what BLAS runs with), bad counts refused with nothing changed, and
the rule of thread_limits.training()."""
import numpy as np  # noqa: F401  (loads numpy's BLAS)
import pytest

import fusedopt
from fusedopt import _threads


@pytest.fixture(autouse=True)
def keep_threads():
    before = fusedopt.get_num_threads()
    yield
    fusedopt.set_num_threads(before)


def reference_blas():
    """[(internal api, threads)] of the BLAS libraries, as threadpoolctl sees them."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    return [(i["internal_api"], i["num_threads"]) for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


def test_blas_threads_agree_with_threadpoolctl():
    ours = fusedopt.blas_threads()
    ref = reference_blas()
    assert [n for _, n in ours] == [n for _, n in ref]
    assert all(name.split(" ")[0] == api for (name, _), (api, _) in zip(ours, ref))


def test_sets_both_and_restores_as_a_context_manager():
    ref = reference_blas()
    if not ref:
        pytest.skip("no BLAS library loaded")
    fusedopt.set_num_threads(2)
    with fusedopt.thread_limits(fusedopt=1, blas=1) as limits:
        assert fusedopt.get_num_threads() == 1
        assert [n for _, n in reference_blas()] == [1] * len(ref)
        assert limits.before["fusedopt"] == 2 and [n for _, n in limits.before["blas"]] == [n for _, n in ref]
    assert fusedopt.get_num_threads() == 2
    assert reference_blas() == ref


def test_none_leaves_a_count_and_restore_puts_back():
    ref = reference_blas()
    fusedopt.set_num_threads(3)
    limits = fusedopt.thread_limits(fusedopt=None, blas=None)
    assert fusedopt.get_num_threads() == 3 and reference_blas() == ref
    limits = fusedopt.thread_limits(fusedopt=2)
    assert fusedopt.get_num_threads() == 2 and reference_blas() == ref
    limits.restore()
    assert fusedopt.get_num_threads() == 3


@pytest.mark.parametrize("kwargs,message", [
    ({"fusedopt": 0}, "fusedopt must be None or an integer >= 1, got 0"),
    ({"blas": True}, "blas must be None or an integer >= 1, got True"),
    ({"blas": 1.5}, "blas must be None or an integer >= 1, got 1.5"),
    ({"fusedopt": fusedopt._core.max_threads + 1},
     f"fusedopt must be at most {fusedopt._core.max_threads}, got {fusedopt._core.max_threads + 1}"),
])
def test_bad_counts_are_refused_and_change_nothing(kwargs, message):
    ours, blas = fusedopt.get_num_threads(), fusedopt.blas_threads()
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        fusedopt.thread_limits(**{"blas": 1, **kwargs})
    assert fusedopt.get_num_threads() == ours and fusedopt.blas_threads() == blas


@pytest.mark.parametrize("cores,blas,ours,expected", [
    (2, 2, 2, 1),      # 4 threads for 2 cores: fusedopt steps on the calling thread
    (4, 4, 4, 1),
    (4, 2, 2, 2),      # the cores suffice: unchanged
    (2, 1, 2, 2),      # BLAS on one thread: no competition
    (2, 2, 1, 1),      # fusedopt on one thread already
    (2, None, 2, 2),   # no BLAS loaded
])
def test_training_rule(monkeypatch, cores, blas, ours, expected):
    monkeypatch.setattr(_threads, "blas_threads", lambda: [] if blas is None else [("openblas", blas)])
    monkeypatch.setattr(_threads.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    fusedopt.set_num_threads(ours)
    with fusedopt.thread_limits.training():
        assert fusedopt.get_num_threads() == expected
    assert fusedopt.get_num_threads() == ours
