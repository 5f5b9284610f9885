"""Per model-version scheduling with Triton's semantics: the default scheduler and the dynamic batcher.

One scheduler coroutine forms batches and hands each to an idle instance; each instance has its own
backend session, and its blocking `infer` runs in a ThreadPoolExecutor, never on the loop.

Dynamic batching (Triton's GetDynamicBatch): requests are taken in priority order, then arrival
order, while the batch stays within max_batch_size and the requests' non-batch shapes match. The
batch is sent at once when it is full (max_batch_size, or the next request does not fit), when it
reaches the largest preferred_batch_size, or when the next request would take it past that size;
otherwise the batcher waits up to max_queue_delay_microseconds from the oldest request, then sends
what is pending.
Queue policies: max_queue_size rejects at arrival; a request past its timeout is rejected or, with
timeout_action DELAY, served after the requests still within their timeouts. With
preserve_ordering, responses complete in arrival order. Clocks: time.perf_counter_ns (monotonic).

Three execution modes (see backends/base.py): the default runs `backend.infer` on the batch's
concatenated inputs and slices the outputs; a `takes_requests` backend gets one input dict per
request and returns one result (or Exception) each; a decoupled model
(`model_transaction_policy { decoupled: true }`) gets `execute_decoupled(requests, send)` and its
requests are queued with `submit_stream`, each answered on its own `decoupled.ResponseStream`
(both in exec_modes.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from perfkit_server.backends.base import Array, Backend
from perfkit_server.batching import BatcherSpec as BatcherSpec
from perfkit_server.batching import QueuePolicy as QueuePolicy
from perfkit_server.decoupled import ResponseStream
from perfkit_server.errors import InferenceFailed, Unavailable
from perfkit_server.exec_modes import ExecutionModes
from perfkit_server.instances import InstancePool
from perfkit_server.rate_limiter import ModelLimits
from perfkit_server.stats import ModelStats, RequestTimes

logger = logging.getLogger(__name__)

Outputs = dict[str, Array]

# Executions that take less than this run on the event loop instead of in the executor: handing
# a batch to a thread and back costs more CPU (two wake-ups and GIL hand-offs, ~50-100 us) than
# such a batch itself. Only for backends that say they never block (`may_block` False).
# The decision follows the share of recent executions under the bar (an EWMA of 0/1, inline above
# one half): a median, not a mean. Each execution is timed on the calling thread's CPU clock, so
# waiting for the GIL (executor threads) or for a core (a loaded machine) does not count.
INLINE_BELOW_NS = 100_000
# ... and that also finish within this wall time (a GIL wait of up to ~1 ms is tolerated).
INLINE_WALL_BELOW_NS = 1_000_000
_EWMA_WEIGHT = 0.1
_CANCELLED = asyncio.CancelledError()


@dataclass(slots=True, eq=False)
class _Pending:
    inputs: dict[str, Array]
    batch_size: int
    shape_key: tuple[Any, ...]
    future: asyncio.Future[tuple[Outputs, RequestTimes]]
    enqueue_ns: int
    deadline_ns: int  # 0: no timeout
    level: int
    outcome: tuple[Outputs, RequestTimes] | BaseException | None = None


class Scheduler(ExecutionModes):
    """Queues requests for one model version and runs batches on its instances (the other
    execution modes, takes_requests and decoupled, in `exec_modes.ExecutionModes`)."""

    def __init__(
        self,
        spec: BatcherSpec,
        instances: Sequence[Backend],
        stats: ModelStats,
        limits: ModelLimits | None = None,
    ) -> None:
        self._spec = spec
        # The rate limiter (--rate-limit=execution_count): every execution holds its instance's
        # resources. None: off, and nothing on the hot path looks at it.
        self._limits = limits
        self._stats = stats
        self._instances = list(instances)
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, len(self._instances)), thread_name_prefix=f"infer-{stats.name}"
        )
        nlevels = max(spec.priority_levels, 1)
        self._queues: list[deque[_Pending]] = [deque() for _ in range(nlevels)]
        self._delayed: list[deque[_Pending]] = [deque() for _ in range(nlevels)]
        self._pending = 0
        self._with_deadline = 0
        self._order: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._pool = InstancePool(self._instances, asyncio.get_running_loop())
        self._closing = False
        # Execution modes (see the module docstring); a decoupled model never runs on the loop.
        self._takes_requests = any(getattr(i, "takes_requests", False) for i in self._instances)
        self._decoupled = spec.decoupled
        self._response_stats = any(getattr(i, "response_statistics", False) for i in instances)
        self._streams: dict[asyncio.Future[tuple[Outputs, RequestTimes]], ResponseStream] = {}
        self._running: weakref.WeakSet[ResponseStream] = weakref.WeakSet()
        # Inline executions skip `_execute`, where the rate limiter's resources are taken.
        self._may_inline = (
            limits is None
            and not spec.decoupled
            and not any(getattr(inst, "may_block", True) for inst in self._instances)
        )
        self._inline = False
        self._fast_share = 0.0
        self._calls = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def spec(self) -> BatcherSpec:
        return self._spec

    @property
    def pending(self) -> int:
        """Requests queued and not yet executing."""
        return self._pending

    def start(self) -> None:
        """Start the batch-forming coroutine (call on the serving loop)."""
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    def submit(
        self,
        inputs: dict[str, Array],
        batch_size: int,
        priority: int = 0,
        timeout_us: int | None = None,
        params: dict[str, Any] | None = None,
    ) -> asyncio.Future[tuple[Outputs, RequestTimes]]:
        """Queue one request; the future gives its outputs (sliced from the batch) and times.
        `params` are the request's parameters (`InferRequest.parameters`): schedulers that read
        them (the sequence batcher: sequence_id, sequence_start, sequence_end) take the same call."""
        if self._closing:
            raise Unavailable(f"model '{self._stats.name}' is unloading")
        spec = self._spec
        level = 0
        if spec.priority_levels:
            prio = priority if 1 <= priority <= spec.priority_levels else spec.default_priority
            level = prio - 1
        policy = spec.policies[level] if level < len(spec.policies) else spec.policies[0]
        queue = self._queues[level]
        if (
            policy.max_queue_size
            and len(queue) + len(self._delayed[level]) >= policy.max_queue_size
        ):
            raise Unavailable(
                f"Exceeds maximum queue size: model '{self._stats.name}' queue holds "
                f"{policy.max_queue_size} requests (dynamic_batching max_queue_size)"
            )
        if (
            self._inline
            and not self._pending
            and not self._order
            and spec.max_queue_delay_ns == 0
            and (inst := self._pool.take()) is not None
        ):
            return self._run_now(inst, inputs, batch_size)
        now = time.perf_counter_ns()
        timeout_ns = policy.timeout_ns
        if timeout_us and (policy.allow_timeout_override or not spec.dynamic):
            timeout_ns = timeout_us * 1000
        shape_key = (
            tuple((k, v.shape[1:]) for k, v in inputs.items()) if spec.max_batch_size else ()
        )
        fut: asyncio.Future[tuple[Outputs, RequestTimes]] = (
            asyncio.get_running_loop().create_future()
        )
        pending = _Pending(
            inputs=inputs,
            batch_size=batch_size,
            shape_key=shape_key,
            future=fut,
            enqueue_ns=now,
            deadline_ns=now + timeout_ns if timeout_ns else 0,
            level=level,
        )
        queue.append(pending)
        self._pending += 1
        if pending.deadline_ns:
            self._with_deadline += 1
        if spec.preserve_ordering:
            self._order.append(pending)
        self._wake.set()
        return fut

    async def close(self) -> None:
        """Serve what is queued, wait for running batches, then release the instances."""
        self._closing = True
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._pool.drain()  # executions still running in the executor
        self._unhold_streams()  # a decoupled model's senders held by clients that do not read
        loop = asyncio.get_running_loop()
        for inst in self._instances:
            await loop.run_in_executor(self._executor, inst.close)
        self._executor.shutdown(wait=False)
        if self._limits is not None:
            self._limits.close()

    # -- batch forming -------------------------------------------------------------------------

    async def _run(self) -> None:
        # Wait for work first, then for an instance: requests keep queueing (and batching) while
        # every instance is busy, and an idle instance stays free for the inline fast path.
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            inst = await self._pool.acquire()
            batch = await self._next_batch(loop)
            if not batch:  # None, or every request taken was cancelled
                self._pool.release(inst)
                continue
            task = loop.create_task(self._execute(inst, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self, count: int) -> list[_Pending]:
        taken: list[_Pending] = []
        for queues in zip(self._queues, self._delayed, strict=True):
            for q in queues:
                while q and count:
                    p = q.popleft()
                    count -= 1
                    self._pending -= 1
                    if p.deadline_ns:
                        self._with_deadline -= 1
                    if p.future.cancelled():  # its caller went away first (an RST_STREAM)
                        self._finish(p, _CANCELLED)  # keeps preserve_ordering's queue moving
                    else:
                        taken.append(p)
            if not count:
                break
        return taken

    def _candidates(self) -> tuple[int, bool]:
        """Scan the queue as Triton's GetDynamicBatch does: (requests to take, send now?).

        Requests join while the batch stays within max_batch_size and their shapes match. The
        batch is sent at once when it reaches the largest preferred size, when the next request
        would pass the largest preferred size (the batch up to that point is sent), or when the
        next request does not fit at all. Otherwise it may wait for the queue delay.
        """
        spec = self._spec
        max_pref = spec.preferred[-1] if spec.preferred else 0
        total = 0
        count = 0
        key: tuple[Any, ...] | None = None
        for queues in zip(self._queues, self._delayed, strict=True):
            for q in queues:
                for p in q:
                    if key is None:
                        key = p.shape_key
                    else:
                        if p.shape_key != key:
                            return count, True
                        if max_pref and total + p.batch_size > max_pref:
                            return count, True
                        if total + p.batch_size > spec.max_batch_size:
                            return count, True
                    total += p.batch_size
                    count += 1
                    if total == max_pref or total >= spec.max_batch_size:
                        return count, True
        return count, False

    def _expire(self, now: int) -> None:
        for level, q in enumerate(self._queues):
            if not q:
                continue
            keep: deque[_Pending] = deque()
            policy = self._spec.policies[min(level, len(self._spec.policies) - 1)]
            for p in q:
                if p.deadline_ns and now >= p.deadline_ns:
                    p.deadline_ns = 0
                    self._with_deadline -= 1
                    if policy.delay_on_timeout:
                        self._delayed[level].append(p)
                    else:
                        self._pending -= 1
                        self._finish(p, Unavailable("Request timeout expired"))
                else:
                    keep.append(p)
            self._queues[level] = keep

    async def _next_batch(self, loop: asyncio.AbstractEventLoop) -> list[_Pending] | None:
        spec = self._spec
        while True:
            now = time.perf_counter_ns()
            if self._with_deadline:
                self._expire(now)
            if not self._pending:
                return None
            if not spec.dynamic:
                return self._take(1)
            count, send_now = self._candidates()
            if send_now:
                return self._take(count)
            oldest = self._oldest()
            wait_until = oldest + spec.max_queue_delay_ns
            if now >= wait_until or self._closing:
                return self._take(count)
            if self._with_deadline:
                deadlines = [p.deadline_ns for q in self._queues for p in q if p.deadline_ns]
                if deadlines:
                    wait_until = min(wait_until, min(deadlines))
            self._wake.clear()
            handle = loop.call_later(max(0, wait_until - now) / 1e9, self._wake.set)
            await self._wake.wait()
            handle.cancel()

    def _oldest(self) -> int:
        for queues in zip(self._queues, self._delayed, strict=True):
            for q in queues:
                if q:
                    return q[0].enqueue_ns
        return time.perf_counter_ns()

    # -- execution -----------------------------------------------------------------------------

    def _run_now(
        self, inst: Backend, inputs: dict[str, Array], batch_size: int
    ) -> asyncio.Future[tuple[Outputs, RequestTimes]]:
        """The inline fast path: nothing queued, an instance idle, a short non-blocking backend."""
        fut: asyncio.Future[tuple[Outputs, RequestTimes]] = (
            asyncio.get_running_loop().create_future()
        )
        pending = _Pending(inputs, batch_size, (), fut, time.perf_counter_ns(), 0, 0)
        try:
            result = self._run_batch(inst, [pending])
        except Exception as exc:  # the backend boundary, as in _execute
            self._fail(pending_batch=[pending], exc=exc)
        else:
            self._complete([pending], result)
        finally:
            self._pool.release(inst)
        return fut

    async def _execute(self, inst: Backend, batch: list[_Pending]) -> None:
        limits = self._limits
        if limits is not None:
            await limits.acquire(inst)  # the instance's rate-limiter resources, in priority order
        if self._decoupled:
            try:
                await self._execute_decoupled(inst, batch)
            finally:
                if limits is not None:
                    limits.release(inst)
            return
        loop = asyncio.get_running_loop()
        try:
            if self._inline:
                result = self._run_batch(inst, batch)
            else:
                result = await loop.run_in_executor(self._executor, self._run_batch, inst, batch)
        except Exception as exc:  # the backend boundary: fan the error out to every request
            self._fail(batch, exc)
            return
        finally:
            if limits is not None:
                limits.release(inst)
            self._pool.release(inst)
        self._complete(batch, result)

    def _fail(self, pending_batch: list[_Pending], exc: Exception) -> None:
        logger.debug(
            "batch of %d failed on model %s: %s", len(pending_batch), self._stats.name, exc
        )
        err = InferenceFailed(f"model '{self._stats.name}' failed to execute the batch: {exc}")
        for p in pending_batch:
            self._finish(p, err)

    def _complete(
        self, batch: list[_Pending], result: tuple[list[Outputs], int, int, int, int]
    ) -> None:
        per_request, t0, t1, t2, t3 = result
        self._stats.record_execution(sum(p.batch_size for p in batch), t1 - t0, t2 - t1, t3 - t2)
        each = self._takes_requests  # its results may be one request's error
        for p, outputs in zip(batch, per_request, strict=True):
            if each and isinstance(outputs, Exception):
                self._finish(p, self._request_error(outputs))
                continue
            times = RequestTimes(max(0, t0 - p.enqueue_ns), t1 - t0, t2 - t1, t3 - t2)
            self._finish(p, (outputs, times))

    def _infer(self, inst: Backend, inputs: dict[str, Array]) -> Outputs:
        """inst.infer, sampling its CPU time for the inline decision (any thread)."""
        if not self._may_inline:
            return inst.infer(inputs)
        self._calls += 1
        if self._inline and self._calls & 7:  # running inline: time one execution in 8
            return inst.infer(inputs)
        c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
        outputs = inst.infer(inputs)
        self._sampled(time.thread_time_ns() - c0, time.perf_counter_ns() - w0)
        return outputs

    def _sampled(self, cpu_ns: int, wall_ns: int) -> None:
        """One timed execution's part in the inline decision."""
        # The wall-clock bar catches backends whose work runs on their own threads (ONNX Runtime's
        # intra-op pool): the caller's CPU clock barely moves while it waits for them.
        fast = 1.0 if cpu_ns < INLINE_BELOW_NS and wall_ns < INLINE_WALL_BELOW_NS else 0.0
        self._fast_share += _EWMA_WEIGHT * (fast - self._fast_share)  # a lost update is harmless
        self._inline = self._fast_share > 0.5

    def _run_batch(
        self, inst: Backend, batch: list[_Pending]
    ) -> tuple[list[Outputs], int, int, int, int]:
        if self._takes_requests:
            return self._run_requests(inst, batch)
        t0 = time.perf_counter_ns()
        if len(batch) == 1:
            inputs = batch[0].inputs
        else:
            inputs = {
                name: np.concatenate([p.inputs[name] for p in batch]) for name in batch[0].inputs
            }
        t1 = time.perf_counter_ns()
        outputs = self._infer(inst, inputs)
        t2 = time.perf_counter_ns()
        if len(batch) == 1:
            per_request = [outputs]
        else:
            total = sum(p.batch_size for p in batch)
            for name, value in outputs.items():
                if value.ndim == 0 or value.shape[0] != total:
                    raise ValueError(
                        f"output '{name}' has shape {list(value.shape)}, expected batch size {total}"
                    )
            per_request = []
            offset = 0
            for p in batch:
                end = offset + p.batch_size
                per_request.append({k: v[offset:end] for k, v in outputs.items()})
                offset = end
        t3 = time.perf_counter_ns()
        return per_request, t0, t1, t2, t3

    def _finish(self, p: _Pending, outcome: tuple[Outputs, RequestTimes] | BaseException) -> None:
        if not self._spec.preserve_ordering:
            _resolve(p.future, outcome)
            return
        p.outcome = outcome
        while self._order and self._order[0].outcome is not None:
            head = self._order.popleft()
            assert head.outcome is not None
            _resolve(head.future, head.outcome)
            head.outcome = None


def _resolve(
    fut: asyncio.Future[tuple[Outputs, RequestTimes]],
    outcome: tuple[Outputs, RequestTimes] | BaseException,
) -> None:
    if fut.done():  # the client went away (cancelled)
        return
    if isinstance(outcome, BaseException):
        fut.set_exception(outcome)
    else:
        fut.set_result(outcome)
