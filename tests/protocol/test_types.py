import pytest

from bridge.protocol.types import (
    CONTROL_TYPES,
    ENVELOPE_FIELDS,
    MAX_COMMAND_ID,
    RESERVED_PARAMS,
    STREAM_TYPES,
    Command,
    valid_id,
)


@pytest.mark.parametrize(
    "value", ["a", "A.b_c:d@e-1", "x" * 128, "0", "user@example.com", "s:1.2-3_4"]
)
def test_valid_ids(value):
    assert valid_id(value)


@pytest.mark.parametrize(
    "value",
    ["", "x" * 129, "a b", "a/b", "é", "\na", "a\nb", "a+b", None, 12, b"abc", ["a"]],
)
def test_invalid_ids(value):
    assert not valid_id(value)


# ID_RE used to end in '$', which also matches before a final newline: 's1\n' passed
@pytest.mark.parametrize("value", ["s1\n", "x" * 128 + "\n"])
def test_a_trailing_newline_is_not_part_of_a_valid_id(value):
    assert not valid_id(value)


def test_constants_of_protocol_v1():
    assert MAX_COMMAND_ID == 64
    assert STREAM_TYPES == ("session", "presence")
    assert CONTROL_TYPES == {"heartbeat", "pong", "ping"}
    assert ENVELOPE_FIELDS == {"type", "id", "sessionId", "userId", "timestamp", "payload"}
    assert RESERVED_PARAMS == {
        "sessionId", "userId", "resumeToken", "lastSeq", "epoch", "cursor", "wait", "transport",
    }  # fmt: skip


def test_command_defaults_and_control():
    cmd = Command(type="vote")
    assert (cmd.id, cmd.payload, cmd.timestamp) == (None, {}, None)
    assert Command(type="vote").payload is not Command(type="vote").payload
    assert not cmd.is_control
    assert all(Command(type=t).is_control for t in ("heartbeat", "pong", "ping"))
    assert not Command(type="session").is_control
    with pytest.raises(AttributeError):
        cmd.type = "other"  # type: ignore[misc]
