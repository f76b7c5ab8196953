import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.exceptions import BadMessage, Forbidden, ProtocolError
from bridge.protocol.normalise import normalise
from bridge.protocol.types import Command
from bridge.protocol.values import problem


def n(raw):
    return normalise(raw, "s1", "u1")


def test_envelope_shape():
    cmd = n({"type": "vote", "id": "c1", "payload": {"vote": "5"}})
    assert cmd == Command(type="vote", id="c1", payload={"vote": "5"})
    assert not cmd.is_control


def test_legacy_flat_shape_moves_fields_into_payload():
    cmd = n({"type": "vote", "sessionId": "s1", "userId": "u1", "vote": "5", "timestamp": 12})
    assert cmd == Command(type="vote", id=None, payload={"vote": "5"}, timestamp=12)


def test_payload_wins_over_flat_duplicates():
    cmd = n({"type": "vote", "payload": {"vote": "8"}, "vote": "5", "extra": 1})
    assert isinstance(cmd, Command)
    assert cmd.payload == {"vote": "8", "extra": 1}


def test_control_types():
    assert n({"type": "heartbeat"}).is_control
    assert n({"type": "pong", "ts": 1}).payload == {"ts": 1}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ([1], BadMessage("a message must be a map with a 'type'")),
        ({"id": "a"}, BadMessage("'type' must be a non-empty string", id="a")),
        ({"type": ""}, BadMessage("'type' must be a non-empty string")),
        ({"type": 5, "id": "x" * 65}, BadMessage("'type' must be a non-empty string")),
        ({"type": "vote", "id": 7}, BadMessage("'id' must be a string of 1-64 characters")),
        ({"type": "vote", "id": ""}, BadMessage("'id' must be a string of 1-64 characters")),
        ({"type": "vote", "id": "c", "payload": 3}, BadMessage("'payload' must be a map", id="c")),
        (
            {"type": "vote", "id": "c", "sessionId": "s2"},
            Forbidden("the message names another session", id="c"),
        ),
        ({"type": "vote", "userId": "u2"}, Forbidden("the message names another user")),
    ],
)
def test_errors(raw, expected):
    assert n(raw) == expected


def test_null_id_means_no_id():
    assert n({"type": "vote", "id": None}).id is None


def test_error_equality_and_hash():
    a = BadMessage("x", id="1")
    assert a == BadMessage("x", id="1")
    assert a != Forbidden("x", id="1")
    assert a != "x"
    assert hash(a) == hash(BadMessage("x", id="1"))
    assert repr(a) == "BadMessage('x', id='1')"
    assert isinstance(a, ProtocolError)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3)
    ),
    max_leaves=10,
)


@given(json_values)
def test_normalise_never_raises(raw):
    result = n(raw)
    assert isinstance(result, Command | ProtocolError)
    if isinstance(result, Command):
        assert result.type and isinstance(result.payload, dict)


def test_an_id_of_64_characters_is_kept_65_is_refused():
    assert n({"type": "vote", "id": "x" * 64}).id == "x" * 64
    assert n({"type": "vote", "id": "x" * 65}) == BadMessage(
        "'id' must be a string of 1-64 characters"
    )
    assert n({"type": "vote", "id": "x"}).id == "x"


def test_a_refusal_names_the_message_id_when_it_has_a_valid_one():
    assert n({"type": "vote", "id": "c", "userId": "u2"}) == Forbidden(
        "the message names another user", id="c"
    )
    assert n({"type": "vote", "id": "c", "sessionId": "s2", "userId": "u2"}) == Forbidden(
        "the message names another session", id="c"
    )
    assert n({"type": "", "id": "c"}) == BadMessage("'type' must be a non-empty string", id="c")
    assert n({"type": "vote", "payload": [1]}) == BadMessage("'payload' must be a map")


def test_own_session_and_user_are_accepted_and_not_copied_into_the_payload():
    cmd = n({"type": "vote", "id": "c", "sessionId": "s1", "userId": "u1", "payload": {"v": 1}})
    assert cmd == Command(type="vote", id="c", payload={"v": 1})


def test_the_payload_is_copied_not_shared():
    payload = {"vote": "5"}
    cmd = n({"type": "vote", "payload": payload, "extra": 1})
    assert cmd.payload == {"vote": "5", "extra": 1}
    assert payload == {"vote": "5"}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 2**64, "\ud800"])
def test_a_message_no_codec_can_carry_is_refused_with_its_id(bad):
    raw = {"type": "vote", "id": "c", "payload": {"v": [1, bad]}}
    why = problem(raw)
    assert why is not None
    assert n(raw) == BadMessage(f"cannot carry this message: {why}", id="c")
    flat = {"type": "vote", "v": bad}
    assert n(flat) == BadMessage(f"cannot carry this message: {problem(flat)}")


def test_an_id_no_codec_can_carry_is_refused_and_not_echoed():
    assert n({"type": "vote", "id": "\ud800"}) == BadMessage(
        "'id' must be a string of 1-64 characters"
    )
    assert n({"type": "", "id": "c\udfff"}) == BadMessage("'type' must be a non-empty string")
