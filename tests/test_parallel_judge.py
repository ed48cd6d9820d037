"""The rule that sends steps to one thread when the OpenMP team does not help
(csrc/common/threads.cpp), judged on given figures instead of measured ones.

Each parallel step gives r = its time / the serial time estimated from the
calling thread's chunks, (worked + waited) / (worked * chunks / by_caller).
A running mean of r (weight 1/8, starting at 1/threads) above 1 schedules the
next 64 steps serially, after which the team is tried again with a fresh mean."""
import pytest

from fusedopt import _core

judge = _core._judge_parallel_step


@pytest.fixture(autouse=True)
def fresh_judge():
    _core._reset_parallel_judge()
    yield
    _core._reset_parallel_judge()


def good():  # the team helped: r = 0.505
    return judge(64, 32, 2, 1e-4, 1e-6)


def severe():  # a helper came 1 ms late: r = 5.5
    return judge(64, 32, 2, 1e-4, 1e-3)


def mild():  # r = 1.5
    return judge(64, 32, 2, 1e-4, 2e-4)


def test_steps_where_the_team_helps_stay_parallel():
    assert all(good() == 0 for _ in range(100))


def test_one_severe_stall_sends_the_next_64_steps_to_one_thread():
    assert good() == 0
    assert severe() == 64


def test_one_step_below_the_threshold_does_not():
    # From 1/2, one step moves the mean by (r - 1/2) / 8: above 1 needs r > 4.5; r = 4.4 gives 0.9875.
    assert judge(64, 32, 2, 1e-4, 7.8e-4) == 0


def test_a_mild_stall_needs_persistence():
    # The mean after k steps of r = 1.5 is 1.5 - (7/8)**k: above 1 from k = 6.
    assert [mild() for _ in range(5)] == [0] * 5
    assert mild() == 64


def test_odd_stalls_among_good_steps_never_trip():
    for _ in range(50):
        assert mild() == 0
        for _ in range(7):
            assert good() == 0


def test_a_starved_step_counts_by_its_ratio():
    # The helpers ran nothing: the caller's time is the serial time, r = 1 + waited / worked.
    # r = 1.1 every step: the mean 1.1 - 0.6 * (7/8)**k passes 1 at k = 14 (a team that never
    # helps is given up after 14 steps; one starved step, a team starting up, is not enough).
    assert [judge(64, 64, 2, 1e-4, 1e-5) for _ in range(14)] == [0] * 13 + [64]


def test_every_failed_retry_gives_the_same_64_steps():
    # No growing window: a team that keeps failing costs one parallel step in 65.
    assert [severe() for _ in range(5)] == [64] * 5


def test_more_threads_start_from_a_lower_mean():
    # 4 threads: the mean starts at 1/4, so r = 6.5 (1/4 + 6.25/8 = 1.03) trips, as 5.5 does for 2.
    assert judge(64, 16, 4, 1e-4, 2.25e-4) == 0  # r = 3.25e-4 / 4e-4 = 0.8125
    _core._reset_parallel_judge()
    assert judge(64, 16, 4, 1e-4, 2.5e-3) == 64  # r = 2.6e-3 / 4e-4 = 6.5


def test_a_step_without_caller_chunks_is_not_judged():
    assert judge(64, 0, 2, 1e-4, 1.0) == 0
    assert judge(64, 32, 2, 0.0, 1.0) == 0
