"""The client's errors, under the project's root :class:`~bridge.exceptions.BridgeError`.

::

    BridgeError
    └── ClientError          refused, lost, timed out, closed ... (``code`` says which)
        └── CommandFailed    the bridge acked a command with an error
"""

from __future__ import annotations

from ..exceptions import BridgeError


class ClientError(BridgeError):
    """Raised, or reported to ``on_error`` / ``on_disconnect``, by the client.

    ``code`` is the protocol's error code (``unauthorized``, ``draining`` ...)
    or ``close_<code>`` for a WebSocket close. ``fatal``: the bridge refused
    this client for good (bad ids, origin, a fresh connect refused 4401 /
    401, e.g. the app refused the join): the client stopped; fix the cause,
    then ``connect()`` again.

    The rest says how a transport ended, for the reconnect policy of
    :mod:`bridge.protocol.backoff`: ``close_code`` (WebSocket), ``status``
    (HTTP), ``retry_after`` (the bridge's hint, in seconds), ``reason`` (of a
    ``reconnect`` message) and ``token_refused`` (the request carried the
    resume token and was refused 4401 / 401: the client connects afresh).
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        fatal: bool = False,
        close_code: int | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        reason: str | None = None,
        token_refused: bool = False,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.fatal = fatal
        self.close_code = close_code
        self.status = status
        self.retry_after = retry_after
        self.reason = reason
        self.token_refused = token_refused


class CommandFailed(ClientError):
    """The bridge acked the command with an error (``ack.error``): ``code`` says which."""
