"""Sequences for sequence (stateful) models, as perf_analyzer schedules them (its SequenceManager
and context-id trackers). Pure: no I/O; the requests come from an encoder the session gives.

A sequence model keeps state per correlation id, so every request carries `sequence_id`, and the
first and last of a sequence carry `sequence_start` / `sequence_end`. perf_analyzer's rules:

- a slot of sequence state (a "status") starts a new sequence when it has no request left: a new
  id (the next of the id range, cycling; one still used by another status is skipped by keeping
  the status's old id) and a new length (the base length +/- the variation, at least 1; with JSON
  input data, the length of a data stream picked at random unless --sequence-length was given);
- concurrency mode: one status per concurrent slot, each used by one request at a time (a FIFO of
  idle statuses, so a sequence never has two requests in flight);
- request-rate mode: --num-of-sequences statuses; each send goes to one picked at random, or, with
  --serial-sequences, to the idle one waiting longest (a send waits while none is idle);
- at the end of a level every sequence in progress is ended with one more request.

`SequenceFeed` is the transports' request source (`perfkit.load.transports.base.Feed`): `take`
gives a request and a ticket, `give_back` returns the ticket when the answer (or error) arrives.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from perfkit.errors import ConfigError
from perfkit.load.spec import SequenceSpec

# encode(input set index, sequence id, start, end) -> the request's wire bytes.
Encode = Callable[[int, int, bool, bool], bytes]
# A ticket packs the sequence id, the status index (below 2**20 statuses) and the end flag.
_STATUS_BITS = 20
_STATUS_MASK = (1 << _STATUS_BITS) - 1
_ID_SHIFT = _STATUS_BITS + 1


def parse_sequence_id_range(text: str) -> tuple[int, int]:
    """perf_analyzer's --sequence-id-range `start[:end]` (end excluded) -> (start id, id range).

    No end: ids from start without bound (perf_analyzer's UINT32_MAX range); start 0 becomes 1.
    """
    parts = text.split(":")
    try:
        if len(parts) > 2:
            raise ValueError
        start = int(parts[0])
        end = int(parts[1]) if len(parts) == 2 else None
    except ValueError:
        raise ConfigError(
            f"--sequence-id-range: {text!r} does not match <start:end> (e.g. 1:1000)."
        ) from None
    if start < 0 or (end is not None and end < 0):
        raise ConfigError(f"--sequence-id-range: {text!r}: the range values must be >= 0.")
    if end is not None and start >= end:
        raise ConfigError(
            f"--sequence-id-range: {text!r}: the 'end' value must be greater than 'start' "
            "(end is excluded)."
        )
    start = start or 1
    return start, (end - start if end is not None else (1 << 32) - 1)


def varied_length(base: int, variation_pct: float, rng: random.Random) -> int:
    """perf_analyzer's GetRandomSequenceLength: base + a uniform offset within +/- variation
    percent of base, truncated toward zero; at least 1."""
    offset = int((2.0 * rng.random() - 1.0) * variation_pct / 100.0 * base)
    return max(1, base + offset)


class SequenceIds:
    """The ids of one generator process: the id range (or this worker's share of it), cycling.

    With --workers K, worker i uses the i-th of K equal parts of the range, so ids stay unique
    across processes.
    """

    def __init__(self, spec: SequenceSpec, worker: int = 0, workers: int = 1) -> None:
        share = spec.id_range // workers
        if share < 1:
            raise ConfigError(
                f"--sequence-id-range: {spec.id_range} ids cannot be shared by {workers} "
                "load-generator processes (--workers); widen the range."
            )
        self.start = spec.start_id + worker * share
        self.range = share
        self.counter = 0

    def next(self) -> int:
        sid = self.start + self.counter % self.range
        self.counter += 1
        return sid


@dataclass(slots=True)
class _Status:
    seq_id: int = 0
    remaining: int = 0
    length: int = 0
    stream: int = 0


class SequenceFeed:
    """Requests of `n` sequence statuses for one level (see the module docstring).

    Args:
        spec: the sequence settings.
        ids: the id source, shared by the levels of a run (ids keep increasing across levels).
        encode: builds a request's bytes.
        n: statuses: the concurrency (closed loop) or the sequences of this process (open loop).
        fifo: one request in flight per status, idle statuses taken oldest first (concurrency
            mode, and --serial-sequences); else each send picks a status at random.
        streams: the input sets of each data stream, in step order ((0,) for generated data).
        json_data: the inputs come from a JSON file: a new sequence picks a stream at random and
            is as long as it (unless `spec.length_specified`).
        seed: of the random choices (lengths, streams, statuses).
    """

    def __init__(
        self,
        spec: SequenceSpec,
        ids: SequenceIds,
        encode: Encode,
        n: int,
        *,
        fifo: bool,
        streams: Sequence[Sequence[int]] = ((0,),),
        json_data: bool = False,
        seed: int = 0,
    ) -> None:
        if not 1 <= n <= _STATUS_MASK:
            raise ValueError(f"sequence statuses: {n} must be between 1 and {_STATUS_MASK}")
        self.spec = spec
        self.ids = ids
        self.encode = encode
        self.fifo = fifo
        self.streams = [tuple(s) for s in streams] or [(0,)]
        self.json_data = json_data
        self.rng = random.Random(seed)
        self.statuses = [_Status() for _ in range(n)]
        self.idle: deque[int] = deque(range(n))
        # Statuses whose sequence is ended by the closing requests (`close_all`).
        self.closing: list[int] = []

    # -- the Feed protocol ---------------------------------------------------------------------

    def ready(self) -> bool:
        """Whether a request can be sent now (a FIFO feed needs an idle status)."""
        return bool(self.closing) or not self.fifo or bool(self.idle)

    def take(self) -> tuple[bytes, int]:
        """The next request and its ticket: its sequence id, status index and end flag packed
        (`give_back` unpacks them; a status may start its next sequence before the answer)."""
        if self.closing:
            i = self.closing.pop()
            if self.fifo and i in self.idle:
                self.idle.remove(i)
            self.statuses[i].remaining = 1
        elif self.fifo and self.idle:
            i = self.idle.popleft()
        else:
            # Random pick (request-rate mode without --serial-sequences); a FIFO feed gets here
            # only when a send raced past `ready` (a connection opened meanwhile).
            i = self.rng.randrange(len(self.statuses))
        st = self.statuses[i]
        start = st.remaining == 0
        if start:
            self._new_sequence(i)
        end = st.remaining == 1
        stream = self.streams[st.stream]
        step = (st.length - st.remaining) % len(stream)
        st.remaining -= 1
        ticket = (st.seq_id << _ID_SHIFT) | (i << 1) | int(end)
        return self.encode(stream[step], st.seq_id, start, end), ticket

    def give_back(self, ticket: int) -> tuple[int, bool]:
        """The request of `ticket` was answered (or failed): its sequence id, and whether it
        ended its sequence."""
        if ticket < 0:
            return 0, False
        if self.fifo:
            self.idle.append((ticket >> 1) & _STATUS_MASK)
        return ticket >> _ID_SHIFT, bool(ticket & 1)

    # -- sequences ------------------------------------------------------------------------------

    def _new_sequence(self, i: int) -> None:
        st = self.statuses[i]
        sid = self.ids.next()
        # An id still used by another status: keep this status's old one (perf_analyzer).
        if any(s.seq_id == sid and s.remaining for j, s in enumerate(self.statuses) if j != i):
            sid = st.seq_id or self.ids.next()
        st.seq_id = sid
        spec = self.spec
        if self.json_data:
            st.stream = self.rng.randrange(len(self.streams))
            st.length = (
                varied_length(spec.length, spec.variation_pct, self.rng)
                if spec.length_specified
                else len(self.streams[st.stream])
            )
        else:
            st.stream = 0
            st.length = varied_length(spec.length, spec.variation_pct, self.rng)
        st.remaining = st.length

    def close_all(self) -> int:
        """Prepare one ending request for every sequence in progress; returns how many."""
        self.closing = [i for i, s in enumerate(self.statuses) if s.remaining > 0]
        return len(self.closing)
