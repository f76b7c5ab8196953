from bridge.core.presence import Due, Presence


def test_join_once_grace_and_leave():
    p = Presence(grace=10.0, keepalive=None)
    assert p.connect("c1", "u1", 0.0) is True
    assert p.connect("c2", "u1", 0.0) is False
    assert p.online() == ["u1"] and p.live_clients() == 2
    assert p.clients_of("u1") == {"c1", "c2"} and p.clients_of("nobody") == set()
    p.disconnect("c1", 1.0)
    assert not p.in_grace("u1")
    p.disconnect("c2", 2.0)
    assert p.in_grace("u1") and p.is_present("u1")
    assert p.next_deadline() == 12.0
    assert p.tick(11.0) == Due([], [])
    assert p.tick(12.0) == Due(["u1"], [])
    assert p.online() == [] and not p.in_grace("u1")


def test_return_within_grace_cancels_leave():
    p = Presence(grace=10.0, keepalive=None)
    p.connect("c1", "u1", 0.0)
    p.disconnect("c1", 1.0)
    assert p.connect("c1", "u1", 5.0) is False
    assert p.tick(100.0) == Due([], [])
    assert p.online() == ["u1"]


def test_keepalive_once_per_user_while_present():
    p = Presence(grace=5.0, keepalive=3.0)
    p.connect("c1", "u1", 0.0)
    p.connect("c2", "u1", 0.0)
    p.connect("c3", "u2", 1.0)
    assert p.tick(3.0) == Due([], ["u1"])
    assert p.tick(4.0) == Due([], ["u2"])
    p.disconnect("c3", 4.0)
    assert p.tick(6.0) == Due([], ["u1"])
    # u2 is still kept alive during its grace (at 7), then leaves at 9.
    assert p.tick(9.0) == Due(["u2"], ["u2", "u1"])
    assert p.tick(50.0) == Due([], ["u1"])


def test_explicit_leave_and_unknown_clients():
    p = Presence(grace=5.0, keepalive=3.0)
    p.connect("c1", "u1", 0.0)
    assert p.leave("u1") is True
    assert p.leave("u1") is False
    assert p.online() == [] and p.live_clients() == 0
    p.disconnect("c1", 1.0)  # already gone with the user
    p.disconnect("never", 1.0)
    assert p.next_deadline() is None
    assert p.tick(10.0) == Due([], [])


def test_disconnect_of_a_client_whose_user_left_is_ignored():
    p = Presence(grace=5.0, keepalive=None)
    p.connect("c1", "u1", 0.0)
    p._users.pop("u1")  # the user record is gone but the client mapping is not
    p.disconnect("c1", 1.0)
    assert p.live_clients() == 0


def test_an_explicit_leave_cancels_the_grace_timer():
    p = Presence(grace=10.0, keepalive=None)
    p.connect("c1", "u1", 0.0)
    p.disconnect("c1", 1.0)  # grace until 11
    assert p.next_deadline() == 11.0
    assert p.leave("u1") is True
    assert p.next_deadline() is None
    assert p.tick(11.0) == Due([], [])  # no second leave for the same user


def test_a_user_back_after_an_explicit_leave_is_not_ended_by_the_old_grace():
    p = Presence(grace=10.0, keepalive=None)
    p.connect("c1", "u1", 0.0)
    p.disconnect("c1", 1.0)  # grace until 11
    p.leave("u1")
    assert p.connect("c2", "u1", 5.0) is True  # a new join
    assert p.tick(11.0) == Due([], [])
    assert p.online() == ["u1"] and p.clients_of("u1") == {"c2"}
    assert not p.in_grace("u1") and p.next_deadline() is None


def test_an_explicit_leave_cancels_the_keepalive_timer():
    p = Presence(grace=10.0, keepalive=3.0)
    p.connect("c1", "u1", 0.0)
    assert p.next_deadline() == 3.0
    p.leave("u1")
    assert p.next_deadline() is None
    assert p.tick(3.0) == Due([], [])
    assert p.connect("c1", "u1", 4.0) is True
    assert p.next_deadline() == 7.0  # a fresh keep-alive, from the new join


