"""The transport seam: what a pool of connections owes the driver (`Pool`, `Slot`), the record it
appends timings to (`Timings`), the loop state it shares with the driver (`LoopState`), the one
completion path of every transport (`complete`) and the driver's clock (`Clock`).

Imports nothing of perfkit's: the transports and the driver both depend on this module.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from time import perf_counter_ns
from typing import Protocol

MAX_ERROR_MESSAGES = 20


class Timings:
    """Append-only record of a pool's requests (perf_counter ns), in completion order.

    A success appends intended (open loop only), sent and done, in this order: readers slice all
    three by len(done). `send_ns` / `recv_ns` sum the time spent writing requests and reading
    responses. `seq_ends`: done times of the answered requests that ended a sequence.
    `responses`: with streaming, the responses each answered request got (parallel to done).
    `seq_ids`: with a feed, each answered request's sequence id (parallel to done).
    `response_times`: with streaming, each answered request's response times (parallel to done).
    """

    __slots__ = (
        "done", "err_done", "err_msgs", "intended", "recv_ns", "response_times", "responses",
        "send_ns", "sent", "seq_ends", "seq_ids",
    )  # fmt: skip

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.done: list[int] = []
        self.intended: list[int] = []
        self.err_done: list[int] = []
        self.err_msgs: list[str] = []
        self.seq_ends: list[int] = []
        self.seq_ids: list[int] = []
        self.responses: list[int] = []
        self.response_times: list[list[int]] = []
        self.send_ns = 0
        self.recv_ns = 0

    def error(self, done: int, msg: str) -> None:
        self.err_done.append(done)
        if len(self.err_msgs) < MAX_ERROR_MESSAGES:
            self.err_msgs.append(msg)


class LoopState:
    """What the driver and a pool's slots share to keep the load going. Touched on the loop only."""

    __slots__ = ("dead", "feed", "free", "idle", "inflight", "left", "running", "seq", "waiting")

    def __init__(self) -> None:
        # Closed loop: slots re-send while running and left > 0; idle counts slots that stopped.
        self.running = False
        self.left = 0
        self.idle = 0
        self.inflight = 0
        # Connections (or, for grpcio, UNAVAILABLE answers) lost.
        self.dead = 0
        # Rotates over the input sets when there are several.
        self.seq = 0
        # Open loop: slots with nothing in flight.
        self.free: list[Slot] = []
        # Open loop: intended send times waiting for a free slot (in-flight cap reached); they
        # are sent, late, as slots free up, and their corrected latency includes the wait.
        self.waiting: deque[int] = deque()
        # Requests made per send (sequence models: `perfkit.load.sequences.SequenceFeed`);
        # None: the pool's pre-encoded requests, rotated.
        self.feed: Feed | None = None


class Feed(Protocol):
    """A source of requests made per send, each with a ticket given back when it is answered."""

    def ready(self) -> bool:
        """Whether `take` has a request that may be sent now."""

    def take(self) -> tuple[bytes, int]:
        """The next request's wire bytes (HTTP: the whole request; gRPC: the serialized
        ModelInferRequest) and its ticket."""

    def give_back(self, ticket: int) -> tuple[int, bool]:
        """The request of `ticket` was answered or failed: its sequence id, and whether it
        ended its sequence."""

    def close_all(self) -> int:
        """Make `take` give the requests that end what is in progress; returns how many."""


class Slot(Protocol):
    """Carries one request at a time: an HTTP/1.1 connection, a stream of an HTTP/2 connection,
    a grpcio call."""

    timings: Timings
    state: LoopState
    closed_loop: bool
    # A lost slot sends nothing more (its requests are counted as errors).
    lost: bool

    def fire(self, intended: int = 0) -> None:
        """Send a request (open loop: scheduled for `intended`); counts it in flight."""

    def resend(self, now: int) -> None:
        """Closed loop: send the next request at once; it stays counted in flight."""


def complete(
    slot: Slot, sent: int, intended: int, done: int, error: str | None, ticket: int = -1
) -> None:
    """The one completion path: record the answer, then keep the load going.

    Closed loop re-sends on the same slot while the level runs (no task, no future); open loop
    hands the slot to the oldest send waiting for one, or back to the free list. A request from
    the state's feed gives its `ticket` back first (its sequence may take the next send).
    """
    tm = slot.timings
    st = slot.state
    feed = st.feed
    if feed is not None:
        seq_id, ended = feed.give_back(ticket)
        if error is None:
            tm.seq_ids.append(seq_id)
            if ended:
                tm.seq_ends.append(done)
    if error is None:
        if not slot.closed_loop:
            tm.intended.append(intended)
        tm.sent.append(sent)
        tm.done.append(done)
    else:
        tm.error(done, error)
    if slot.closed_loop:
        if st.running and st.left > 0 and not slot.lost:
            st.left -= 1
            slot.resend(done)
            return
        st.inflight -= 1
        st.idle += 1
        return
    st.inflight -= 1
    if st.waiting and st.running and not slot.lost and (feed is None or feed.ready()):
        slot.fire(st.waiting.popleft())
    else:
        st.free.append(slot)


def start_closed(st: LoopState, slots: Iterable[Slot]) -> None:
    """Closed loop: one request on every usable slot (each re-sends on completion)."""
    st.idle = 0
    for s in slots:
        if st.running and st.left > 0 and not s.lost:
            st.left -= 1
            s.fire()
        else:
            st.idle += 1


class Pool(Protocol):
    """Connections to one server that send pre-encoded requests and record their timings."""

    timings: Timings
    state: LoopState
    # Open loop: connections being opened for sends that found no free slot.
    connecting: int

    async def open(self, n: int) -> None:
        """Make `n` slots ready (open loop: put them on the free list)."""

    def start_closed(self) -> None:
        """Closed loop: start one request on every slot."""

    def slot_count(self) -> int: ...

    def alive(self) -> bool:
        """False once every connection is lost."""

    async def fire_new(self, intended: int) -> None:
        """Open loop with no free slot under the in-flight cap: add a slot and send on it."""

    async def close(self) -> None: ...


class Clock(Protocol):
    """The driver's time: perf_counter ns, and sleeping on the running loop."""

    def now(self) -> int: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """perf_counter_ns and asyncio.sleep."""

    now = staticmethod(perf_counter_ns)
    sleep = staticmethod(asyncio.sleep)


SYSTEM_CLOCK = SystemClock()
