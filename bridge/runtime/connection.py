"""What a transport gives the runtime: a :class:`Connection`, and the validated
connect parameters (:func:`parse_connect`), the same for every transport."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from ..core.replay import Entry
from ..exceptions import BadRequest, ProtocolError
from ..protocol.codecs import Codec
from ..protocol.types import RESERVED_PARAMS, Command, Message, valid_id
from ..tasks import TaskOwner

TRANSPORTS = ["websocket", "sse", "poll"]


class Connection(Protocol):
    """A client's transport as the runtime sees it: it only moves bytes and owns timers."""

    transport: str
    client_id: str
    session_id: str
    user_id: str
    codec: Codec
    params: Mapping[str, str]
    headers: Mapping[str, str]
    #: when something was last received (monotonic seconds)
    last_rx: float
    #: a request of this client is being held open (a poll): it is alive meanwhile
    busy: bool
    closed: bool
    #: when the next ``ping`` is due (heartbeats.py keeps it)
    next_ping: float

    @property
    def tasks(self) -> TaskOwner:
        """The connection's own tasks (its command worker, its writer): they end with it."""

    @property
    def inbox(self) -> list[Command]:
        """Commands received and not yet answered, in order (commands.py forwards them)."""

    #: The bridge sends ``ping`` on this transport every heartbeat interval.
    sends_pings: bool
    #: Nothing received for heartbeat.timeout ends this transport.
    rx_timeout: bool

    def start(self, welcome: Message, backlog: list[Entry]) -> None:
        """Send the welcome, then the backlog, before anything else."""

    def deliver(self, entry: Entry) -> bool:
        """Queue a stream entry; False when the connection is (now) closed."""

    def send(self, message: Message) -> None:
        """Queue one message for this connection only."""

    def close(self, code: int, reason: str, label: str | None = None) -> None:
        """Close the transport soon (non-blocking); safe to call twice.

        ``label`` is the metrics reason (a small fixed set)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a connection is: its client, session and user, and what its upstream
    requests are templated and sent with (connect parameters, forwarded headers)."""

    client_id: str
    session_id: str
    user_id: str
    params: Mapping[str, str]
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """Validated connect parameters, the same for every transport."""

    session_id: str
    user_id: str
    token: str | None
    epoch: str | None
    last_seq: int | None
    params: dict[str, str]
    headers: dict[str, str]
    #: the transport the client was on before this connect (for switch metrics)
    previous: str | None = None


def parse_connect(
    query: Mapping[str, str],
    headers: Mapping[str, str],
    forward_headers: tuple[str, ...],
    *,
    seq_param: str = "lastSeq",
    last_seq_header: str | None = None,
) -> ConnectRequest | ProtocolError:
    """Validate the connect query of any transport. Never raises.

    ``seq_param`` names the query parameter holding lastSeq (``cursor`` for
    poll); ``last_seq_header`` is used when it is absent (SSE's Last-Event-ID).
    """
    session_id = query.get("sessionId")
    user_id = query.get("userId")
    if not valid_id(session_id):
        return BadRequest("sessionId must be 1-128 characters of [A-Za-z0-9._:@-]")
    if not valid_id(user_id):
        return BadRequest("userId must be 1-128 characters of [A-Za-z0-9._:@-]")
    raw_seq = query.get(seq_param) or last_seq_header
    last_seq: int | None = None
    if raw_seq not in (None, ""):
        assert raw_seq is not None
        if not (raw_seq.isascii() and raw_seq.isdigit()) or len(raw_seq) > 18:
            return BadRequest(f"{seq_param} must be a non-negative integer")
        last_seq = int(raw_seq)
    epoch = query.get("epoch") or None
    if epoch is not None and (len(epoch) > 64 or not valid_id(epoch)):
        return BadRequest("epoch is malformed")
    params = {k: v for k, v in query.items() if k not in RESERVED_PARAMS}
    fwd = {}
    for name in forward_headers:
        value = headers.get(name)
        if value is not None:
            fwd[name] = value
    assert session_id is not None and user_id is not None
    previous = query.get("transport")
    return ConnectRequest(
        session_id=session_id,
        user_id=user_id,
        token=query.get("resumeToken") or None,
        epoch=epoch,
        last_seq=last_seq,
        params=params,
        headers=fwd,
        previous=previous if previous in TRANSPORTS else None,
    )
