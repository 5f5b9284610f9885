"""The framed protocol between perfkit_server and a python-backend stub process (one per instance).

A frame is a JSON header plus raw buffers, written with one scatter-gather `sendmsg` and read into
buffers allocated at their exact size: a numpy tensor crosses as its bytes with its dtype and shape
(one kernel copy each way, no pickling), a BYTES tensor as Triton's length-prefixed serialization.
Nothing is pickled, so a stub (which runs a model's own code) can send the server only data.

Every size a peer announces is checked against the caps below before anything is allocated, so a
broken or hostile peer costs at most one frame of MAX_FRAME_BYTES. Imported by the stub process
too: stdlib and numpy only.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from perfkit_server.errors import InvalidInput
from perfkit_server.types import deserialize_bytes, serialize_bytes

Array = npt.NDArray[Any]
Header = dict[str, Any]

MAX_HEADER_BYTES = 16 << 20
MAX_FRAME_BYTES = 1 << 30  # the tensors of one message (a batch of requests or of responses)
MAX_BUFFERS = 1 << 16
_MAGIC = b"PKPY"
_PREFIX = struct.Struct("<4sII")  # magic, header length, buffer count
_IOV_MAX = 512  # buffers per sendmsg call (Linux allows 1024)
BYTES = "BYTES"
# The numpy dtypes a tensor may cross as (native byte order); BYTES travels serialized.
_DTYPES = {
    np.dtype(t).str: np.dtype(t)
    for t in (
        np.bool_, np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32,
        np.int64, np.float16, np.float32, np.float64,
    )
}  # fmt: skip


class ProtocolError(Exception):
    """A frame broke the protocol or a cap; the channel cannot be trusted any more."""


class Closed(ProtocolError):
    """The peer closed its end (it exited, or the server closed the instance)."""


class Channel:
    """One end of the stub socket: `send` from any thread (serialized), `recv` from one thread."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._wlock = threading.Lock()

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def send(self, header: Header, buffers: Sequence[Any] = ()) -> None:
        """Write one frame (raises Closed when the peer is gone)."""
        head = json.dumps(header, separators=(",", ":")).encode()
        views = [memoryview(b).cast("B") for b in buffers]
        if len(head) > MAX_HEADER_BYTES or len(views) > MAX_BUFFERS:
            raise ProtocolError(
                f"message header of {len(head)} bytes or {len(views)} tensors is over the "
                f"limits ({MAX_HEADER_BYTES} bytes, {MAX_BUFFERS} tensors)"
            )
        total = sum(v.nbytes for v in views)
        if total > MAX_FRAME_BYTES:
            raise ProtocolError(
                f"tensors of {total} bytes in one message are over the {MAX_FRAME_BYTES}-byte "
                "limit between the server and a python model"
            )
        prefix = _PREFIX.pack(_MAGIC, len(head), len(views))
        sizes = struct.pack(f"<{len(views)}Q", *(v.nbytes for v in views))
        parts = [memoryview(prefix), memoryview(sizes), memoryview(head), *views]
        with self._wlock:
            try:
                _sendall(self._sock, [p for p in parts if p.nbytes])
            except OSError as exc:
                raise Closed(f"the other process closed the channel ({exc})") from None

    def recv(self) -> tuple[Header, list[bytearray]]:
        """Read one frame: (header, buffers). Raises Closed at end of stream."""
        magic, head_len, count = _PREFIX.unpack(self._read(_PREFIX.size))
        if magic != _MAGIC:
            raise ProtocolError(f"bad frame magic {magic!r}")
        if head_len > MAX_HEADER_BYTES or count > MAX_BUFFERS:
            raise ProtocolError(
                f"frame announces a {head_len}-byte header and {count} buffers, over the limits "
                f"({MAX_HEADER_BYTES} bytes, {MAX_BUFFERS} buffers)"
            )
        sizes = struct.unpack(f"<{count}Q", self._read(8 * count)) if count else ()
        if sum(sizes) > MAX_FRAME_BYTES:
            raise ProtocolError(
                f"frame announces {sum(sizes)} bytes of tensors, over the {MAX_FRAME_BYTES}-byte "
                "limit"
            )
        try:
            header = json.loads(self._read(head_len))
        except ValueError as exc:
            raise ProtocolError(f"frame header is not JSON: {exc}") from None
        if not isinstance(header, dict):
            raise ProtocolError("frame header is not a JSON object")
        return header, [self._read(n) for n in sizes]

    def _read(self, n: int) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            try:
                k = self._sock.recv_into(view[got:])
            except OSError as exc:
                raise Closed(f"the channel failed ({exc})") from None
            if k == 0:
                raise Closed("the other process closed the channel")
            got += k
        return buf


def _sendall(sock: socket.socket, parts: list[memoryview]) -> None:
    while parts:
        sent = sock.sendmsg(parts[:_IOV_MAX])
        while parts and sent >= parts[0].nbytes:
            sent -= parts[0].nbytes
            parts.pop(0)
        if sent:
            parts[0] = parts[0][sent:]


def encode_tensors(tensors: Iterable[tuple[str, Array]], buffers: list[Any]) -> list[Header]:
    """Descriptors of `tensors` for a header; their bytes are appended to `buffers`."""
    out: list[Header] = []
    for name, array in tensors:
        if array.dtype.kind in "OSU":
            dtype = BYTES
            data: Any = serialize_bytes(array)
        else:
            native = array.dtype.newbyteorder("=")
            if native.str not in _DTYPES:
                raise TypeError(f"tensor '{name}' has unsupported dtype {array.dtype}")
            # As flat bytes (a 0-d or bool array too), without a copy when already contiguous.
            data = np.ascontiguousarray(array, dtype=native).reshape(-1).view(np.uint8)
            dtype = native.str
        out.append({"name": name, "dtype": dtype, "shape": list(array.shape), "buf": len(buffers)})
        buffers.append(data)
    return out


def decode_tensors(descs: Any, buffers: list[bytearray]) -> list[tuple[str, Array]]:
    """The tensors a header describes, as arrays over the received buffers (no copy)."""
    if not isinstance(descs, list):
        raise ProtocolError("tensor list is not a JSON list")
    out: list[tuple[str, Array]] = []
    for d in descs:
        try:
            name, dtype, shape, index = str(d["name"]), d["dtype"], d["shape"], int(d["buf"])
            dims = tuple(int(x) for x in shape)
            buf = buffers[index]
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ProtocolError(f"bad tensor descriptor {d!r}: {exc}") from None
        if any(x < 0 for x in dims):
            raise ProtocolError(f"tensor '{name}' has a negative dimension {list(dims)}")
        count = 1
        for x in dims:
            count *= x
        if dtype == BYTES:
            try:
                array = deserialize_bytes(name, buf, count).reshape(dims)
            except InvalidInput as exc:  # the same checks as a client's BYTES input
                raise ProtocolError(f"tensor '{name}': {exc}") from None
        else:
            np_dtype = _DTYPES.get(dtype)
            if np_dtype is None:
                raise ProtocolError(f"tensor '{name}' has unsupported dtype {dtype!r}")
            if count * np_dtype.itemsize != len(buf):
                raise ProtocolError(
                    f"tensor '{name}': {len(buf)} bytes do not hold shape {list(dims)} of {dtype}"
                )
            array = np.frombuffer(buf, dtype=np_dtype).reshape(dims)
        out.append((name, array))
    return out
