"""The grpcio fallback transport (`--grpc-client grpcio`): unary ModelInfer calls with pre-encoded
bytes on one grpc channel, through grpc's sync API (futures and done-callbacks).

grpc runs done-callbacks on its own polling thread. That thread only takes the completion time
and hands the call back to the loop (`call_soon_threadsafe`): every change of the loop state, the
re-send included, happens on the loop, so nothing here needs a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from time import perf_counter_ns
from typing import Any

from perfkit.load.transports.base import LoopState, Timings, complete, start_closed

METHOD = "/inference.GRPCInferenceService/ModelInfer"


class GrpcSlot:
    """One in-flight call slot on the pool's shared channel."""

    __slots__ = (
        "closed_loop", "intended", "loop", "mc", "reqs", "sent", "state", "ticket", "timings",
    )  # fmt: skip

    # A channel reconnects by itself: a slot is never lost (UNAVAILABLE answers count as dead).
    lost = False

    def __init__(
        self,
        timings: Timings,
        state: LoopState,
        loop: asyncio.AbstractEventLoop,
        mc: Any,
        reqs: Sequence[bytes],
        closed_loop: bool,
    ) -> None:
        self.timings = timings
        self.state = state
        self.loop = loop
        self.mc = mc
        self.reqs = reqs
        self.closed_loop = closed_loop
        self.sent = 0
        self.intended = 0
        self.ticket = -1

    def fire(self, intended: int = 0) -> None:
        self.intended = intended
        self.state.inflight += 1
        self.resend(0)

    def resend(self, now: int) -> None:
        reqs = self.reqs
        feed = self.state.feed
        if feed is not None:
            req, self.ticket = feed.take()
        elif len(reqs) > 1:
            st = self.state
            st.seq += 1
            req = reqs[st.seq % len(reqs)]
        else:
            req = reqs[0]
        s = perf_counter_ns()
        self.sent = s
        f = self.mc.future(req)
        self.timings.send_ns += perf_counter_ns() - s
        f.add_done_callback(self._answered)

    def _answered(self, f: Any) -> None:
        """On grpc's thread (or the loop's, if the call was already done): hop onto the loop."""
        d = perf_counter_ns()
        # A call cancelled by `close` may answer after its loop is closed: the level is over.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._done, f, d)

    def _done(self, f: Any, d: int) -> None:
        exc = f.exception()
        error = None
        if exc is not None:
            details = exc.details() if hasattr(exc, "details") else str(exc)
            code = exc.code().name if hasattr(exc, "code") else "ERROR"
            error = f"gRPC {code}: {details}"
            if code == "UNAVAILABLE":
                self.state.dead += 1
        complete(self, self.sent, self.intended, d, error, self.ticket)


class _WithMetadata:
    """A unary-unary callable whose calls carry `metadata` (the -H headers)."""

    __slots__ = ("_mc", "_metadata")

    def __init__(self, mc: Any, metadata: tuple[tuple[str, str], ...]) -> None:
        self._mc = mc
        self._metadata = metadata

    def future(self, req: bytes) -> Any:
        return self._mc.future(req, metadata=self._metadata)


class GrpcPool:
    """A grpc channel with `n` call slots (one channel; grpc multiplexes the streams).

    `tls`: grpc channel credentials (a secure channel); `metadata` goes with every call.
    """

    def __init__(
        self,
        url: str,
        reqs: Sequence[bytes],
        closed_loop: bool,
        compression: str = "none",
        *,
        tls: Any = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        import grpc

        self.timings = Timings()
        self.state = LoopState()
        self.reqs = reqs
        self.closed_loop = closed_loop
        opts = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        algo = {"gzip": grpc.Compression.Gzip, "deflate": grpc.Compression.Deflate}
        if tls is None:
            self.channel = grpc.insecure_channel(
                url, options=opts, compression=algo.get(compression)
            )
        else:
            self.channel = grpc.secure_channel(
                url, tls, options=opts, compression=algo.get(compression)
            )
        self.mc = self.channel.unary_unary(
            METHOD, request_serializer=None, response_deserializer=None
        )
        if metadata:
            self.mc = _WithMetadata(self.mc, tuple(metadata))
        self.slots: list[GrpcSlot] = []
        self.connecting = 0

    def _slot(self) -> GrpcSlot:
        loop = asyncio.get_running_loop()
        s = GrpcSlot(self.timings, self.state, loop, self.mc, self.reqs, self.closed_loop)
        self.slots.append(s)
        return s

    async def open(self, n: int) -> None:
        while len(self.slots) < n:
            s = self._slot()
            if not self.closed_loop:
                self.state.free.append(s)

    def start_closed(self) -> None:
        start_closed(self.state, self.slots)

    def slot_count(self) -> int:
        return len(self.slots)

    def alive(self) -> bool:
        return self.state.dead < max(1, len(self.slots))

    async def fire_new(self, intended: int) -> None:
        self._slot().fire(intended)

    async def close(self) -> None:
        self.state.free.clear()
        self.channel.close()
