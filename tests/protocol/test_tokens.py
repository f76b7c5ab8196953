from bridge.exceptions import Unauthorized
from bridge.protocol.tokens import TokenClaims, _b64, _mac, issue, verify
from bridge.protocol.types import valid_id

SECRET = b"k" * 32


def claims(**kw):
    base = {"client_id": "c1", "session_id": "s1", "user_id": "u1", "expires": 1000}
    base.update(kw)
    return TokenClaims(**base)


def check(token, now=10.0, session_id="s1", user_id="u1", secret=SECRET):
    return verify(secret, token, now=now, session_id=session_id, user_id=user_id)


def test_round_trip():
    assert check(issue(SECRET, claims())) == claims()


def test_token_is_bound_to_session_and_user():
    token = issue(SECRET, claims())
    assert check(token, session_id="s2") == Unauthorized(
        "resume token belongs to another session or user"
    )
    assert isinstance(check(token, user_id="u2"), Unauthorized)


def test_expired():
    assert check(issue(SECRET, claims(expires=10)), now=10.0) == Unauthorized(
        "resume token has expired"
    )


def test_forged_signature_and_other_secret():
    token = issue(SECRET, claims())
    body, mac = token.split(".")
    assert check(body + "." + mac[:-2] + "AA") == Unauthorized("resume token signature is invalid")
    assert isinstance(check(token, secret=b"other"), Unauthorized)
    tampered = issue(SECRET, claims(user_id="u2")).split(".")[0] + "." + mac
    assert isinstance(check(tampered), Unauthorized)


def test_malformed():
    bad = Unauthorized("malformed resume token")
    assert check("nodot") == bad
    assert check("a.b.c") == bad
    assert check("x" * 2000) == bad
    assert check("é.b") == bad
    assert check(123) == bad  # type: ignore[arg-type]


def _signed(body: bytes) -> str:
    b = _b64(body)
    return b + "." + _mac(SECRET, b)


def test_signed_but_malformed_claims():
    bad = Unauthorized("malformed resume token")
    assert check(_signed(b"not json")) == bad
    assert check(_signed(b'{"c":"c1"}')) == bad
    assert check(_signed(b'{"c":"c1","s":"s1","u":"u1","x":"soon"}')) == bad
    assert check(_signed(b'{"c":"bad id!","s":"s1","u":"u1","x":99}')) == bad


def test_valid_id():
    assert valid_id("a.b_c:d@e-1")
    assert not valid_id("")
    assert not valid_id("a b")
    assert not valid_id("x" * 129)
    assert not valid_id(None)
