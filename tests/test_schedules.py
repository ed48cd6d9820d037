"""The five schedules (docs/semantics.md, "Rates and schedules") against reference
generators written separately."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusedopt import schedules
from reference import RATE_GENERATORS, SCHEDULE_ARGS, take

NAMES = list(RATE_GENERATORS)

# Constructor arguments of each schedule (docs/semantics.md), to check get_config.
ARGUMENTS = {
    "Constant": ("initial", "value"),
    "Linear": ("initial", "delta", "value", "minval", "maxval"),
    "Step": ("initial", "final", "steps", "value"),
    "ExponentialDecay": ("initial", "coefficient", "value"),
    "PowerLawDecay": ("initial", "coefficient", "value"),
}


def assert_rates(got, want):
    for i, (a, b) in enumerate(zip(got, want)):
        assert isinstance(a, np.float32), f"call {i}: {type(a).__name__}, expected numpy.float32"
        assert a == b, f"call {i}: got {a!r}, expected {b!r}"
    assert len(got) == len(want)


def both(name, **args):
    return getattr(schedules, name)(**args), RATE_GENERATORS[name](**args)


@pytest.mark.parametrize("name", NAMES)
def test_sequence_matches_reference(name):
    schedule, ref = both(name, **SCHEDULE_ARGS[name])
    assert iter(schedule) is schedule
    assert_rates(take(schedule, 40), take(ref, 40))


@pytest.mark.parametrize("name", NAMES)
def test_default_arguments(name):
    schedule, ref = both(name)
    assert schedule.initial == 1.0 and schedule.value == 1.0
    assert_rates(take(schedule, 10), take(ref, 10))


@pytest.mark.parametrize("name", NAMES)
def test_value_argument_is_the_start(name):
    args = dict(SCHEDULE_ARGS[name], value=0.0123)
    schedule, ref = both(name, **args)
    assert_rates(take(schedule, 12), take(ref, 12))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("after", [0, 1, 6, 13])
def test_copy_mid_sequence_continues_independently(name, after):
    schedule, ref = both(name, **SCHEDULE_ARGS[name])
    assert_rates(take(schedule, after), take(ref, after))
    clone = schedule.copy()
    assert type(clone) is type(schedule) and clone is not schedule
    expected = take(ref, 20)
    assert_rates(take(clone, 20), expected)
    # Advancing the copy did not move the original.
    assert_rates(take(schedule, 20), expected)


def test_step_keeps_initial_for_steps_plus_two_calls():
    for steps in (0, 1, 4):
        rates = take(schedules.Step(initial=3.0, final=1.0, steps=steps), steps + 6)
        assert rates == [np.float32(3.0)] * (steps + 2) + [np.float32(1.0)] * 4


def test_step_copy_keeps_its_counter():
    # paysage's Step.copy() crashed on its counter; here the copy goes on where the original was.
    schedule = schedules.Step(initial=0.5, final=0.25, steps=3)
    take(schedule, 4)
    clone = schedule.copy()
    assert take(clone, 3) == [np.float32(0.5), np.float32(0.25), np.float32(0.25)]


def test_linear_clips_after_the_first_value():
    schedule = schedules.Linear(initial=2.0, delta=0.5, minval=0.2, maxval=1.0)
    assert take(schedule, 5) == [np.float32(v) for v in (2.0, 1.0, 0.5, 0.2, 0.2)]
    rising = schedules.Linear(initial=0.5, delta=-0.2, minval=0.0, maxval=0.8)
    assert take(rising, 4) == [np.float32(v) for v in (0.5, 0.7, 0.8, 0.8)]


def test_constant_never_moves():
    schedule = schedules.Constant(initial=0.125)
    assert take(schedule, 5) == [np.float32(0.125)] * 5
    assert schedule.value == 0.125


def test_exponential_and_power_law_values():
    halving = schedules.ExponentialDecay(initial=1.0, coefficient=0.5)
    assert take(halving, 4) == [np.float32(v) for v in (1, .5, .25, .125)]
    # 1 / x(t+1) = 1 / x(t) + c: with x(0) = 1 and c = 1 the rates are 1, 1/2, 1/3, 1/4.
    assert take(schedules.PowerLawDecay(initial=1.0, coefficient=1.0), 4) == [np.float32(1 / k) for k in (1, 2, 3, 4)]


@pytest.mark.parametrize("name", NAMES)
def test_reset_goes_back_to_initial(name):
    schedule, ref = both(name, **SCHEDULE_ARGS[name])
    take(schedule, 9)
    schedule.reset()
    assert schedule.value == schedule.initial
    assert_rates(take(schedule, 15), take(ref, 15))


# Step's later values also depend on its call counter, which the reference starts at 0.
@pytest.mark.parametrize("name,after", [(n, k) for n in NAMES for k in (0, 3) if not (n == "Step" and k)])
def test_set_value(name, after):
    schedule = getattr(schedules, name)(**SCHEDULE_ARGS[name])
    take(schedule, after)
    schedule.set_value(0.0375)
    assert schedule.value == 0.0375
    ref = RATE_GENERATORS[name](**dict(SCHEDULE_ARGS[name], value=0.0375))
    assert_rates(take(schedule, 10), take(ref, 10))


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip(name):
    schedule = getattr(schedules, name)(**SCHEDULE_ARGS[name])
    take(schedule, 7)
    config = schedule.get_config()
    assert isinstance(config, list) and len(config) == 2
    assert config[0] == name
    attrs = config[1]
    assert isinstance(attrs, dict)
    for key in ARGUMENTS[name]:
        assert key in attrs, key
        assert attrs[key] == getattr(schedule, key)
    for key, value in SCHEDULE_ARGS[name].items():
        assert attrs[key] == value
    rebuilt = schedules.schedule_from_config(config)
    assert type(rebuilt) is type(schedule)
    assert_rates(take(rebuilt, 15), take(schedule, 15))


positive = st.floats(1e-3, 10.0)


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(NAMES), initial=positive, coefficient=st.floats(0.0, 1.5),
       delta=st.floats(-0.5, 0.5), bounds=st.tuples(st.floats(0.0, 1.0), st.floats(1.0, 5.0)),
       steps=st.integers(0, 30), final=positive, calls=st.integers(1, 40), copy_at=st.integers(0, 40))
def test_random_parameters(name, initial, coefficient, delta, bounds, steps, final, calls, copy_at):
    args = {
        "Constant": dict(initial=initial),
        "Linear": dict(initial=initial, delta=delta, minval=bounds[0], maxval=bounds[1]),
        "Step": dict(initial=initial, final=final, steps=steps),
        "ExponentialDecay": dict(initial=initial, coefficient=coefficient),
        "PowerLawDecay": dict(initial=initial, coefficient=coefficient),
    }[name]
    schedule, ref = both(name, **args)
    got = []
    for i in range(calls):
        if i == copy_at:
            schedule = schedule.copy()
        got.append(next(schedule))
    assert_rates(got, take(ref, calls))
