from bridge.core.dedupe import Dedupe, Done, New, Pending

ACK = {"type": "ack", "id": "1", "status": "ok"}


def test_new_pending_done():
    d = Dedupe(window=10.0)
    assert d.begin("u1", "1", 0.0) == New()
    assert d.begin("u1", "1", 1.0) == Pending()
    d.finish("u1", "1", ACK, 2.0)
    assert d.begin("u1", "1", 3.0) == Done(ACK)
    assert d.begin("u2", "1", 3.0) == New()  # ids are per user
    assert len(d) == 2


def test_window_expiry_keeps_pending():
    d = Dedupe(window=10.0)
    d.begin("u1", "a", 0.0)
    d.begin("u1", "b", 0.0)
    d.finish("u1", "b", ACK, 0.0)
    d.expire(50.0)  # "a" is still upstream: kept, and it blocks the scan
    assert len(d) == 2
    d.finish("u1", "a", ACK, 50.0)
    d.expire(55.0)
    assert len(d) == 1
    d.expire(61.0)
    assert len(d) == 0
    assert d.begin("u1", "a", 61.0) == New()


def test_finish_unknown():
    d = Dedupe(window=10.0)
    d.finish("u1", "x", ACK, 0.0)
    assert len(d) == 0


def test_forget_lets_a_repeat_through():
    d = Dedupe(window=10.0)
    d.begin("u1", "x", 0.0)
    d.forget("u1", "x")
    assert d.begin("u1", "x", 0.0) == New()


def test_a_command_in_flight_never_expires_until_finished():
    d = Dedupe(window=10.0)
    assert d.begin("u1", "slow", 0.0) == New()
    for now in (10.0, 11.0, 1_000.0, 1e9):
        d.expire(now)
        assert d.begin("u1", "slow", now) == Pending()  # never forwarded twice
    assert len(d) == 1
    d.finish("u1", "slow", ACK, 1e9)
    assert d.begin("u1", "slow", 1e9 + 9.0) == Done(ACK)


def test_the_window_counts_from_the_ack_and_ends_at_its_last_instant():
    d = Dedupe(window=10.0)
    d.begin("u1", "a", 0.0)
    d.finish("u1", "a", ACK, 5.0)  # the window runs 5.0 .. 15.0
    d.expire(14.999)
    assert d.begin("u1", "a", 14.999) == Done(ACK)
    d.expire(15.0)  # expires == now: gone
    assert len(d) == 0
    assert d.begin("u1", "a", 15.0) == New()


def test_expire_drops_acked_records_oldest_first_up_to_now():
    d = Dedupe(window=10.0)
    other = {"type": "ack", "id": "b", "status": "ok"}
    for cid in ("a", "b", "c"):
        d.begin("u1", cid, 0.0)
    d.finish("u1", "b", other, 1.0)  # expires 11
    d.finish("u1", "a", ACK, 2.0)  # re-inserted after "b": expires 12
    d.finish("u1", "c", ACK, 3.0)  # expires 13
    d.expire(12.0)
    assert len(d) == 1
    assert d.begin("u1", "c", 12.0) == Done(ACK)
    assert d.begin("u1", "a", 12.0) == New()
    assert d.begin("u1", "b", 12.0) == New()


def test_forget_an_unknown_command_is_a_no_op():
    d = Dedupe(window=10.0)
    d.forget("u1", "never-seen")
    d.begin("u1", "x", 0.0)
    d.forget("u2", "x")  # another user's id
    assert len(d) == 1
    assert d.begin("u1", "x", 0.0) == Pending()


def test_finish_of_a_forgotten_command_stores_nothing():
    d = Dedupe(window=10.0)
    d.begin("u1", "x", 0.0)
    d.forget("u1", "x")
    d.finish("u1", "x", ACK, 1.0)  # a late answer to an abandoned forward
    assert len(d) == 0
    assert d.begin("u1", "x", 1.0) == New()
