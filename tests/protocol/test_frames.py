"""RFC 6455 §5.2 server frames: FIN, opcode, unmasked, length in 7, 7+16 or 7+64 bits."""

import struct

import pytest

from bridge.protocol.frames import OP_BINARY, OP_TEXT, frame


def test_opcodes():
    assert (OP_TEXT, OP_BINARY) == (0x1, 0x2)


@pytest.mark.parametrize(
    ("n", "header"),
    [
        (0, b"\x81\x00"),
        (1, b"\x81\x01"),
        (125, b"\x81\x7d"),  # the largest 7-bit length
        (126, b"\x81\x7e\x00\x7e"),  # 126 and up: 16-bit length
        (65535, b"\x81\x7e\xff\xff"),
        (65536, b"\x81\x7f" + struct.pack("!Q", 65536)),  # 64-bit length
        (70000, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x11\x70"),
    ],
)
def test_length_encodings_at_their_boundaries(n, header):
    payload = bytes(i % 251 for i in range(n))
    out = frame(payload, OP_TEXT)
    assert out[: len(header)] == header
    assert out[len(header) :] == payload
    assert len(out) == len(header) + n


def test_binary_frames_and_the_fin_bit():
    assert frame(b"\x00\xff", OP_BINARY) == b"\x82\x02\x00\xff"
    assert frame(b"hi", OP_TEXT)[0] & 0x80  # final
    assert not frame(b"hi", OP_TEXT)[1] & 0x80  # unmasked
