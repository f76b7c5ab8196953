"""HTTP plumbing shared by the SSE, poll and messages endpoints.

Request bodies: :func:`read_body` inflates ``Content-Encoding: gzip``/``deflate``
itself and stops at ``limits.max_message_bytes`` + 1 *decoded* bytes, so a
gzip bomb costs the bridge no more than the cap before it answers 413; what
the client still sends is drained without being inflated.

Responses: JSON or msgpack by ``Accept``; gzip when ``Accept-Encoding``
allows it and the body is at least ``codecs.gzip_min_bytes``.
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..config import Config
from ..exceptions import BodyTooBig, BodyUnreadable, UnsupportedEncoding
from ..protocol.codecs import JSON, MSGPACK, Codec, codec_for_media_type
from ..protocol.headers import accepts_coding

#: Above this, gzip runs in a worker thread instead of the event loop.
GZIP_IN_THREAD_BYTES = 256 * 1024


def accept_codec(request: web.Request, cfg: Config) -> Codec | None:
    """The response codec the client accepts (JSON when it does not say); None: 406."""
    header = request.headers.get("Accept")
    if not header:
        return JSON
    for part in header.split(","):
        codec = codec_for_media_type(part)
        if codec is MSGPACK and not cfg.codecs.msgpack:
            continue
        if codec is not None:
            return codec
    return None


def body_codec(request: web.Request, cfg: Config) -> Codec | None:
    """The codec of the request body by ``Content-Type`` (JSON when absent)."""
    if not request.headers.get("Content-Type"):
        return JSON
    codec = codec_for_media_type(request.headers["Content-Type"])
    if codec is MSGPACK and not cfg.codecs.msgpack:
        return None
    return codec


def accepts_gzip(request: web.Request) -> bool:
    return accepts_coding(request.headers.get("Accept-Encoding"), "gzip")


async def encoded_response(
    request: web.Request,
    cfg: Config,
    body: bytes,
    codec: Codec,
    status: int = 200,
    count: Callable[[int, int], None] | None = None,
) -> web.Response:
    """The answer, gzipped when worth it; ``count(encoded, sent)`` gets its sizes."""
    encoded = len(body)
    headers = {
        "Content-Type": codec.content_type,
        "Cache-Control": "no-store",
        "Vary": "Accept, Accept-Encoding",
    }
    if len(body) >= cfg.codecs.gzip_min_bytes and accepts_gzip(request):
        if len(body) >= GZIP_IN_THREAD_BYTES:
            loop = asyncio.get_running_loop()
            body = await loop.run_in_executor(None, gzip.compress, body, 6)
        else:
            body = gzip.compress(body, 6)
        headers["Content-Encoding"] = "gzip"
    if count is not None:
        count(encoded, len(body))
    return web.Response(body=body, status=status, headers=headers)


def _decompressor(encoding: str) -> zlib._Decompress:
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(zlib.MAX_WBITS)
    raise UnsupportedEncoding(f"Content-Encoding {encoding!r} is not accepted (use gzip)")


async def read_body(request: web.Request, cap: int) -> bytes:
    """The decoded body, at most ``cap`` bytes. Raises BodyTooBig / BodyUnreadable.

    aiohttp's own decompression is off (``auto_decompress=False``, see make_app):
    a compressed body is inflated here, never more than ``cap`` + 1 bytes, and
    whatever is left unread is drained compressed, so a gzip bomb costs nothing.
    """
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    inflate = None if encoding in ("", "identity") else _decompressor(encoding)
    if inflate is None and request.content_length is not None and request.content_length > cap:
        raise BodyTooBig()
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            raw = await request.content.read(65536)
            if not raw:
                break
            if inflate is None:
                out = raw
            else:
                out = inflate.decompress(raw, cap + 1 - size)
                if inflate.unconsumed_tail:
                    raise BodyTooBig()
            chunks.append(out)
            size += len(out)
            if size > cap:
                raise BodyTooBig()
        if inflate is not None:
            tail = inflate.flush()
            size += len(tail)
            chunks.append(tail)
            if size > cap:
                raise BodyTooBig()
            if not inflate.eof:
                raise BodyUnreadable("the compressed body is truncated")
    except zlib.error as exc:
        raise BodyUnreadable(f"not valid {encoding}: {exc}") from None
    except (HttpProcessingError, web.RequestPayloadError, ValueError) as exc:
        raise BodyUnreadable(str(exc) or type(exc).__name__) from None
    return b"".join(chunks)
