from bridge.transports.common import SendQueue


def test_below_high_water_everything_queues_in_order():
    q = SendQueue(cap=100)
    assert q.put(b"a" * 10, "session") == (True, False)
    assert q.put(b"b" * 10, "session") == (True, False)
    assert q.put(b"c" * 5) == (True, False)
    assert len(q) == 3 and q.bytes == 25
    assert [q.get(), q.get(), q.get()] == [b"a" * 10, b"b" * 10, b"c" * 5]
    assert q.bytes == 0


def test_past_high_water_a_snapshot_replaces_the_queued_one_of_its_type():
    q = SendQueue(cap=100)
    q.put(b"p" * 20, "presence")
    q.put(b"1" * 30, "session")
    assert q.put(b"2" * 30, "session") == (True, True)  # 80 > 50: replaces the older session
    assert q.put(b"x" * 5) == (True, False)  # other messages are never collapsed
    assert [q.get(), q.get(), q.get()] == [b"p" * 20, b"2" * 30, b"x" * 5]


def test_past_the_cap_nothing_fits():
    q = SendQueue(cap=40)
    assert q.put(b"a" * 30) == (True, False)
    assert q.put(b"b" * 20) == (False, False)
    assert q.put(b"c" * 20, "session") == (False, False)  # nothing of its type to replace
    assert q.put(b"d" * 10, "session") == (True, False)
    assert q.put(b"e" * 10, "session") == (True, True)
    assert q.bytes == 40
