"""A payload the encoder refuses leaves the replay log as it was (issue 11: a
lone surrogate used to take a seq and leave a hole that broke resumes)."""

import pytest

from bridge.core.hub import HubSettings, SessionHub
from bridge.core.replay import ReplayLog, Resumed


def test_a_refused_payload_takes_no_seq():
    log = ReplayLog("e", max_messages=10, max_bytes=10_000, max_age=60.0)
    log.append("session", {"n": 1}, 0.0)
    with pytest.raises(UnicodeEncodeError):
        log.append("session", {"n": "\ud800"}, 0.0)
    with pytest.raises(ValueError):
        log.append("session", {"n": float("nan")}, 0.0)
    assert log.head == 1 and len(log) == 1 and log.latest("session").message["payload"] == {"n": 1}
    e2 = log.append("session", {"n": 2}, 0.0)
    assert e2.seq == 2
    assert log.read("e", 1, 0.0) == Resumed([e2])


def test_a_rejoin_counts_the_client_again():
    hub = SessionHub("s", "e", HubSettings(grace=1.0, keepalive=None))
    hub.attach("c1", "u1", None, None, 0.0)
    assert hub.leave("u1", 0.0) is not None
    assert not hub.presence.is_present("u1")
    entry = hub.rejoin("c1", "u1", 0.5)
    assert entry is not None and entry.message["payload"] == {"online": ["u1"]}
    assert hub.rejoin("c1", "u1", 0.6) is None  # already counted
    hub.detach("c1", 1.0)
    assert hub.tick(2.0).left == ["u1"]
