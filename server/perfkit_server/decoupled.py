"""Decoupled models: the responses of one request, handed from backend threads to the event loop.

A decoupled model (`model_transaction_policy { decoupled: true }`) sends any number of responses
per request, from any thread, during or after its `execute_decoupled` call; the request is
complete once a response flagged FINAL was sent (with or without outputs). `ResponseStream` is
the hand-off: the backend's `send` appends under a lock and wakes the loop with
call_soon_threadsafe only when the consumer waits; the consumer (`DataPlane.infer_stream`, on the
loop) takes the responses in the order they were sent.

Memory is bounded per request: at most `MAX_UNDELIVERED` responses wait for the consumer. Past it
a sender on a thread of its own is held until the consumer takes one (back-pressure: the model
produces no faster than the client reads, as a gRPC stream's flow control holds the server), and
a sender on the event loop, which must not block, fails the request with an error that says so. A
consumer that goes away (the client cancelled the stream) `close`s its stream: what was queued is
dropped, a held sender is let go, and later responses are discarded as they are sent.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from perfkit_server.backends.base import Array
from perfkit_server.errors import InferenceFailed, ServerError
from perfkit_server.stats import RequestTimes

# Responses of one request waiting for its consumer (see the module docstring).
MAX_UNDELIVERED = 128

Outputs = dict[str, Array]


@dataclass(slots=True)
class Response:
    """One response of a decoupled request, as the model sent it.

    `start_ns`..`end_ns` is the work behind this response (from the previous response, or from
    the start of the execution) for Triton's per-response statistics; `times` is set on the
    FINAL response only (the request's queue and compute times).
    """

    outputs: Outputs | None
    error: ServerError | None
    final: bool
    start_ns: int
    end_ns: int
    times: RequestTimes | None = None


class ResponseStream:
    """The responses of one decoupled request: any thread sends, one coroutine consumes.

    Iterate it with `async for` on the loop; iteration ends after the FINAL response.
    """

    def __init__(self, model: str, loop: asyncio.AbstractEventLoop) -> None:
        self._model = model
        self._loop = loop
        self._loop_thread = threading.get_ident()  # created on the loop
        self._cond = threading.Condition(threading.Lock())
        self._items: deque[Response] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._wake_scheduled = False
        self._final = False  # FINAL queued: the request is complete
        self._closed = False  # the consumer went away
        self._unbounded = False  # the model is unloading: senders are no longer held
        self._overflowed = False  # failed at the bound (sent from the loop): later sends dropped
        self.enqueue_ns = time.perf_counter_ns()
        self._start_ns = 0  # execution start (0: not started)
        self._last_ns = 0
        # The scheduler's future of the queued request: closing the stream cancels it.
        self.request: asyncio.Future[Any] | None = None
        # Whether its responses count in response_stats (the backend's `response_statistics`).
        self.report = False

    # -- producer side (any thread) ------------------------------------------------------------

    def started(self, start_ns: int) -> None:
        """The scheduler handed the request to an instance at `start_ns`."""
        with self._cond:
            self._start_ns = self._last_ns = start_ns

    def send(
        self,
        outputs: Outputs | None,
        error: BaseException | None,
        final: bool,
        *,
        force: bool = False,
    ) -> None:
        """Queue one response (thread-safe); see the module docstring for the bound (`force`:
        past it, for the scheduler's own error). A send after FINAL is the model's bug and
        raises; once the consumer is gone, sends are dropped."""
        err: ServerError | None = None
        if error is not None:
            err = (
                error
                if isinstance(error, ServerError)
                else InferenceFailed(f"model '{self._model}' failed to execute: {error}")
            )
        with self._cond:
            if self._closed or self._overflowed:
                return
            if self._final:
                raise RuntimeError(
                    f"model '{self._model}' sent a response after the FINAL one of its request"
                )
            while (
                not force
                and not self._unbounded
                and len(self._items) >= MAX_UNDELIVERED
                and not self._closed
            ):
                if threading.get_ident() == self._loop_thread:
                    # The loop cannot wait for itself: fail the request rather than grow.
                    outputs, final, self._overflowed = None, True, True
                    err = InferenceFailed(
                        f"model '{self._model}' sent more than {MAX_UNDELIVERED} responses that "
                        "the client has not read yet, from the event loop (where it cannot be "
                        "held back); send them from a thread of the model's own"
                    )
                    break
                self._cond.wait()
            if self._closed:
                return
            now = time.perf_counter_ns()
            start = self._last_ns or now
            times = None
            if final:
                self._final = True
                began = self._start_ns or now
                times = RequestTimes(max(0, began - self.enqueue_ns), 0, now - began, 0)
            self._items.append(Response(outputs, err, final, start, now, times))
            self._last_ns = now
            wake = self._waiter is not None and not self._wake_scheduled
            if wake:
                self._wake_scheduled = True
        if wake:
            try:
                self._loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop is closed (the server stopped): nobody reads
                pass

    def fail(self, error: ServerError) -> None:
        """End the request with `error` unless it is complete already (thread-safe)."""
        with self._cond:
            if self._final or self._closed:
                return
        try:
            self.send(None, error, True, force=True)
        except RuntimeError:  # FINAL raced in between: the request is complete
            pass

    def unhold(self) -> None:
        """Stop holding senders at the bound (the model is unloading and must finish)."""
        with self._cond:
            self._unbounded = True
            self._cond.notify_all()

    # -- consumer side (the loop) --------------------------------------------------------------

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> Response:
        while True:
            with self._cond:
                if self._items:
                    item = self._items.popleft()
                    self._cond.notify()
                    return item
                if self._final or self._closed:
                    raise StopAsyncIteration
                waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def close(self) -> None:
        """The consumer is gone: drop what is queued and let a held sender go."""
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()
            waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.request is not None and not self.request.done():
            self.request.cancel()  # still queued: it never runs

    @property
    def undelivered(self) -> int:
        """Responses waiting for the consumer."""
        with self._cond:
            return len(self._items)

    def _wake(self) -> None:
        with self._cond:
            self._wake_scheduled = False
            waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.request is not None and not self.request.done():
            self.request.cancel()  # still queued: it never runs


def send_to(streams: list[ResponseStream]) -> Any:
    """The `send(index, outputs, error, final)` callable a backend's execute_decoupled gets."""

    def send(index: int, outputs: Outputs | None, error: BaseException | None, final: bool) -> None:
        if not 0 <= index < len(streams):
            raise IndexError(
                f"response for request {index}: the execution has {len(streams)} requests"
            )
        streams[index].send(outputs, error, final)

    return send
