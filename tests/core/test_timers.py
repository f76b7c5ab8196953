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


def test_pop_due_includes_the_deadline_itself_and_ties_fire_in_schedule_order():
    q: TimerQueue[str] = TimerQueue()
    q.schedule("late", 2.0)
    q.schedule("b", 1.0)
    q.schedule("a", 1.0)
    assert q.pop_due(0.999) == []
    assert q.pop_due(1.0) == ["b", "a"]  # same deadline: first scheduled first
    assert len(q) == 1 and "b" not in q and "late" in q
    assert q.next_deadline() == 2.0


def test_a_cancelled_or_replaced_schedule_never_fires():
    q: TimerQueue[str] = TimerQueue()
    q.schedule("a", 1.0)
    q.schedule("a", 3.0)  # replaces 1.0: the stale heap entry is skipped
    q.schedule("b", 2.0)
    q.cancel("b")
    assert len(q) == 1 and "b" not in q
    assert q.pop_due(2.5) == []
    q.schedule("b", 2.0)  # scheduled again after a cancel: live again
    assert q.pop_due(3.0) == ["b", "a"]
    assert len(q) == 0 and q.next_deadline() is None
    assert q.pop_due(100.0) == []


def test_next_deadline_skips_stale_entries_and_drops_them():
    q: TimerQueue[str] = TimerQueue()
    q.schedule("a", 1.0)
    q.schedule("b", 5.0)
    q.cancel("a")
    assert q.next_deadline() == 5.0
    assert len(q._heap) == 1  # the cancelled entry is gone from the heap


def test_compaction_waits_for_more_than_64_entries():
    q: TimerQueue[str] = TimerQueue()
    for t in range(64):
        q.schedule("a", float(t))
    assert len(q._heap) == 64  # 64 entries for 1 live key: not yet compacted
    q.schedule("a", 100.0)
    assert len(q._heap) == 1  # the 65th: compacted to the live entry
    assert q.next_deadline() == 100.0 and q.pop_due(99.0) == []
    assert q.pop_due(100.0) == ["a"]


def test_compaction_waits_for_more_than_four_entries_per_live_key():
    q: TimerQueue[int] = TimerQueue()
    for key in range(17):
        q.schedule(key, 1000.0 + key)
    for _ in range(68 - 17):
        q.schedule(0, 0.5)  # stale entries for key 0
    assert len(q._heap) == 68 == 4 * len(q)  # exactly four per live key: kept
    q.schedule(0, 0.5)
    assert len(q._heap) == 17  # one more: compacted, one entry per live key
    assert q.pop_due(0.5) == [0]
    assert q.pop_due(2000.0) == list(range(1, 17))
