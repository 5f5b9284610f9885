"""gRPC message compression on the server's receive side: gzip and deflate, as gRPC specifies them.

A request says its encoding in the `grpc-encoding` header and marks each compressed message with
the prefix's compressed flag. Decompression is bounded by the server's message size limit: zlib
never produces more than the limit plus one byte, so a small message that inflates to gigabytes (a
"zip bomb") fails the call with RESOURCE_EXHAUSTED instead of filling memory. Answers go back
uncompressed (gRPC allows it: the response's own `grpc-encoding` is absent, identity).
"""

from __future__ import annotations

import zlib

# The encodings the server accepts, sent in `grpc-accept-encoding` on every response.
ACCEPT_ENCODING = b"identity,deflate,gzip"
# gRPC's "gzip" is RFC 1952 (gzip wrapper), its "deflate" RFC 1950 (zlib wrapper), as grpc-core.
_WBITS = {b"gzip": 16 + zlib.MAX_WBITS, b"deflate": zlib.MAX_WBITS}


class DecompressError(Exception):
    """A compressed message the server cannot take; `status` is the gRPC code to answer with."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_encoding(encoding: bytes) -> str | None:
    """None when a message compressed with `encoding` (a request's grpc-encoding) can be read,
    else the error message (gRPC's UNIMPLEMENTED for an encoding the server does not support,
    INTERNAL for the compressed flag without a grpc-encoding)."""
    if encoding in _WBITS:
        return None
    if encoding in (b"", b"identity"):
        return "a compressed message without a grpc-encoding header (identity)"
    name = encoding.decode("latin-1")
    return (
        f"Compression algorithm '{name}' is not supported "
        f"(grpc-accept-encoding: {ACCEPT_ENCODING.decode()})"
    )


def decompress(encoding: bytes, data: bytes, limit: int) -> bytes:
    """The message `data` inflated with `encoding` ("gzip" or "deflate"), at most `limit` bytes.

    Raises DecompressError: RESOURCE_EXHAUSTED past `limit`, INTERNAL for corrupt data.
    """
    d = zlib.decompressobj(_WBITS[encoding])
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as exc:
        raise DecompressError(
            "INTERNAL", f"cannot decompress the {encoding.decode()} message: {exc}"
        ) from None
    if len(out) > limit or d.unconsumed_tail:
        raise DecompressError(
            "RESOURCE_EXHAUSTED",
            f"Received message larger than max after decompression (over {limit} bytes)",
        )
    if not d.eof:
        raise DecompressError("INTERNAL", f"the {encoding.decode()} message is truncated")
    return out
