"""The adaptive upstream limit (bridge/core/limiter.py), rule by rule."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.core.limiter import (
    BACKOFF,
    DRIFT,
    EASE,
    MIN_QUEUEING,
    TOLERANCE,
    Limiter,
    Ticket,
)


def test_constants_are_the_documented_ones():
    assert (TOLERANCE, MIN_QUEUEING, DRIFT, BACKOFF, EASE) == (2.0, 0.01, 0.001, 0.5, 0.9)


def test_starts_at_the_maximum_and_counts_what_is_in_flight():
    lim = Limiter(4)
    assert lim.limit == 4.0 and lim.allowed == 4 and lim.in_flight == 0
    tickets = []
    for i in range(4):
        assert lim.ready(0.0)
        tickets.append(lim.start())
        assert lim.in_flight == i + 1
    assert not lim.ready(0.0)
    assert [t.saturated for t in tickets] == [False, False, False, True]
    lim.done(tickets[0], "other", 0.1)
    assert lim.in_flight == 3 and lim.ready(0.0)
    assert lim.limit == 4.0  # "other" says nothing


def test_saturated_means_the_start_filled_the_limit():
    lim = Limiter(2)
    assert lim.start() == Ticket(0, False)
    assert lim.start() == Ticket(0, True)
    one = Limiter(1)
    assert one.start().saturated


def test_overload_halves_once_per_flight():
    lim = Limiter(8)
    flight = [lim.start() for _ in range(8)]
    for t in flight:
        lim.done(t, "overload", 1.0)
    assert lim.limit == 4.0 and lim.cuts == 1  # eight failures sent together: one cut
    assert lim.in_flight == 0
    later = lim.start()
    assert later.cuts == 1
    lim.done(later, "overload", 1.0)
    assert lim.limit == 2.0 and lim.cuts == 2


def test_never_below_the_minimum():
    lim = Limiter(8, min_limit=3)
    for _ in range(10):
        lim.done(lim.start(), "overload", 0.1)
    assert lim.limit == 3.0 and lim.allowed == 3
    assert Limiter(2, min_limit=5).min_limit == 2  # a minimum above the maximum is the maximum
    floor = Limiter(4)
    for _ in range(10):
        floor.done(floor.start(), "overload", 0.1)
    assert floor.limit == 1.0


def test_successes_under_saturation_grow_it_additively_up_to_the_maximum():
    lim = Limiter(4)
    for _ in range(3):  # down to 0.5 * 0.5 * 4 = 1, each time at once
        lim.done(lim.start(), "overload", 0.05)
    assert lim.limit == 1.0
    lim.done(lim.start(), "ok", 0.05)  # saturated (the limit is 1): + 1/1
    assert lim.limit == 2.0
    a, b = lim.start(), lim.start()
    assert not a.saturated and b.saturated
    lim.done(a, "ok", 0.05)
    assert lim.limit == 2.0  # not held back: nothing learned
    lim.done(b, "ok", 0.05)
    assert lim.limit == 2.5  # + 1/2
    for _ in range(40):
        ts = [lim.start() for _ in range(lim.allowed)]
        for t in ts:
            lim.done(t, "ok", 0.05)
    assert lim.limit == 4.0  # capped


def test_queueing_eases_it_once_per_flight():
    lim = Limiter(10)
    lim.done(lim.start(), "ok", 0.02)
    assert lim.best == 0.02
    flight = [lim.start() for _ in range(10)]
    for t in flight:
        lim.done(t, "ok", 0.05)  # over 2 × 0.02 and over 10 ms: queueing
    assert lim.limit == pytest.approx(9.0) and lim.cuts == 1


def test_queueing_needs_both_the_ratio_and_the_floor():
    fast = Limiter(4)
    fast.done(fast.start(), "ok", 0.001)
    t = fast.start()
    fast.done(t, "ok", 0.009)  # 9 × the best, but under 10 ms: jitter, not queueing
    assert fast.cuts == 0
    slow = Limiter(4)
    slow.done(slow.start(), "ok", 0.1)
    slow.done(slow.start(), "ok", 0.2)  # exactly 2 ×: not over it
    assert slow.cuts == 0
    slow.done(slow.start(), "ok", 0.21)
    assert slow.cuts == 1
    edge = Limiter(4)
    edge.done(edge.start(), "ok", 0.004)
    edge.done(edge.start(), "ok", 0.01)  # over 2 ×, exactly the floor: not over it
    assert edge.cuts == 0


def test_the_no_load_latency_drifts_slowly_towards_what_is_seen():
    lim = Limiter(4)
    lim.done(lim.start(), "ok", 0.1)
    lim.done(lim.start(), "ok", 0.05)
    assert lim.best == 0.05  # a shorter one is taken as it is
    lim.done(lim.start(), "ok", 0.08)
    assert lim.best == pytest.approx(0.05 + 0.03 * DRIFT)
    lim.done(lim.start(), "overload", 0.5)
    assert lim.best == pytest.approx(0.05 + 0.03 * DRIFT)  # failures are not latencies


def test_a_success_that_was_queueing_does_not_also_grow():
    lim = Limiter(4)
    for _ in range(2):
        lim.done(lim.start(), "overload", 0.1)
    assert lim.limit == 1.0
    lim.done(lim.start(), "ok", 0.1)  # saturated: grows to 2
    assert lim.limit == 2.0
    t = lim.start()
    lim.start()
    lim.done(t, "ok", 0.5)  # queueing: eased, not grown
    assert lim.limit == pytest.approx(1.8)


def test_not_adaptive_stays_where_it_is():
    lim = Limiter(5, adaptive=False)
    for outcome in ("overload", "ok", "overload"):
        lim.done(lim.start(), outcome, 3.0)
    assert lim.limit == 5.0 and lim.cuts == 0 and lim.best is None and lim.in_flight == 0


def test_pause_holds_every_start_until_then():
    lim = Limiter(4)
    lim.pause(10.0)
    assert not lim.ready(9.99) and lim.ready(10.0)
    lim.pause(5.0)  # an earlier time never shortens a pause
    assert lim.paused_until == 10.0
    lim.pause(12.0)
    assert lim.paused_until == 12.0


def test_resize():
    lim = Limiter(8)
    lim.done(lim.start(), "overload", 0.1)
    lim.resize(16, adaptive=True)
    assert lim.max_limit == 16 and lim.limit == 4.0  # keeps what it learned
    lim.resize(2, adaptive=True)
    assert lim.limit == 2.0 and lim.min_limit == 1
    assert lim.adaptive is True
    lim.resize(6, adaptive=False)
    assert lim.limit == 6.0 and lim.adaptive is False
    lim.done(lim.start(), "overload", 0.1)
    assert lim.limit == 6.0  # not adaptive any more: it stays
    low = Limiter(8, min_limit=4)
    low.resize(3, adaptive=True)
    assert low.min_limit == 3


def test_done_never_goes_below_zero_in_flight():
    lim = Limiter(2)
    t = lim.start()
    lim.done(t, "other", 0.0)
    lim.done(t, "other", 0.0)
    assert lim.in_flight == 0


@given(st.lists(st.tuples(st.sampled_from(["ok", "overload", "other"]),
                          st.floats(0.0, 5.0), st.booleans()), max_size=200))  # fmt: skip
def test_the_limit_stays_in_its_bounds_and_in_flight_is_counted(events):
    lim = Limiter(12, min_limit=2)
    open_tickets = []
    for outcome, latency, start in events:
        if start and lim.ready(0.0):
            open_tickets.append(lim.start())
        elif open_tickets:
            lim.done(open_tickets.pop(0), outcome, latency)
        assert 2.0 <= lim.limit <= 12.0
        assert lim.in_flight == len(open_tickets) <= 12
