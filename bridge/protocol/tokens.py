"""Resume tokens: opaque to clients, signed by the bridge (HMAC-SHA256).

A token binds clientId + sessionId + userId and an expiry (Unix seconds).
Format: ``base64url(json claims) "." base64url(mac)``. Any bridge instance
holding the same ``security.token_secret`` accepts it. ``verify`` never raises:
it returns claims or :class:`~bridge.exceptions.Unauthorized`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass

from ..exceptions import Unauthorized
from .types import ClientId, SessionId, UserId, valid_id

MAX_TOKEN_LENGTH = 1024


@dataclass(frozen=True, slots=True)
class TokenClaims:
    client_id: ClientId
    session_id: SessionId
    user_id: UserId
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, body: str) -> str:
    return _b64(hmac.new(secret, body.encode("ascii"), hashlib.sha256).digest())


def issue(secret: bytes, claims: TokenClaims) -> str:
    """Sign ``claims``; the caller picks ``expires`` (now + security.token_ttl)."""
    body = _b64(
        json.dumps(
            {
                "c": claims.client_id,
                "s": claims.session_id,
                "u": claims.user_id,
                "x": claims.expires,
            },
            separators=(",", ":"),
        ).encode("utf-8")
    )
    return f"{body}.{_mac(secret, body)}"


def verify(
    secret: bytes,
    token: str,
    *,
    now: float,
    session_id: str | None = None,
    user_id: str | None = None,
) -> TokenClaims | Unauthorized:
    """Check signature, expiry and binding to this session and user.

    ``None`` for ``session_id``/``user_id`` accepts the token's own (the token
    is signed, so its claims name who the bearer is)."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
        return Unauthorized("malformed resume token")
    body, mac = token.split(".")
    if not body.isascii() or not mac.isascii():
        return Unauthorized("malformed resume token")
    if not hmac.compare_digest(_mac(secret, body), mac):
        return Unauthorized("resume token signature is invalid")
    try:
        data = json.loads(_unb64(body))
        claims = TokenClaims(
            client_id=ClientId(data["c"]),
            session_id=SessionId(data["s"]),
            user_id=UserId(data["u"]),
            expires=int(data["x"]),
        )
    except (ValueError, KeyError, TypeError):
        return Unauthorized("malformed resume token")
    if not all(valid_id(v) for v in (claims.client_id, claims.session_id, claims.user_id)):
        return Unauthorized("malformed resume token")
    if (session_id is not None and claims.session_id != session_id) or (
        user_id is not None and claims.user_id != user_id
    ):
        return Unauthorized("resume token belongs to another session or user")
    if claims.expires <= now:
        return Unauthorized("resume token has expired")
    return claims
