from bridge.protocol import messages as m


def test_welcome_shape_matches_protocol():
    w = m.welcome(
        client_id="c",
        resume_token="t",
        epoch="e",
        seq=4,
        resumed=True,
        heartbeat=(25.0, 60.0),
        reconnect={"initial": 1.0, "max": 30.0, "factor": 2.0, "jitter": 0.5,
                   "upgrade_interval": 60.0},
        transports=["websocket"],
    )  # fmt: skip
    assert w == {
        "type": "welcome",
        "clientId": "c",
        "resumeToken": "t",
        "epoch": "e",
        "seq": 4,
        "resumed": True,
        "heartbeat": {"interval_ms": 25000, "timeout_ms": 60000},
        "reconnect": {"initial_ms": 1000, "max_ms": 30000, "factor": 2.0, "jitter": 0.5,
                      "upgrade_interval_ms": 60000},
        "transports": ["websocket"],
    }  # fmt: skip


def test_welcome_carries_the_users_captured_context_only_when_there_is_one():
    args = dict(client_id="c", resume_token="t", epoch="e", seq=0, resumed=False,
                heartbeat=(25.0, 60.0), transports=["poll"],
                reconnect={"initial": 1.0, "max": 30.0, "factor": 2.0, "jitter": 0.5,
                           "upgrade_interval": 60.0})  # fmt: skip
    context = {"appId": "7411"}
    w = m.welcome(**args, context=context)
    assert w["context"] == {"appId": "7411"} and w["context"] is not context  # a copy
    assert "context" not in m.welcome(**args, context={})
    assert "context" not in m.welcome(**args, context=None)
    assert "context" not in m.welcome(**args)


def test_acks_errors_and_control():
    assert m.ack_ok("1") == {"type": "ack", "id": "1", "status": "ok"}
    assert m.failure("rate_limited", "slow down", "2") == {
        "type": "ack",
        "id": "2",
        "status": "error",
        "error": {"code": "rate_limited", "message": "slow down"},
    }
    assert m.failure("bad_message", "no", None) == {
        "type": "error", "code": "bad_message", "message": "no"
    }  # fmt: skip
    assert m.error("x", "y", "3")["id"] == "3"
    assert m.ping(5) == {"type": "ping", "ts": 5}
    assert m.heartbeat(6) == {"type": "heartbeat", "ts": 6}
    assert m.reconnect(1.5, "draining") == {
        "type": "reconnect", "retry_after_ms": 1500, "reason": "draining"
    }  # fmt: skip
    assert m.stream("session", 1, {"a": 1}) == {"type": "session", "seq": 1, "payload": {"a": 1}}


def test_ms_rounds_to_whole_milliseconds():
    assert m.ms(0.0) == 0
    assert m.ms(1.5) == 1500
    assert m.ms(0.0004) == 0
    assert m.ms(0.0006) == 1
    assert m.ms(59.9999) == 60000
    assert isinstance(m.ms(1.0), int)


def test_error_without_an_id_has_no_id_key():
    assert m.error("x", "y") == {"type": "error", "code": "x", "message": "y"}
    assert m.error("x", "y", "3") == {"type": "error", "code": "x", "message": "y", "id": "3"}
    assert m.ack_error("1", "c", "m") == {
        "type": "ack", "id": "1", "status": "error", "error": {"code": "c", "message": "m"}
    }  # fmt: skip
    assert m.failure("c", "m", "") == m.ack_error("", "c", "m")  # an id, though empty
