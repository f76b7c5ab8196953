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
