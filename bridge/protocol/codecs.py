"""Codecs: bytes ⇄ message maps. ``decode`` never raises; it returns BadMessage.

Codecs only format; transports write (see frames.py for WebSocket framing).
"""

from __future__ import annotations

import json
from typing import Any, Final, Protocol

import msgpack

from ..exceptions import BadMessage
from .types import Message

_json_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class Codec(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def content_type(self) -> str: ...

    @property
    def binary(self) -> bool: ...

    def encode(self, message: Any) -> bytes: ...

    def decode(self, data: bytes | str) -> Message | BadMessage: ...


class JsonCodec:
    """UTF-8 JSON, compact. WebSocket text frames; ``application/json``."""

    name = "json"
    content_type = "application/json"
    binary = False

    def encode(self, message: Any) -> bytes:
        return _json_encoder.encode(message).encode("utf-8")

    def decode(self, data: bytes | str) -> Message | BadMessage:
        try:
            text = data.decode("utf-8") if isinstance(data, bytes) else data
        except UnicodeDecodeError:
            return BadMessage("not valid UTF-8")
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            return BadMessage("not valid JSON")
        if not isinstance(value, dict):
            return BadMessage("a message must be a JSON object")
        return value


class MsgpackCodec:
    """msgpack maps. WebSocket binary frames; ``application/msgpack``."""

    name = "msgpack"
    content_type = "application/msgpack"
    binary = True

    def encode(self, message: Any) -> bytes:
        data: bytes = msgpack.packb(message, use_bin_type=True)
        return data

    def decode(self, data: bytes | str) -> Message | BadMessage:
        if isinstance(data, str):
            return BadMessage("msgpack messages must be binary")
        try:
            value = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except Exception:  # msgpack raises many types (ExtraData, ValueError, ...)
            return BadMessage("not valid msgpack")
        if not isinstance(value, dict):
            return BadMessage("a message must be a msgpack map")
        return value


JSON: Final[Codec] = JsonCodec()
MSGPACK: Final[Codec] = MsgpackCodec()
CODECS: Final[dict[str, Codec]] = {"json": JSON, "msgpack": MSGPACK}
SUBPROTOCOLS: Final[dict[str, Codec]] = {"bridge.v1.json": JSON, "bridge.v1.msgpack": MSGPACK}


def decode_batch(codec: Codec, data: bytes | str) -> list[Any] | BadMessage:
    """A body holding one message (a map) or an array of them.

    Items are returned as decoded, maps or not: normalise each one (a non-map
    item becomes that item's ``bad_message``, not the whole batch's).
    """
    if codec.binary:
        if isinstance(data, str):
            return BadMessage("msgpack bodies must be binary")
        try:
            value = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except Exception:
            return BadMessage("not valid msgpack")
    else:
        try:
            text = data.decode("utf-8") if isinstance(data, bytes) else data
            value = json.loads(text)
        except UnicodeDecodeError:
            return BadMessage("not valid UTF-8")
        except (ValueError, RecursionError):
            return BadMessage("not valid JSON")
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return value
    return BadMessage("the body must be a message or an array of messages")


def encode_batch(codec: Codec, items: list[bytes], cursor: int) -> bytes:
    """``{"messages": [...], "cursor": N}`` from messages already encoded with ``codec``.

    Stream messages are encoded once per codec and cached; this only joins them.
    """
    if codec.binary:
        packer = msgpack.Packer(use_bin_type=True)
        return b"".join(
            (
                packer.pack_map_header(2),
                packer.pack("messages"),
                packer.pack_array_header(len(items)),
                *items,
                packer.pack("cursor"),
                packer.pack(cursor),
            )
        )
    return b'{"messages":[' + b",".join(items) + b'],"cursor":%d}' % cursor


def codec_for_media_type(value: str | None) -> Codec | None:
    """The codec named by a Content-Type or one Accept entry (None: not ours)."""
    if not value:
        return None
    media = value.split(";", 1)[0].strip().lower()
    if media in ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack"):
        return MSGPACK
    if media in ("application/json", "text/json", "*/*", "application/*"):
        return JSON
    return None
