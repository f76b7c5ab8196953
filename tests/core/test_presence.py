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
