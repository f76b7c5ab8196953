from bridge.core.timers import TimerQueue


def test_pop_due_in_deadline_order():
    q: TimerQueue[str] = TimerQueue()
    q.schedule("b", 2.0)
    q.schedule("a", 1.0)
    q.schedule("c", 3.0)
    assert len(q) == 3 and "a" in q
    assert q.next_deadline() == 1.0
    assert q.pop_due(2.5) == ["a", "b"]
    assert q.pop_due(2.5) == []
    assert q.next_deadline() == 3.0
    assert "a" not in q


def test_reschedule_replaces_and_cancel_removes():
    q: TimerQueue[str] = TimerQueue()
    q.schedule("a", 1.0)
    q.schedule("a", 5.0)
    q.schedule("b", 2.0)
    q.cancel("b")
    q.cancel("missing")
    assert q.next_deadline() == 5.0
    assert q.pop_due(4.0) == []
    assert q.pop_due(5.0) == ["a"]
    assert q.next_deadline() is None


def test_heap_is_compacted_under_churn():
    q: TimerQueue[int] = TimerQueue()
    for i in range(10):
        for t in range(50):
            q.schedule(i, float(t))
    assert len(q) == 10
    assert len(q._heap) <= 4 * 10 + 64
    assert q.pop_due(100.0) == list(range(10))
