from hypothesis import given
from hypothesis import strategies as st

from bridge.core.ratelimit import TokenBucket


def test_burst_then_rate():
    b = TokenBucket(rate=2.0, burst=3.0, now=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.retry_after() == 0.5
    assert not b.take(0.25)
    assert b.take(0.5)
    assert b.retry_after() > 0
    assert b.take(10.0) and b.take(10.0) and b.take(10.0) and not b.take(10.0)


def test_clock_going_backwards_gives_nothing():
    b = TokenBucket(rate=1.0, burst=1.0, now=5.0)
    assert b.take(5.0)
    assert not b.take(4.0)
    assert b.retry_after() == 1.0
    assert b.take(6.0)


@given(st.lists(st.floats(0, 0.5), max_size=200), st.floats(0.5, 50), st.floats(1, 20))
def test_never_more_than_burst_plus_rate_times_time(gaps, rate, burst):
    b = TokenBucket(rate=rate, burst=burst, now=0.0)
    now, taken = 0.0, 0
    for gap in gaps:
        now += gap
        taken += b.take(now)
    assert taken <= burst + rate * now + 1e-9


def test_full_means_the_same_as_a_new_bucket():
    b = TokenBucket(rate=2.0, burst=3.0, now=0.0)
    assert b.full(0.0)
    assert b.take(0.0)  # 2 left
    assert not b.full(0.0)
    assert not b.full(0.49)  # 2 + 0.98
    assert b.full(0.5)  # 2 + 1.0: exactly full
    assert b.full(100.0)
    assert not b.full(-5.0)  # a clock going backwards refills nothing
    assert b.take(0.0) and b.take(0.0) and b.take(0.0) is False
    assert not b.full(1.0) and b.full(1.5)


def test_retry_after_is_what_is_missing_over_the_rate():
    b = TokenBucket(rate=2.0, burst=1.5, now=0.0)
    assert b.retry_after() == 0.0  # more than enough: 0, not a negative wait
    assert b.retry_after(1.5) == 0.0  # exactly enough
    assert b.take(0.0)  # 0.5 left
    assert b.retry_after() == 0.25  # (1 - 0.5) / 2
    assert b.retry_after(0.5) == 0.0
    assert b.retry_after(2.0) == 0.75


def test_a_bucket_that_never_refills_says_0_while_its_tokens_last():
    b = TokenBucket(rate=0.0, burst=2.0, now=0.0)
    assert b.retry_after(2.0) == 0.0  # exactly there: no division by the rate
    assert b.take(0.0)
    assert b.retry_after() == 0.0


def test_full_counts_the_time_since_the_last_take():
    b = TokenBucket(rate=1.0, burst=2.0, now=100.0)
    assert b.take(100.0)  # 1 left
    assert not b.full(100.0) and not b.full(100.999)
    assert b.full(101.0)
