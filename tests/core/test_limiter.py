"""The adaptive upstream limit (bridge/core/limiter.py), rule by rule."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.core.limiter import (
    BACKOFF,
    EASE,
    MIN_QUEUEING,
    QUEUE,
    WINDOW,
    Limiter,
    Ticket,
)


def test_constants_are_the_documented_ones():
    assert (QUEUE, MIN_QUEUEING, WINDOW, BACKOFF, EASE) == (2.0, 0.01, 500, 0.5, 0.9)


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
    assert lim.start() == Ticket(0, False, 1)
    assert lim.start() == Ticket(0, True, 2)
    one = Limiter(1)
    assert one.start().saturated
    assert Ticket(0, False).company == 1  # alone, unless said otherwise


def test_company_counts_what_was_in_flight_at_the_start_itself_included():
    lim = Limiter(5)
    a, b = lim.start(), lim.start()
    lim.done(a, "ok", 0.1)
    c = lim.start()
    assert (a.company, b.company, c.company) == (1, 2, 2)


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
        lim.done(t, "ok", 0.05)  # company k waited behind k × 0.6: queueing from k = 4
    assert lim.limit == pytest.approx(9.0) and lim.cuts == 1


def ticket(company: int, cuts: int = 0, saturated: bool = False) -> Ticket:
    return Ticket(cuts, saturated, company)


def test_queueing_is_vegas_estimate_over_two_requests():
    # no-load 20 ms; a request that took 40 ms with c in flight: c × (1 - 0.5) waiting
    lim = Limiter(10)
    lim.done(lim.start(), "ok", 0.02)
    lim.done(ticket(4), "ok", 0.04)  # 4 × 0.5 = 2: exactly two, not over
    assert lim.cuts == 0
    lim.done(ticket(5), "ok", 0.04)  # 2.5 waiting: queueing
    assert lim.cuts == 1 and lim.limit == pytest.approx(9.0)
    alone = Limiter(10)
    alone.done(alone.start(), "ok", 0.02)
    alone.done(ticket(1), "ok", 5.0)  # alone, however slow: nothing queued behind it
    assert alone.cuts == 0


def test_queueing_needs_the_wait_over_the_floor_too():
    fast = Limiter(40)
    fast.done(fast.start(), "ok", 0.002)
    fast.done(ticket(30), "ok", 0.011)  # 24 waiting by the estimate, but 9 ms more: jitter
    assert fast.cuts == 0
    edge = Limiter(40)
    edge.done(edge.start(), "ok", 0.0)  # (a no-load of 0 makes the sum below exact)
    edge.done(ticket(30), "ok", MIN_QUEUEING)  # exactly the floor more: not over it
    assert edge.cuts == 0
    edge.done(ticket(30), "ok", MIN_QUEUEING * 1.01)
    assert edge.cuts == 1


def test_the_no_load_latency_is_a_windowed_minimum():
    lim = Limiter(4)
    lim.done(lim.start(), "ok", 0.1)
    lim.done(lim.start(), "ok", 0.05)
    assert lim.best == 0.05  # a shorter one is taken as it is
    lim.done(lim.start(), "ok", 0.08)
    assert lim.best == 0.05  # a longer one never raises it (queueing looks like that)
    lim.done(lim.start(), "overload", 0.01)
    assert lim.best == 0.05  # failures are not latencies
    for _ in range(WINDOW - 3):  # the first window ends: its minimum stays the best
        lim.done(lim.start(), "ok", 0.3)
    assert lim.best == 0.05
    for _ in range(WINDOW - 1):  # the app got slower for good: still the old window's
        lim.done(lim.start(), "ok", 0.3)
    assert lim.best == 0.05
    lim.done(lim.start(), "ok", 0.3)  # two windows without it: the new latency
    assert lim.best == 0.3
    lim.done(lim.start(), "ok", 0.2)
    assert lim.best == 0.2


def test_an_app_that_got_slower_for_good_is_not_held_down_for_ever():
    lim = Limiter(10)
    for _ in range(50):
        lim.done(lim.start(), "ok", 0.02)
    for _ in range(3 * WINDOW):  # now 100 ms alone, and 5 in flight at a time
        flight = [lim.start() for _ in range(min(5, lim.allowed))]
        for t in flight:
            lim.done(t, "ok", 0.1)
    assert lim.best == 0.1 and lim.limit > 5.0


def test_a_success_that_was_queueing_does_not_also_grow():
    lim = Limiter(4)
    for _ in range(2):
        lim.done(lim.start(), "overload", 0.1)
    assert lim.limit == 1.0
    lim.done(lim.start(), "ok", 0.1)  # saturated: grows to 2
    assert lim.limit == 2.0
    lim.done(ticket(4, cuts=2, saturated=True), "ok", 0.5)  # queueing: eased, not grown
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
