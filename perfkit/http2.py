"""HTTP/2 (RFC 9113) and HPACK (RFC 7541) wire constants and encoders, for perfkit's lean gRPC
client (`perfkit.load.transports.h2`) and perfkit_server's gRPC server. Pure: no I/O, stdlib
only."""

from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Frame types.
DATA, HEADERS, PRIORITY_FRAME, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
# Frame flags (END_STREAM and ACK share a bit on different frame types).
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY = 0x4, 0x8, 0x20
# SETTINGS identifiers.
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = (
    0x3,
    0x4,
    0x5,
)
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6
MAX_WINDOW = (1 << 31) - 1
DEFAULT_WINDOW = 65535

FRAME = struct.Struct(">HBBBI")  # length (24 bit: H + B), type, flags, stream id
U32 = struct.Struct(">I")
SETTING = struct.Struct(">HI")


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    """One frame: the 9-byte header, then `payload`."""
    n = len(payload)
    return FRAME.pack(n >> 8, n & 0xFF, ftype, flags, sid) + payload


def hpack_string(s: bytes) -> bytes:
    """An HPACK string literal without Huffman coding: a 7-bit-prefix length, then the bytes."""
    n = len(s)
    if n < 127:
        return bytes([n]) + s
    out = bytearray([127])
    n -= 127
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + s


def hpack_literal(name: bytes, value: bytes) -> bytes:
    """A header field as a literal without indexing, with a new name (no encoder state)."""
    return b"\x00" + hpack_string(name) + hpack_string(value)
