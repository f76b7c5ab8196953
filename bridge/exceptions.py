"""Every exception the bridge defines, under one root.

::

    BridgeError
    ├── ConfigError(BridgeError, ValueError)     the YAML is wrong; names the key path
    ├── TemplateError(BridgeError, ValueError)   a route template is wrong (a ConfigError problem)
    ├── RenderError                              a route cannot be rendered (ack bad_message)
    │   ├── MissingValue(RenderError, KeyError)  a placeholder has no value
    │   └── UnsafeValue(RenderError, ValueError) a header/query value would hold CR, LF or NUL
    ├── ProtocolError                            a peer (client) broke the wire contract
    │   ├── BadMessage                           not JSON/msgpack, not a map, no type (bad_message)
    │   │   └── BodyUnreadable                   an HTTP body that cannot be decoded (400)
    │   │       └── UnsupportedEncoding          its Content-Encoding is not ours (415)
    │   ├── MessageTooBig                        over limits.max_message_bytes (1009 / 413)
    │   │   └── BodyTooBig                       an HTTP body over its cap (413)
    │   ├── BadRequest                           sessionId/userId/lastSeq malformed (4400 / 400)
    │   ├── Unauthorized                         forged, expired or foreign token (4401 / 401)
    │   └── Forbidden                            another session's or user's id (forbidden)
    ├── BackplaneUnavailable                     Redis (the shared backplane) cannot be reached
    ├── JoinRefused                              a user's upstream join failed (its close_code)
    ├── HookNotFound(BridgeError, ValueError)    a decode hook cannot be loaded (upstream/hooks.py)
    ├── HookFailed                               a decode hook raised or ran too long
    ├── OpenAPIError                             init --openapi cannot read the document
    ├── ClientError                              the Python client's errors (bridge.client.errors)
    │   └── CommandFailed                        the bridge acked a command with an error
    └── UpstreamError                            the legacy app failed a request
        ├── UpstreamRejected                     it answered 4xx (error code upstream_rejected)
        ├── UpstreamFailed                       5xx after the allowed retries (upstream_error)
        │   ├── UpstreamTimeout(UpstreamFailed, TimeoutError)
        │   └── UpstreamUnreadable               its answer cannot be used (e.g. a value
        │       │                                no codec can carry: 1e999)
        │       └── Unusable                     a 2xx a route cannot use: not JSON, too big,
        │                                        a capture missing (upstream/answers.py)
        └── UpstreamUnavailable                  unreachable (upstream_unavailable)
            ├── CircuitOpen                      the breaker refused to send it
            └── UpstreamBusy                     the queue to the app is full (upstream_busy)

Protocol errors carry the wire ``code`` of protocol.md, the WebSocket
``close_code`` to use when the error must end a connection, and the HTTP
``status`` for the HTTP transports. Decoders in :mod:`bridge.protocol` never
raise them: they *return* them, and the transport turns them into a close
code, an ``error`` message or an HTTP response.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Root of every error the bridge raises on purpose."""


class ConfigError(BridgeError, ValueError):
    """The configuration is invalid.

    ``problems`` lists one line per wrong key, each starting with the key's
    dotted path (``upstream.retry.attempts: expected an integer >= 1, got 0``).
    Fix the file and load it again; nothing has been started.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  " + "\n  ".join(self.problems))


class TemplateError(BridgeError, ValueError):
    """A route template is wrong (found when the config is loaded)."""


class RenderError(BridgeError):
    """A route cannot be rendered for this context: the command is acked
    ``bad_message`` and nothing is sent."""


class MissingValue(RenderError, KeyError):
    """A required placeholder has no value in this context."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"missing value for {{{self.name}}}"


class UnsafeValue(RenderError, ValueError):
    """A templated header or query value would hold CR, LF or NUL (or a header
    name is not a token)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unsafe value"


class ProtocolError(BridgeError):
    """A client sent something the protocol does not allow."""

    code = "bad_message"
    close_code = 1008
    status = 400

    def __init__(self, message: str, *, id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.id = id

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and isinstance(other, ProtocolError)
            and (other.message, other.id) == (self.message, self.id)
        )

    def __hash__(self) -> int:
        return hash((type(self), self.message, self.id))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, id={self.id!r})"


class BadMessage(ProtocolError):
    """Undecodable or malformed message; the connection stays open."""

    code = "bad_message"
    close_code = 1007
    status = 400


class MessageTooBig(ProtocolError):
    """Over ``limits.max_message_bytes`` after decompression."""

    code = "message_too_big"
    close_code = 1009
    status = 413


class BodyUnreadable(BadMessage):
    """An HTTP request body that cannot be decoded (a broken gzip stream, say)."""

    def __init__(self, message: str = "the body cannot be decoded") -> None:
        super().__init__(message)


class UnsupportedEncoding(BodyUnreadable):
    """A ``Content-Encoding`` the bridge does not inflate."""

    status = 415


class BodyTooBig(MessageTooBig):
    """An HTTP request body over its cap (after decompression)."""

    def __init__(self, message: str = "the body is too big") -> None:
        super().__init__(message)


class BadRequest(ProtocolError):
    """Connect parameters are invalid (sessionId, userId, lastSeq ...)."""

    code = "bad_request"
    close_code = 4400
    status = 400


class Unauthorized(ProtocolError):
    """The resume token is forged, expired or bound to another client."""

    code = "unauthorized"
    close_code = 4401
    status = 401


class Forbidden(ProtocolError):
    """A message names another session or user than the connection's."""

    code = "forbidden"
    close_code = 1008
    status = 403


class BackplaneUnavailable(BridgeError):
    """The shared backplane cannot be reached; callers degrade (docs/scaling.md)."""

    code = "backplane_unavailable"


class JoinRefused(BridgeError):
    """A user's upstream join failed: close the connecting client with ``close_code``
    (``code``/``message`` as in an error message). ``uncertain``: the app may have
    applied it (timeout, 5xx, cancelled in flight); the bridge has undone it."""

    def __init__(self, close_code: int, code: str, message: str, *, uncertain: bool = False):
        super().__init__(message)
        self.close_code = close_code
        self.code = code
        self.message = message
        self.uncertain = uncertain


class UpstreamError(BridgeError):
    """The legacy app did not accept a request. ``code`` is the ack error code."""

    code = "upstream_error"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class UpstreamRejected(UpstreamError):
    """The legacy app answered 4xx: the command is wrong, retrying won't help."""

    code = "upstream_rejected"


class UpstreamFailed(UpstreamError):
    """5xx (or a broken response) after every retry the route allows."""

    code = "upstream_error"


class UpstreamTimeout(UpstreamFailed, TimeoutError):
    """No answer within ``upstream.timeout``."""


class UpstreamUnreadable(UpstreamFailed):
    """The app answered, but the bridge cannot use the answer."""


class UpstreamUnavailable(UpstreamError):
    """The circuit breaker is open or the legacy app cannot be reached."""

    code = "upstream_unavailable"


class CircuitOpen(UpstreamUnavailable):
    """The circuit breaker is open: the request was not sent at all."""


class UpstreamBusy(UpstreamUnavailable):
    """More requests wait for the app than ``upstream.max_queue``: not sent."""

    code = "upstream_busy"


class OpenAPIError(BridgeError):
    """``session-bridge init --openapi``: the document could not be read, or is
    not an OpenAPI document (the message says which)."""
