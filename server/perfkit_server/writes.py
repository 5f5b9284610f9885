"""Replies written once per event-loop iteration, not one syscall each as they are made.

A loop iteration handles every socket that became readable; each reply it makes is only queued
on its connection, and one callback at the end of the iteration writes each connection's queue
with a single writev (Redis writes its replies the same way, just before it sleeps). On loopback
most of a write's cost is waking the reader: writing a burst of replies together wakes a client
once instead of once per reply, which more than halves the server's kernel time per request
under load. At concurrency 1 a reply waits for nothing but the end of its own iteration.
"""

from __future__ import annotations

import asyncio

# Writes queued on one connection before they go to the transport within the iteration.
MAX_QUEUED = 1024


def pause_reading(transport: asyncio.Transport | None, reasons: int, why: int) -> int:
    """Add `why` (a bit) to the reasons a connection is not read; the first one pauses reading.
    Returns the new reasons."""
    if not reasons and transport is not None and not transport.is_closing():
        transport.pause_reading()
    return reasons | why


def resume_reading(transport: asyncio.Transport | None, reasons: int, why: int) -> int:
    """Drop `why` from the reasons; reading resumes only when none is left (so the end of one
    reason never undoes another's pause). Returns the new reasons."""
    if not reasons & why:
        return reasons
    reasons &= ~why
    if not reasons and transport is not None and not transport.is_closing():
        transport.resume_reading()
    return reasons


class Output:
    """One connection's queued writes; `close_after` closes it once they are written."""

    __slots__ = ("_batch", "_chunks", "_transport", "close_after")

    def __init__(self, batch: WriteBatch, transport: asyncio.Transport) -> None:
        self._batch = batch
        self._transport: asyncio.Transport | None = transport
        self._chunks: list[bytes] = []
        self.close_after = False

    def write(self, data: bytes) -> None:
        """Queue `data` for the end of this loop iteration."""
        if not self._chunks:
            self._batch.add(self)
        elif len(self._chunks) >= MAX_QUEUED:
            # uvloop reads a socket up to 32 times before the loop runs callbacks: hand a long
            # queue to the transport now, so its pause_writing (back-pressure) can stop reading.
            self.flush()
        self._chunks.append(data)

    def flush(self) -> None:
        """Write what is queued now (one writev), then close if asked."""
        chunks, self._chunks = self._chunks, []
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if chunks:
            transport.writelines(chunks)
        if self.close_after:
            transport.close()

    def close(self) -> None:
        """Write what is queued, then close the transport."""
        self.close_after = True
        self.flush()

    def lost(self) -> None:
        """The connection is gone: drop what is queued."""
        self._transport = None
        self._chunks = []


class WriteBatch:
    """A server's connections with queued writes; flushed by one callback per loop iteration."""

    def __init__(self) -> None:
        self._waiting: list[Output] = []

    def add(self, output: Output) -> None:
        if not self._waiting:
            asyncio.get_running_loop().call_soon(self.flush)
        self._waiting.append(output)

    def flush(self) -> None:
        waiting, self._waiting = self._waiting, []
        for output in waiting:
            output.flush()
