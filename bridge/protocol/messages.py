"""Builders for bridge → client messages (see docs/protocol.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .types import Message


def ms(seconds: float) -> int:
    return int(round(seconds * 1000))


def welcome(
    *,
    client_id: str,
    resume_token: str,
    epoch: str,
    seq: int,
    resumed: bool,
    heartbeat: tuple[float, float],
    reconnect: dict[str, float],
    transports: list[str],
    context: Mapping[str, Any] | None = None,
) -> Message:
    """``context``: the values captured for the user from the app's answers
    (absent when there are none)."""
    interval, timeout = heartbeat
    msg: Message = {
        "type": "welcome",
        "clientId": client_id,
        "resumeToken": resume_token,
        "epoch": epoch,
        "seq": seq,
        "resumed": resumed,
        "heartbeat": {"interval_ms": ms(interval), "timeout_ms": ms(timeout)},
        "reconnect": {
            "initial_ms": ms(reconnect["initial"]),
            "max_ms": ms(reconnect["max"]),
            "factor": reconnect["factor"],
            "jitter": reconnect["jitter"],
            "upgrade_interval_ms": ms(reconnect["upgrade_interval"]),
        },
        "transports": transports,
    }
    if context:
        msg["context"] = dict(context)
    return msg


def ack_ok(command_id: str) -> Message:
    return {"type": "ack", "id": command_id, "status": "ok"}


def ack_error(command_id: str, code: str, message: str) -> Message:
    return {
        "type": "ack",
        "id": command_id,
        "status": "error",
        "error": {"code": code, "message": message},
    }


def error(code: str, message: str, command_id: str | None = None) -> Message:
    out: Message = {"type": "error", "code": code, "message": message}
    if command_id is not None:
        out["id"] = command_id
    return out


def failure(code: str, message: str, command_id: str | None) -> Message:
    """An ``ack`` with the error when the message had an id, else an ``error``."""
    if command_id is not None:
        return ack_error(command_id, code, message)
    return error(code, message)


def ping(ts: int) -> Message:
    return {"type": "ping", "ts": ts}


def heartbeat(ts: int) -> Message:
    return {"type": "heartbeat", "ts": ts}


def reconnect(retry_after: float, reason: str) -> Message:
    return {"type": "reconnect", "retry_after_ms": ms(retry_after), "reason": reason}


def stream(type_: str, seq: int, payload: Any) -> Message:
    return {"type": type_, "seq": seq, "payload": payload}
