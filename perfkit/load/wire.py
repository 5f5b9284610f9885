"""Requests that differ per send, encoded cheaply from templates built once per level: the sequence
parameters (sequence_id, sequence_start, sequence_end) of sequence models, and for gRPC streaming
a request id and `triton_enable_empty_final_response`.

HTTP: the body is made by tritonclient (`perfkit.load.client.http_body`) once per input set and
start/end pair with a placeholder id, split around it, and joined with the real id per send (the
two length headers adjusted). gRPC: a protobuf message is a concatenation of its fields, so the
parameters are appended to the pre-encoded ModelInferRequest as map entries (field 4), and the id
as field 3 (a later occurrence of a field wins; sequence names are reserved, so no
--request-parameter can collide).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from perfkit.load.client import Array, grpc_request_bytes, http_body, http_head
from perfkit.load.spec import TargetSpec

_PLACEHOLDER = 987654321987654321
_ID_KEY = b'"sequence_id":'
_PLACEHOLDER_JSON = _ID_KEY + str(_PLACEHOLDER).encode()


def varint(n: int) -> bytes:
    """A protobuf base-128 varint (n >= 0; negative int64 as two's complement, 10 bytes)."""
    n &= (1 << 64) - 1
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def infer_parameter(name: str, value: bool | int | str) -> bytes:
    """One `parameters` map entry of ModelInferRequest (field 4): key, InferParameter."""
    if isinstance(value, bool):
        param = b"\x08" + varint(int(value))  # bool_param = 1
    elif isinstance(value, int):
        param = b"\x10" + varint(value)  # int64_param = 2
    else:
        param = _ld(3, value.encode())  # string_param = 3
    return _ld(4, _ld(1, name.encode()) + _ld(2, param))


def request_id_field(request_id: str) -> bytes:
    """ModelInferRequest.id (field 3)."""
    return _ld(3, request_id.encode())


_START = {
    False: infer_parameter("sequence_start", False),
    True: infer_parameter("sequence_start", True),
}
_END = {False: infer_parameter("sequence_end", False), True: infer_parameter("sequence_end", True)}


class GrpcSequenceRequests:
    """Serialized ModelInferRequests of every input set, with the sequence parameters per send."""

    def __init__(self, base: Sequence[bytes]) -> None:
        self.base = list(base)

    @classmethod
    def build(
        cls,
        target: TargetSpec,
        sets: Sequence[Mapping[str, Array]],
        *,
        shm: Mapping[str, tuple[str, int]] | None = None,
        out_shm: Mapping[str, tuple[str, int]] | None = None,
    ) -> GrpcSequenceRequests:
        return cls([grpc_request_bytes(target, s, shm=shm, out_shm=out_shm) for s in sets])

    def encode(self, index: int, seq_id: int, start: bool, end: bool) -> bytes:
        return self.base[index] + infer_parameter("sequence_id", seq_id) + _START[start] + _END[end]


class HttpSequenceRequests:
    """Complete HTTP/1.1 requests of every input set, with the sequence parameters per send.

    `extra_headers` (the -H headers, already formatted "Name: value\\r\\n") go after the request
    line, as `perfkit.load.transports.http1.with_headers` puts them.
    """

    def __init__(
        self,
        target: TargetSpec,
        sets: Sequence[Mapping[str, Array]],
        outputs: Sequence[str],
        *,
        shm: Mapping[str, tuple[str, int]] | None = None,
        out_shm: Mapping[str, tuple[str, int]] | None = None,
        extra_headers: bytes = b"",
    ) -> None:
        self.target = target
        self.extra = extra_headers
        # (set, start, end) -> (body before the id, body after it, JSON header size without id)
        self.parts: dict[tuple[int, bool, bool], tuple[bytes, bytes, int | None]] = {}
        for k, s in enumerate(sets):
            for start in (False, True):
                for end in (False, True):
                    body, json_size = http_body(
                        target, s, outputs, shm=shm, out_shm=out_shm,
                        sequence=(_PLACEHOLDER, start, end),
                    )  # fmt: skip
                    at = body.index(_PLACEHOLDER_JSON) + len(_ID_KEY)
                    pre, post = body[:at], body[at + len(str(_PLACEHOLDER)) :]
                    size = None if json_size is None else json_size - len(str(_PLACEHOLDER))
                    self.parts[(k, start, end)] = (pre, post, size)

    def encode(self, index: int, seq_id: int, start: bool, end: bool) -> bytes:
        pre, post, size = self.parts[(index, start, end)]
        sid = str(seq_id).encode()
        n = len(sid)
        head = http_head(self.target, None if size is None else size + n, len(pre) + n + len(post))
        if self.extra:
            line_end = head.index(b"\r\n") + 2
            head = head[:line_end] + self.extra + head[line_end:]
        return head + pre + sid + post


def format_headers(headers: Sequence[tuple[str, str]]) -> bytes:
    return "".join(f"{name}: {value}\r\n" for name, value in headers).encode("latin-1")


STREAM_SUFFIX = infer_parameter("triton_enable_empty_final_response", True)
"""What a streamed request carries besides its id: the parameter that makes Triton mark (and for a
decoupled model, when needed, send empty) final responses, which perf_analyzer always sets."""


# -- streamed responses (ModelStreamInferResponse), read without protobuf's runtime ------------

# Fields of ModelStreamInferResponse and ModelInferResponse (grpc_service.proto).
_ERROR_MESSAGE, _INFER_RESPONSE = 1, 2
_ID, _PARAMETERS, _OUTPUTS, _RAW_OUTPUTS = 3, 4, 5, 6
_FINAL = b"triton_final_response"


class WireError(ValueError):
    """A message that is not well-formed protobuf."""


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise WireError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        out |= (b & 0x7F) << shift
        if not b & 0x80:
            return out, pos
        shift += 7


def _fields(buf: bytes, pos: int, end: int) -> list[tuple[int, int, int, int]]:
    """(field number, wire type, value or start, end) of each field in buf[pos:end]; a
    length-delimited field's bytes are buf[start:end], never copied."""
    out = []
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wt = key >> 3, key & 7
        if wt == 0:
            v, pos = _varint(buf, pos, end)
            out.append((field, wt, v, pos))
        elif wt == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise WireError("a field runs past its message")
            out.append((field, wt, pos, pos + n))
            pos += n
        elif wt in (1, 5):
            pos += 8 if wt == 1 else 4
            if pos > end:
                raise WireError("a fixed-size field runs past its message")
        else:
            raise WireError(f"wire type {wt} is not supported")
    return out


def _final_flag(buf: bytes, start: int, end: int) -> bool | None:
    """A `parameters` map entry: True/False when it is triton_final_response, else None."""
    key: bytes | None = None
    value: bool | None = None
    for field, wt, a, b in _fields(buf, start, end):
        if field == 1 and wt == 2:
            key = buf[a:b]
        elif field == 2 and wt == 2:
            for f2, w2, v, _ in _fields(buf, a, b):
                if f2 == 1 and w2 == 0:  # bool_param
                    value = bool(v)
    return value if key == _FINAL else None


def stream_response(buf: bytes) -> tuple[str, str, bool | None, bool]:
    """A serialized ModelStreamInferResponse -> (error message, request id, the
    triton_final_response flag or None when absent, whether it carries outputs)."""
    error = ""
    rid = ""
    final: bool | None = None
    outputs = False
    for field, wt, a, b in _fields(buf, 0, len(buf)):
        if field == _ERROR_MESSAGE and wt == 2:
            error = buf[a:b].decode(errors="replace")
        elif field == _INFER_RESPONSE and wt == 2:
            for f2, w2, c, d in _fields(buf, a, b):
                if w2 != 2:
                    continue
                if f2 == _ID:
                    rid = buf[c:d].decode(errors="replace")
                elif f2 == _PARAMETERS:
                    flag = _final_flag(buf, c, d)
                    if flag is not None:
                        final = flag
                elif f2 in (_OUTPUTS, _RAW_OUTPUTS):
                    outputs = True
    return error, rid, final, outputs
