"""Server-to-client WebSocket frames built once and written to many sockets.

RFC 6455 §5.2: FIN + opcode, then the payload length in 7, 7+16 or 7+64 bits;
frames from a server are never masked (§5.1), so the same bytes are valid on
every connection that negotiated no extension.
"""

from __future__ import annotations

import struct

OP_TEXT = 0x1
OP_BINARY = 0x2

_LEN1 = struct.Struct("!BB").pack
_LEN2 = struct.Struct("!BBH").pack
_LEN3 = struct.Struct("!BBQ").pack


def frame(payload: bytes, opcode: int) -> bytes:
    """One final, unmasked, uncompressed frame carrying ``payload``."""
    first = 0x80 | opcode
    n = len(payload)
    if n < 126:
        header = _LEN1(first, n)
    elif n < 65536:
        header = _LEN2(first, 126, n)
    else:
        header = _LEN3(first, 127, n)
    return header + payload
