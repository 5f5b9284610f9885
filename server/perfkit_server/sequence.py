"""Triton's sequence batcher: a stateful model's requests, routed by sequence to batch slots.

Each instance has `slots` sequence slots (Direct: max(1, max_batch_size); Oldest:
max_candidate_sequences). A START request takes the free slot with the lowest index (any instance);
without one, its sequence waits in the backlog (bounded here: MAX_BACKLOG_SEQUENCES) until a
sequence ends or is released. Requests of a sequence run one at a time, in arrival order, on its
slot's instance, and each row the backend sees carries the control inputs (START, END, READY,
CORRID) and the implicit state of its sequence.

- Direct: one batch per instance at a time, row i = slot i, up to the highest slot with a request;
  a slot with nothing to run is a padding row (zeros shaped like a real row, READY false, START and
  END false, CORRID 0, a copy of a real row's state) whose outputs are dropped. The batch waits up
  to direct.max_queue_delay_microseconds for minimum_slot_utilization (when both are > 0).
- Oldest: one request per sequence in flight; an instance's dynamic batcher takes the oldest of
  its candidate sequences' next requests, up to the largest preferred_batch_size (max_batch_size
  without one), waiting up to oldest.max_queue_delay_microseconds for more. No padding rows.
  Each instance runs one batch at a time, so its responses come in batch order whether or not
  preserve_ordering is set.
- A sequence that sends nothing for max_sequence_idle_microseconds is released: the requests it
  already queued still run, then its slot is freed and its state dropped; a later request for it
  without START is refused as for an unknown sequence.

Executions run in a thread per instance; every update of the sequence tables is on the loop.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from perfkit_server.backends.base import Array, Backend
from perfkit_server.batching import BatcherSpec
from perfkit_server.errors import InferenceFailed, InvalidInput, Unavailable
from perfkit_server.rate_limiter import ModelLimits
from perfkit_server.sequence_config import SequenceSpec
from perfkit_server.sequence_rows import (
    Row,
    check_request,
    control_values,
    run_rows,
    zeros_like,
)
from perfkit_server.sequence_rows import (
    resolve as _resolve,
)
from perfkit_server.sequence_rows import (
    shape_key as _shape_key,
)
from perfkit_server.stats import ModelStats, RequestTimes

logger = logging.getLogger(__name__)

Outputs = dict[str, Array]
# Sequences waiting for a slot (Triton's backlog has no bound; memory here has one).
MAX_BACKLOG_SEQUENCES = 1024
# Requests one sequence may have queued (a client that does not wait for its responses).
MAX_QUEUED_PER_SEQUENCE = 1024


@dataclass(slots=True, eq=False)
class _Request:
    inputs: dict[str, Array]
    future: asyncio.Future[tuple[Outputs, RequestTimes]]
    start: bool
    end: bool
    enqueue_ns: int


@dataclass(slots=True, eq=False)
class _Sequence:
    corrid: int | str
    last_ns: int
    # Requests in arrival order; None marks the point where the idle sequence is released.
    queue: deque[_Request | None] = field(default_factory=deque)
    slot: _Slot | None = None
    state: dict[str, Array] | None = None  # None: the initial state


@dataclass(slots=True, eq=False)
class _Slot:
    instance: int
    index: int
    seq: _Sequence | None = None
    in_flight: bool = False  # Oldest: a request of this slot's sequence is in the batcher

    def __lt__(self, other: _Slot) -> bool:  # Triton hands out the lowest slot index first
        return (self.index, self.instance) < (other.index, other.instance)


class SequenceScheduler:
    """The scheduler of a model with `sequence_batching` (same methods as Scheduler)."""

    def __init__(
        self,
        spec: SequenceSpec,
        instances: Sequence[Backend],
        stats: ModelStats,
        declared_outputs: Sequence[str] = (),
        limits: ModelLimits | None = None,
    ) -> None:
        self._seq = spec
        self._limits = limits  # the rate limiter (--rate-limit=execution_count), else None
        self._spec = BatcherSpec(max_batch_size=spec.max_batch_size, dynamic=False)
        self._stats = stats
        self._name = stats.name
        self._instances = list(instances)
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, len(self._instances)), thread_name_prefix=f"seq-{stats.name}"
        )
        self._slots = [
            [_Slot(i, s) for s in range(spec.slots)] for i in range(len(self._instances))
        ]
        self._free = [slot for per in self._slots for slot in per]
        heapq.heapify(self._free)
        self._live: dict[int | str, _Sequence] = {}  # sequences that take more requests
        self._backlog: deque[_Sequence] = deque()
        self._ready: list[deque[tuple[_Slot, _Sequence, _Request]]] = [
            deque() for _ in self._instances
        ]
        self._wake = [asyncio.Event() for _ in self._instances]
        self._executing = 0
        self._pending = 0
        self._closing = False
        self._drained = asyncio.Event()
        # State outputs go back into the sequence, not to the client (unless also declared).
        self._state_only = {st.output_name for st in spec.states} - set(declared_outputs)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def spec(self) -> BatcherSpec:
        return self._spec

    @property
    def pending(self) -> int:
        """Requests queued and not yet executing."""
        return self._pending

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        runner = self._oldest if self._seq.oldest else self._direct
        self._tasks = [loop.create_task(runner(i)) for i in range(len(self._instances))]
        self._tasks.append(loop.create_task(self._reaper()))
        for task in self._tasks:
            task.add_done_callback(self._runner_done)

    def try_direct(self, inputs: dict[str, Array], batch_size: int) -> None:
        """Never: every request of a sequence model goes through its sequence's slot."""
        return None

    def _runner_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("sequence batcher of model '%s' stopped: %r", self._name, task.exception())

    # -- arrival -------------------------------------------------------------------------------

    def submit(
        self,
        inputs: dict[str, Array],
        batch_size: int,
        priority: int = 0,
        timeout_us: int | None = None,
        params: dict[str, Any] | None = None,
    ) -> asyncio.Future[tuple[Outputs, RequestTimes]]:
        """Queue one request of a sequence; refuse it as Triton's sequence batcher does."""
        corrid, start, end = check_request(
            self._seq, self._name, params or {}, batch_size, self._closing
        )
        seq = self._live.get(corrid)
        if seq is None and not start:
            raise InvalidInput(
                f"inference request for sequence {corrid} to model '{self._name}' must specify "
                "the START flag on the first request of the sequence"
            )
        now = time.perf_counter_ns()
        if seq is None:
            seq = self._begin(corrid, now)
        else:
            if start:
                logger.warning(
                    "sequence %s for model '%s' has a conflict. The previous sequence did not end "
                    "before this sequence start. Previous sequence will be terminated early.",
                    corrid,
                    self._name,
                )
            if len(seq.queue) >= MAX_QUEUED_PER_SEQUENCE:
                raise Unavailable(
                    f"sequence {corrid} of model '{self._name}' already has "
                    f"{MAX_QUEUED_PER_SEQUENCE} requests queued; wait for their responses "
                    "before sending more"
                )
        seq.last_ns = now
        fut: asyncio.Future[tuple[Outputs, RequestTimes]] = (
            asyncio.get_running_loop().create_future()
        )
        seq.queue.append(_Request(inputs, fut, start, end, now))
        self._pending += 1
        if end:
            del self._live[corrid]  # a later request for this id must START a new sequence
        if seq.slot is not None:
            self._arrived(seq.slot)
        return fut

    def _begin(self, corrid: int | str, now: int) -> _Sequence:
        seq = _Sequence(corrid, now)
        if self._free:
            self._assign(heapq.heappop(self._free), seq)
        elif len(self._backlog) >= MAX_BACKLOG_SEQUENCES:
            slots = sum(len(per) for per in self._slots)
            raise Unavailable(
                f"inference request for sequence {corrid} to model '{self._name}': all {slots} "
                f"sequence slots are in use and the backlog holds its limit of "
                f"{MAX_BACKLOG_SEQUENCES} sequences waiting for a slot; end sequences "
                "(sequence_end) or let idle ones be released (max_sequence_idle_microseconds), "
                "then start this one again"
            )
        else:
            self._backlog.append(seq)
        self._live[corrid] = seq
        return seq

    def _assign(self, slot: _Slot, seq: _Sequence) -> None:
        slot.seq, seq.slot = seq, slot

    def _release(self, slot: _Slot) -> None:
        """Free `slot` (its sequence ended or was released); the backlog's oldest takes it."""
        if slot.seq is not None:
            slot.seq.slot = None
        slot.seq = None
        if self._backlog:
            self._assign(slot, self._backlog.popleft())
        else:
            heapq.heappush(self._free, slot)

    def _arrived(self, slot: _Slot) -> None:
        if self._seq.oldest:
            self._feed(slot)
        else:
            self._wake[slot.instance].set()

    # -- idle sequences ------------------------------------------------------------------------

    async def _reaper(self) -> None:
        idle = self._seq.idle_ns
        while True:
            now = time.perf_counter_ns()
            next_ns = now + idle
            for seq in list(self._live.values()):
                if seq.slot is None:
                    continue  # in the backlog: it is not holding a slot (Triton waits too)
                deadline = seq.last_ns + idle
                if now >= deadline:
                    logger.debug("sequence %s of model '%s' idle: released", seq.corrid, self._name)
                    del self._live[seq.corrid]
                    seq.queue.append(None)
                    self._arrived(seq.slot)
                else:
                    next_ns = min(next_ns, deadline)
            await asyncio.sleep(max(next_ns - now, 1_000_000) / 1e9)

    def _pop_markers(self, slot: _Slot) -> None:
        """Release slots whose queue front is an idle-release marker (the backlog refills)."""
        while slot.seq is not None and slot.seq.queue and slot.seq.queue[0] is None:
            slot.seq.queue.popleft()
            self._release(slot)

    # -- Direct --------------------------------------------------------------------------------

    async def _direct(self, i: int) -> None:
        slots = self._slots[i]
        spec = self._seq
        wake = self._wake[i]
        width = max(1, spec.max_batch_size)
        while True:
            for slot in slots:
                self._pop_markers(slot)
            ready = [s for s in slots if s.seq is not None and s.seq.queue]
            if not ready:
                self._check_drained()
                wake.clear()
                await wake.wait()
                continue
            if spec.direct_delay_ns and spec.minimum_slot_utilization and not self._closing:
                oldest = min(_front(s).enqueue_ns for s in ready)
                waited = time.perf_counter_ns() - oldest
                if (
                    waited <= spec.direct_delay_ns
                    and len(ready) / width < spec.minimum_slot_utilization
                ):
                    wake.clear()
                    try:
                        await asyncio.wait_for(wake.wait(), (spec.direct_delay_ns - waited) / 1e9)
                    except TimeoutError:
                        pass
                    continue
            first = _front(ready[0])
            key = _shape_key(first.inputs)
            top = max(s.index for s in ready)
            rows: list[Row] = []
            taken: list[tuple[_Slot, _Sequence, _Request]] = []
            for slot in slots[: top + 1]:
                seq = slot.seq
                if seq is not None and seq.queue and _shape_key(_front(slot).inputs) == key:
                    req = _front(slot)
                    seq.queue.popleft()
                    taken.append((slot, seq, req))
                    rows.append(self._row(seq, req))
                else:
                    rows.append(self._padding(first, ready[0]))
            await self._execute(i, rows, taken)
            for slot, _seq, req in taken:
                if req.end:
                    self._release(slot)

    # -- Oldest --------------------------------------------------------------------------------

    def _feed(self, slot: _Slot) -> None:
        """Oldest: move the slot's next request to its instance's batcher (one in flight)."""
        while not slot.in_flight:
            self._pop_markers(slot)
            seq = slot.seq
            if seq is None or not seq.queue:
                self._check_drained()
                return
            req = seq.queue.popleft()
            assert req is not None
            slot.in_flight = True
            self._ready[slot.instance].append((slot, seq, req))
            self._wake[slot.instance].set()

    async def _oldest(self, i: int) -> None:
        spec = self._seq
        ready = self._ready[i]
        wake = self._wake[i]
        limit = max(1, spec.max_batch_size)
        if spec.preferred:
            limit = min(limit, spec.preferred[-1])
        while True:
            if not ready:
                wake.clear()
                await wake.wait()
                continue
            waited = time.perf_counter_ns() - ready[0][2].enqueue_ns
            if len(ready) < limit and waited < spec.oldest_delay_ns and not self._closing:
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), (spec.oldest_delay_ns - waited) / 1e9)
                except TimeoutError:
                    pass
                continue
            key = _shape_key(ready[0][2].inputs)
            taken: list[tuple[_Slot, _Sequence, _Request]] = []
            keep: deque[tuple[_Slot, _Sequence, _Request]] = deque()
            while ready:
                item = ready.popleft()
                if len(taken) < limit and _shape_key(item[2].inputs) == key:
                    taken.append(item)
                else:
                    keep.append(item)
            ready.extend(keep)
            rows = [self._row(seq, req) for _slot, seq, req in taken]
            await self._execute(i, rows, taken)
            for slot, _seq, req in taken:
                slot.in_flight = False
                if req.end:
                    self._release(slot)
                self._feed(slot)

    # -- execution -----------------------------------------------------------------------------

    def _row(self, seq: _Sequence, req: _Request) -> Row:
        if req.start:
            seq.state = None  # a START (re)starts from the initial state
        state = seq.state if seq.state is not None else self._initial()
        controls = control_values(self._seq, True, req.start, req.end, seq.corrid)
        return Row({**req.inputs, **controls, **state}, padding=False)

    def _padding(self, like: _Request, slot: _Slot) -> Row:
        assert slot.seq is not None
        seq = slot.seq
        state = seq.state if seq.state is not None and not like.start else self._initial()
        controls = control_values(self._seq, False, False, False, None)
        inputs = {name: zeros_like(value) for name, value in like.inputs.items()}
        return Row({**inputs, **controls, **{k: v.copy() for k, v in state.items()}}, True)

    def _initial(self) -> dict[str, Array]:
        batched = self._seq.max_batch_size > 0
        return {
            st.input_name: (st.initial[None, ...] if batched else st.initial).copy()
            for st in self._seq.states
        }

    async def _execute(
        self, i: int, rows: list[Row], taken: list[tuple[_Slot, _Sequence, _Request]]
    ) -> None:
        self._pending -= len(taken)
        self._executing += 1
        loop = asyncio.get_running_loop()
        inst, limits = self._instances[i], self._limits
        try:
            if limits is not None:
                await limits.acquire(inst)  # the instance's rate-limiter resources
            try:
                results, t0, t1, t2, t3 = await loop.run_in_executor(
                    self._executor, run_rows, inst, rows
                )
            finally:
                if limits is not None:
                    limits.release(inst)
        except Exception as exc:  # the backend boundary: every request of the batch fails
            err = InferenceFailed(f"model '{self._name}' failed to execute the batch: {exc}")
            for _slot, _seq, req in taken:
                _resolve(req.future, err)
            return
        finally:
            self._executing -= 1
        # batch_stats by the batch's rows, padding included; inference_count by requests (Triton).
        self._stats.record_execution(len(rows), t1 - t0, t2 - t1, t3 - t2)
        self._stats.inference_count -= len(rows) - len(taken)
        real = iter(r for row, r in zip(rows, results, strict=True) if not row.padding)
        for (_slot, seq, req), outcome in zip(taken, real, strict=False):
            if isinstance(outcome, Exception):
                _resolve(req.future, outcome)
                continue
            states: dict[str, Array] = {}
            missing = [st.output_name for st in self._seq.states if st.output_name not in outcome]
            if missing:
                _resolve(
                    req.future,
                    InvalidInput(
                        f"model '{self._name}' produced no output for its sequence state "
                        f"{missing} (sequence_batching state output_name)"
                    ),
                )
                continue
            for st in self._seq.states:
                states[st.input_name] = outcome[st.output_name].copy()
            seq.state = states
            outputs = {k: v for k, v in outcome.items() if k not in self._state_only}
            times = RequestTimes(max(0, t0 - req.enqueue_ns), t1 - t0, t2 - t1, t3 - t2)
            _resolve(req.future, (outputs, times))

    # -- shutdown ------------------------------------------------------------------------------

    def _check_drained(self) -> None:
        if not self._closing or self._executing:
            return
        for per in self._slots:
            for slot in per:
                seq = slot.seq
                if slot.in_flight or (seq is not None and any(r is not None for r in seq.queue)):
                    return
        if any(self._ready):
            return
        self._drained.set()

    async def close(self) -> None:
        """Serve what the slots hold, refuse what waits in the backlog, release the instances."""
        self._closing = True
        for wake in self._wake:
            wake.set()
        self._check_drained()
        # A runner that died (a bug) must not hang the unload: stop waiting when one ends.
        drained = asyncio.ensure_future(self._drained.wait())
        await asyncio.wait([drained, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        drained.cancel()
        refused = Unavailable(f"model '{self._name}' is unloading")
        for seq in self._backlog:
            for req in seq.queue:
                if req is not None:
                    _resolve(req.future, refused)
        self._backlog.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        loop = asyncio.get_running_loop()
        for inst in self._instances:
            await loop.run_in_executor(self._executor, inst.close)
        self._executor.shutdown(wait=False)
        if self._limits is not None:
            self._limits.close()


def _front(slot: _Slot) -> _Request:
    assert slot.seq is not None
    req = slot.seq.queue[0]
    assert req is not None
    return req
