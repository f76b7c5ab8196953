from bridge.core.breaker import STATE_VALUES, CircuitBreaker


def test_opens_after_threshold_and_recovers_through_half_open():
    b = CircuitBreaker(failures=3, recovery=10.0)
    assert b.allow(0.0) and b.state(0.0) == "closed"
    b.failure(0.0)
    b.failure(0.0)
    assert b.state(0.0) == "closed"
    b.failure(1.0)
    assert b.state(1.0) == "open" and not b.allow(5.0)
    assert b.state(11.0) == "half_open"
    assert b.allow(11.0)  # the one trial
    assert not b.allow(11.0)
    b.success()
    assert b.state(11.0) == "closed" and b.allow(11.0)


def test_failed_trial_reopens():
    b = CircuitBreaker(failures=1, recovery=5.0)
    b.failure(0.0)
    assert b.allow(5.0)
    b.failure(5.0)
    assert b.state(6.0) == "open"
    assert b.state(10.0) == "half_open"


def test_success_resets_the_count():
    b = CircuitBreaker(failures=2, recovery=5.0)
    b.failure(0.0)
    b.success()
    b.failure(0.0)
    assert b.state(0.0) == "closed"
    assert STATE_VALUES == {"closed": 0, "half_open": 1, "open": 2}


def test_retry_in():
    b = CircuitBreaker(failures=1, recovery=10.0)
    assert b.retry_in(0.0) == 0.0
    b.failure(0.0)
    assert b.retry_in(4.0) == 6.0
    assert b.retry_in(10.0) == 0.0  # half-open, the trial is free
    assert b.allow(10.0)
    assert b.retry_in(10.0) == 1.0  # the trial is under way
