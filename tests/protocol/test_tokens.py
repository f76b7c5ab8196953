from bridge.exceptions import Unauthorized
from bridge.protocol.tokens import MAX_TOKEN_LENGTH, TokenClaims, _b64, _mac, _unb64, issue, verify
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


#: issue(SECRET, claims()) as clients hold it: any change of format breaks every
#: token out there (and every bridge of a rolling deploy must agree).
GOLDEN = (
    "eyJjIjoiYzEiLCJzIjoiczEiLCJ1IjoidTEiLCJ4IjoxMDAwfQ.1sb6fFz26FakPOsf5ATByEotodwPEuSkXS4QJ5yWlhA"
)


def test_the_token_format_is_stable():
    assert issue(SECRET, claims()) == GOLDEN
    body, mac = GOLDEN.split(".")
    assert _unb64(body) == b'{"c":"c1","s":"s1","u":"u1","x":1000}'  # compact JSON
    assert "=" not in GOLDEN and len(mac) == 43  # base64url, unpadded
    assert check(GOLDEN) == claims()


def test_b64_is_unpadded_base64url():
    assert _b64(b"") == ""
    assert _b64(b"\xfb\xff") == "-_8"
    assert _b64(b"\x00\x00\x17") == "AAAX"
    assert _b64(b"\x00") == "AA"
    for data in (b"", b"a", b"ab", b"abc", b"abcd", b"\xfb\xff\xfe"):
        assert _unb64(_b64(data)) == data


def test_the_mac_covers_the_body():
    token = issue(SECRET, claims())
    other_body = issue(SECRET, claims(expires=999_999)).split(".")[0]
    forged = other_body + "." + token.split(".")[1]  # a later expiry under the old mac
    assert check(forged) == Unauthorized("resume token signature is invalid")
    assert _mac(SECRET, "a") != _mac(SECRET, "b")
    assert _mac(SECRET, "a") != _mac(b"other", "a")


def test_the_length_limit_is_inclusive():
    body = "A" * (MAX_TOKEN_LENGTH - 44)
    at_limit = body + "." + "B" * 43
    assert len(at_limit) == MAX_TOKEN_LENGTH
    # as long as allowed: read, so its signature is what fails
    assert check(at_limit) == Unauthorized("resume token signature is invalid")
    assert check(at_limit + "B") == Unauthorized("malformed resume token")


def test_unbound_verification_accepts_the_token_s_own_session_and_user():
    token = issue(SECRET, claims())
    assert verify(SECRET, token, now=10.0) == claims()
    assert verify(SECRET, token, now=10.0, session_id="s1") == claims()
    assert verify(SECRET, token, now=10.0, user_id="u1") == claims()
    other = Unauthorized("resume token belongs to another session or user")
    assert verify(SECRET, token, now=10.0, user_id="u2") == other
    assert verify(SECRET, token, now=10.0, session_id="s2") == other


def test_expiry_is_exclusive():
    token = issue(SECRET, claims(expires=100))
    assert check(token, now=99.999) == claims(expires=100)
    assert check(token, now=100.0) == Unauthorized("resume token has expired")
    assert check(token, now=100.5) == Unauthorized("resume token has expired")


def test_every_claim_must_be_a_valid_id():
    bad = Unauthorized("malformed resume token")
    assert check(_signed(b'{"c":"c1","s":"s 1","u":"u1","x":99}'), session_id=None) == bad
    assert check(_signed(b'{"c":"c1","s":"s1","u":"","x":99}'), user_id=None) == bad
    assert check(_signed(b'{"c":"c1","s":"s1","u":"u1","x":99}'), now=1.0) == claims(expires=99)
    assert check(_signed(b'{"c":"c1","s":"s1","u":"u1","x":"99"}'), now=1.0) == claims(expires=99)
    assert check(_signed(b'{"c":"c1","s":"s1","u":"u1","x":null}')) == bad
    assert check(_signed(b"[1]")) == bad
