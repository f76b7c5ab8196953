"""bridge.protocol.backoff: the backoff formula, its clamping and validation,
and the reconnect-delay policy after a drain or an overload."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.protocol.backoff import MAX_GROWTH_LOG2, Ending, delay, ending, reconnect_delay


def test_doubles_from_initial_up_to_maximum():
    assert [delay(n, 1.0, 30.0) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_milliseconds_in_give_milliseconds_out():
    assert delay(3, 1000, 30000, factor=2, jitter=0.5) == 4000
    assert delay(2, 100, 800, factor=3) == 300


def test_factor_is_a_keyword_and_two_by_default():
    assert delay(4, 0.5, 100.0) == 4.0
    assert delay(4, 0.5, 100.0, factor=1.5) == 0.5 * 1.5**3
    assert delay(5, 0.25, 100.0, factor=1) == 0.25  # factor 1: a constant delay


def test_jitter_takes_off_up_to_its_fraction():
    assert delay(1, 2.0, 30.0, jitter=0.5, rnd=0.0) == 2.0
    assert delay(1, 2.0, 30.0, jitter=0.5, rnd=0.5) == 1.5
    assert delay(1, 2.0, 30.0, jitter=0.5, rnd=1.0) == 1.0
    assert delay(3, 2.0, 30.0, jitter=0.25, rnd=0.5) == 8.0 * 0.875
    assert delay(1, 2.0, 30.0, jitter=1.0, rnd=1.0) == 0.0
    assert delay(1, 2.0, 30.0, rnd=0.9) == 2.0  # no jitter by default


def test_jitter_applies_after_the_cap():
    assert delay(10, 1.0, 30.0, jitter=0.5, rnd=0.5) == 22.5


def test_the_cap_is_reached_exactly_and_kept():
    assert delay(6, 1.0, 32.0) == 32.0  # 2^5 == maximum
    assert delay(5, 1.0, 32.0) == 16.0
    assert delay(7, 1.0, 32.0) == 32.0
    assert delay(1, 5.0, 3.0) == 3.0  # an initial over the maximum is capped too


def test_growth_is_clamped_so_nothing_overflows():
    huge = 10**9
    assert delay(huge, 1.0, 30.0) == 30.0
    assert delay(huge, 1.0, 30.0, factor=10.0) == 30.0
    assert delay(huge, 1, 30, factor=3) == 30  # int factor: no int-to-float overflow
    assert delay(huge, 0.001, 30.0, factor=1.0000001) == 30.0
    # with no maximum to stop it, the growth stops at 2^1000
    assert MAX_GROWTH_LOG2 == 1000
    assert delay(huge, 1.0, math.inf) == 2.0**1000
    assert delay(1001, 1.0, math.inf) == 2.0**1000
    assert delay(1000, 1.0, math.inf) == 2.0**999
    assert delay(huge, 1.0, math.inf, factor=4.0) == 4.0**500
    assert delay(huge, 1.0, math.inf, factor=3.0) == 3.0**630  # int(1000 / log2(3)) == 630


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attempt": 0}, "attempt must be >= 1, got 0"),
        ({"attempt": -3}, "attempt must be >= 1, got -3"),
        ({"factor": 0.99}, "factor must be >= 1, got 0.99"),
        ({"jitter": -0.1}, r"jitter must be in \[0, 1\], got -0.1"),
        ({"jitter": 1.01}, r"jitter must be in \[0, 1\], got 1.01"),
        ({"rnd": -0.5}, r"rnd must be in \[0, 1\], got -0.5"),
        ({"rnd": 1.5}, r"rnd must be in \[0, 1\], got 1.5"),
    ],
)
def test_arguments_out_of_range_are_refused(kwargs, message):
    args = {"attempt": 1, "initial": 1.0, "maximum": 30.0, **kwargs}
    attempt, initial, maximum = args.pop("attempt"), args.pop("initial"), args.pop("maximum")
    with pytest.raises(ValueError, match=f"^{message}$"):
        delay(attempt, initial, maximum, **args)


def test_boundaries_of_the_ranges_are_accepted():
    assert delay(1, 1.0, 30.0, factor=1.0, jitter=0.0, rnd=0.0) == 1.0
    assert delay(1, 1.0, 30.0, jitter=1.0, rnd=1.0) == 0.0


@given(
    attempt=st.integers(1, 10**6),
    initial=st.floats(0.001, 10.0),
    maximum=st.floats(0.001, 1000.0),
    factor=st.floats(1.0, 100.0),
    jitter=st.floats(0.0, 1.0),
    rnd=st.floats(0.0, 1.0, exclude_max=True),
)
def test_always_within_bounds(attempt, initial, maximum, factor, jitter, rnd):
    d = delay(attempt, initial, maximum, factor=factor, jitter=jitter, rnd=rnd)
    top = min(maximum, initial * factor ** min(attempt - 1, 100))
    assert 0.0 <= d <= maximum
    assert d >= (1 - jitter) * min(maximum, initial) - 1e-12
    if attempt <= 100:
        assert d == pytest.approx(top * (1 - jitter * rnd))


@given(attempt=st.integers(1, 200), factor=st.floats(1.0, 10.0))
def test_never_shrinks_from_one_attempt_to_the_next(attempt, factor):
    assert delay(attempt + 1, 0.1, 60.0, factor=factor) >= delay(attempt, 0.1, 60.0, factor=factor)


# -- why a transport ended


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, Ending.LOST),
        ({"close_code": 1012}, Ending.DRAINING),
        ({"close_code": 1013}, Ending.OVERLOADED),
        ({"status": 503}, Ending.OVERLOADED),
        ({"close_code": 1006}, Ending.LOST),
        ({"close_code": 1011}, Ending.LOST),
        ({"close_code": 4408}, Ending.LOST),
        ({"close_code": 1001}, Ending.LOST),
        ({"status": 500}, Ending.LOST),
        ({"status": 429}, Ending.LOST),
        ({"status": 1012}, Ending.LOST),  # a status is not a close code
        ({"close_code": 503}, Ending.LOST),  # nor the other way round
        ({"reason": "draining"}, Ending.DRAINING),
        ({"reason": "overloaded"}, Ending.OVERLOADED),
        ({"reason": ""}, Ending.OVERLOADED),
        # the reconnect message's reason decides over the close that follows it
        ({"reason": "draining", "close_code": 1013}, Ending.DRAINING),
        ({"reason": "slow_consumer", "close_code": 1012}, Ending.OVERLOADED),
        ({"reason": "draining", "status": 503}, Ending.DRAINING),
        # the close code decides over the status
        ({"close_code": 1012, "status": 503}, Ending.DRAINING),
    ],
)
def test_ending_classifies(kwargs, expected):
    assert ending(**kwargs) is expected


def test_ending_names():
    assert [e.value for e in Ending] == ["lost", "draining", "overloaded"]


# -- the reconnect delay policy


def test_after_a_drain_the_wait_is_uniform_over_the_hint():
    assert reconnect_delay(5.0, 2.0, Ending.DRAINING, 0.0) == 0.0
    assert reconnect_delay(5.0, 2.0, Ending.DRAINING, 0.25) == 0.5
    assert reconnect_delay(5.0, 2.0, Ending.DRAINING, 0.999) == 2.0 * 0.999
    assert reconnect_delay(0.1, 2.0, Ending.DRAINING, 0.5) == 1.0  # not max(backoff, ...)
    draws = [reconnect_delay(1.0, 0.75, Ending.DRAINING, i / 50) for i in range(50)]
    assert min(draws) == 0.0 and max(draws) < 0.75 and len(set(draws)) == 50


def test_after_an_overload_the_wait_is_at_least_the_hint():
    assert reconnect_delay(0.3, 2.0, Ending.OVERLOADED, 0.5) == 2.0
    assert reconnect_delay(5.0, 2.0, Ending.OVERLOADED, 0.5) == 5.0
    assert reconnect_delay(2.0, 2.0, Ending.OVERLOADED, 0.0) == 2.0


def test_without_a_hint_or_after_a_plain_loss_the_backoff_stands():
    assert reconnect_delay(0.3, None, Ending.DRAINING, 0.5) == 0.3
    assert reconnect_delay(0.3, None, Ending.OVERLOADED, 0.5) == 0.3
    assert reconnect_delay(0.3, None, Ending.LOST, 0.5) == 0.3
    assert reconnect_delay(0.3, 2.0, Ending.LOST, 0.5) == 0.3
    assert reconnect_delay(0.3, 0.0, Ending.OVERLOADED, 0.5) == 0.3  # a zero hint is a hint
    assert reconnect_delay(0.3, 0.0, Ending.DRAINING, 0.5) == 0.0


@given(backoff=st.floats(0, 60), hint=st.floats(0, 60), rnd=st.floats(0, 1, exclude_max=True))
def test_policy_bounds(backoff, hint, rnd):
    assert 0 <= reconnect_delay(backoff, hint, Ending.DRAINING, rnd) <= hint
    assert reconnect_delay(backoff, hint, Ending.OVERLOADED, rnd) >= hint
    assert reconnect_delay(backoff, hint, Ending.OVERLOADED, rnd) >= backoff
    assert reconnect_delay(backoff, hint, Ending.LOST, rnd) == backoff
