"""``POST paths.messages``: client → bridge over plain HTTP (for SSE and poll clients).

The body is one message or an array of them (JSON, or msgpack by
``Content-Type``; gzip bodies are accepted), the resume token comes in the
query (``resumeToken``) or ``X-Bridge-Token``. Each message goes through the
same normalisation, de-duplication and upstream forwarding as a WebSocket
frame, in order. The answer is ``{"acks": [...]}`` with one ack per message
that had an id (plus ``"errors": [...]`` for failed messages without one);
those acks are not sent again on the client's stream. It works whether or not
the client has a stream open. A POSTed ``heartbeat`` counts as liveness of the
client's stream and needs no answer.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from ..core.replay import Entry
from ..exceptions import BadMessage, BodyTooBig, BodyUnreadable, ProtocolError, UnsupportedEncoding
from ..protocol import tokens
from ..protocol.codecs import Codec, decode_batch
from ..protocol.types import RESERVED_PARAMS, Message
from ..runtime import Identity
from .common import BRIDGE, ClientConnection, json_error, origin_allowed
from .http import (
    accept_codec,
    body_codec,
    encoded_response,
    read_body,
)

#: Messages per request; more is a 413 (the outbox sends in batches).
MAX_BATCH = 100


class Collector(ClientConnection):
    """The 'connection' a POSTed command runs on: what it sends is the HTTP answer."""

    __slots__ = ("codec", "sent")

    transport = "http"
    sends_pings = False
    rx_timeout = False

    def __init__(self, who: Identity, codec: Codec) -> None:
        super().__init__(who, time.monotonic())
        self.codec = codec
        self.sent: list[Message] = []

    def start(self, welcome: Message, backlog: list[Entry]) -> None:  # pragma: no cover
        raise RuntimeError("a POST is never attached as a stream")

    def deliver(self, entry: Entry) -> bool:  # pragma: no cover - never attached
        return False

    def send(self, message: Message) -> None:
        self.sent.append(message)

    def close(self, code: int, reason: str, label: str | None = None) -> None:
        self.closed = True


async def messages_handler(request: web.Request) -> web.StreamResponse:
    bridge = request.app[BRIDGE]
    cfg = bridge.cfg
    if not origin_allowed(cfg, request.headers.get("Origin")):
        return json_error(403, "forbidden", "origin not allowed")
    reply_codec = accept_codec(request, cfg)
    codec = body_codec(request, cfg)
    if codec is None or reply_codec is None:
        return json_error(
            415 if codec is None else 406,
            "bad_message",
            "use application/json or application/msgpack",
        )
    if bridge.drained:
        return json_error(
            503, "draining", "server restarting: send it again elsewhere", {"Retry-After": "1"}
        )
    token = request.query.get("resumeToken") or request.headers.get("X-Bridge-Token")
    if not token:
        return json_error(
            401, "unauthorized", "a resumeToken (query or X-Bridge-Token) is required"
        )
    claims = tokens.verify(
        bridge.secret,
        token,
        now=time.time(),
        session_id=request.query.get("sessionId"),
        user_id=request.query.get("userId"),
    )
    if isinstance(claims, ProtocolError):
        return json_error(401, claims.code, claims.message)
    try:
        body = await read_body(request, cfg.limits.max_message_bytes)
    except (BodyTooBig, BodyUnreadable) as exc:
        if isinstance(exc, BodyTooBig):
            cap = cfg.limits.max_message_bytes
            resp = json_error(
                413, "message_too_big", f"the decoded body is over limits.max_message_bytes ({cap})"
            )
        else:
            status = 415 if isinstance(exc, UnsupportedEncoding) else 400
            resp = json_error(status, "bad_message", f"cannot decode the body: {exc}")
        return resp  # the rest of the body is never read: see edge_middleware
    batch = decode_batch(codec, body)
    if isinstance(batch, BadMessage):
        return json_error(400, batch.code, batch.message)
    if len(batch) > MAX_BATCH:
        return json_error(413, "too_many_messages", f"at most {MAX_BATCH} messages per request")
    session = bridge.session(claims.session_id)
    live = session.conns.get(claims.client_id)
    if live is not None:
        live.last_rx = time.monotonic()
        params, headers = live.params, live.headers
    else:
        params = {k: v for k, v in request.query.items() if k not in RESERVED_PARAMS}
        headers = {
            name: request.headers[name]
            for name in cfg.upstream.forward_headers
            if name in request.headers
        }
    who = Identity(claims.client_id, claims.session_id, claims.user_id, params, headers)
    collector = Collector(who, codec)
    acks: list[Any] = []
    for raw in batch:
        ack = await bridge.handle_message(collector, raw)
        if ack is not None:
            acks.append(ack)
    bridge.drop_if_idle(session)
    errors = [m for m in collector.sent if m.get("type") == "error"]
    answer: dict[str, Any] = {"acks": acks}
    if errors:
        answer["errors"] = errors
    limited = [
        x for x in acks + errors if (x.get("error") or x).get("code") == "rate_limited"
    ]  # fmt: skip
    resp = await encoded_response(
        request, cfg, reply_codec.encode(answer), reply_codec, count=bridge.count_wire("http"),
        status=429 if limited else 200,
    )  # fmt: skip
    if limited:
        resp.headers["Retry-After"] = "1"
    return resp