def test_returning_within_grace_ends_the_grace_and_its_timer():
    p = Presence(grace=10.0, keepalive=None)
    p.connect("c1", "u1", 0.0)
    p.disconnect("c1", 1.0)
    assert p.in_grace("u1") and p.next_deadline() == 11.0
    assert p.connect("c2", "u1", 5.0) is False
    assert not p.in_grace("u1")
    assert p.next_deadline() is None
    assert p.clients_of("u1") == {"c2"} and p.live_clients() == 1
    # a later drop starts a whole new grace, from its own time
    p.disconnect("c2", 20.0)
    assert p.in_grace("u1") and p.next_deadline() == 30.0
    assert p.tick(29.999) == Due([], [])
    assert p.tick(30.0) == Due(["u1"], [])
    assert not p.is_present("u1") and p.live_clients() == 0


def test_grace_starts_only_when_the_last_client_goes():
    p = Presence(grace=10.0, keepalive=None)
    p.connect("c1", "u1", 0.0)
    p.connect("c2", "u1", 0.0)
    p.disconnect("c1", 1.0)
    assert not p.in_grace("u1") and p.next_deadline() is None
    assert p.clients_of("u1") == {"c2"} and p.live_clients() == 1
    p.disconnect("c1", 2.0)  # a repeat: nothing more
    assert not p.in_grace("u1") and p.next_deadline() is None
    p.disconnect("c2", 3.0)
    assert p.in_grace("u1") and p.next_deadline() == 13.0
    assert p.is_present("u1") and p.online() == ["u1"] and p.live_clients() == 0


def test_leave_removes_every_client_of_the_user_only():
    p = Presence(grace=10.0, keepalive=None)
    p.connect("c1", "u1", 0.0)
    p.connect("c2", "u1", 0.0)
    p.connect("c3", "u2", 0.0)
    assert p.leave("u1") is True
    assert p.online() == ["u2"] and p.live_clients() == 1
    assert p.clients_of("u1") == set() and p.clients_of("u2") == {"c3"}
    p.disconnect("c2", 1.0)  # gone with its user: no grace for anyone
    assert p.next_deadline() is None and not p.in_grace("u2")


def test_keepalive_is_rescheduled_from_the_tick_that_sent_it():
    p = Presence(grace=10.0, keepalive=3.0)
    p.connect("c1", "u1", 0.0)
    assert p.tick(2.999) == Due([], [])
    assert p.tick(4.0) == Due([], ["u1"])  # a late tick: next one 3 s after it
    assert p.next_deadline() == 7.0
    assert p.tick(6.999) == Due([], [])
    assert p.tick(7.0) == Due([], ["u1"])


def test_online_is_sorted_and_leaves_come_in_deadline_order():
    p = Presence(grace=5.0, keepalive=None)
    for i, user in enumerate(["u3", "u1", "u2"]):
        p.connect(f"c{i}", user, 0.0)
    assert p.online() == ["u1", "u2", "u3"]
    p.disconnect("c1", 2.0)  # u1
    p.disconnect("c0", 1.0)  # u3
    p.disconnect("c2", 3.0)  # u2
    assert p.tick(10.0) == Due(["u3", "u1", "u2"], [])
    assert p.online() == []


# tick pops every due timer first: a user whose grace ends in the same tick as their
# keep-alive (before it, or with it but scheduled earlier) used to keep getting it


def test_no_keepalive_for_a_user_whose_grace_ended_in_the_same_tick():
    p = Presence(grace=5.0, keepalive=10.0)
    p.connect("c1", "u1", 0.0)  # keep-alive at 10
    p.disconnect("c1", 1.0)  # grace until 6
    assert p.tick(12.0) == Due(["u1"], [])  # a late tick: both due, the grace first
    assert p.next_deadline() is None
    assert p.tick(22.0) == Due([], [])


def test_no_keepalive_after_a_grace_that_ends_with_the_keepalive():
    p = Presence(grace=5.0, keepalive=3.0)
    p.connect("c1", "u1", 0.0)  # keep-alive at 3
    p.disconnect("c1", 1.0)  # grace until 6
    assert p.tick(3.0) == Due([], ["u1"])  # the next keep-alive also at 6
    p.tick(6.0)  # ticking on time: the grace timer (older) comes first
    assert p.next_deadline() is None
    assert p.tick(9.0) == Due([], [])
