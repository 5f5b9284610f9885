"""The scheduler's execution modes besides the default (see backends/base.py for the backend side).

- `takes_requests` backends (Triton's python backend: `execute(requests)` returns one response
  per request): the scheduler passes one input dict per request, nothing concatenated or sliced,
  and completes each request with its own result; an Exception is that request's error alone.
- decoupled models (`model_transaction_policy { decoupled: true }`): requests are queued with
  `submit_stream`, batched as any other, and handed to `execute_decoupled(requests, send)`; each
  request's responses go to its `decoupled.ResponseStream`. The instance is free again when
  execute_decoupled returns; responses may still come until each request's FINAL.

- direct (`try_direct`): one request run at once on the event loop when the inline path would
  run it there anyway (no dynamic batcher, a short non-blocking backend, an idle instance).

`ExecutionModes` is a mixin of `scheduler.Scheduler`, which owns the queues, the instance pool and
the executor; the queued default mode's hot path does not pass through here.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from perfkit_server.backends.base import Array, Backend
from perfkit_server.batching import BatcherSpec
from perfkit_server.decoupled import ResponseStream, send_to
from perfkit_server.errors import InferenceFailed, InvalidInput, ServerError
from perfkit_server.instances import InstancePool
from perfkit_server.stats import ModelStats, RequestTimes

if TYPE_CHECKING:
    from perfkit_server.scheduler import _Pending

logger = logging.getLogger(__name__)

Outputs = dict[str, Array]
Outcome = tuple[Outputs, RequestTimes]

# A decoupled request's future resolves with this when its execution starts: from then on its
# responses go to its ResponseStream.
STARTED: Outcome = ({}, RequestTimes())


class ExecutionModes:
    """takes_requests and decoupled execution, on the state `Scheduler` keeps."""

    _stats: ModelStats
    _pool: InstancePool
    _executor: ThreadPoolExecutor
    _decoupled: bool
    _response_stats: bool
    _may_inline: bool
    _inline: bool
    _calls: int
    _spec: BatcherSpec
    _closing: bool
    _takes_requests: bool
    _streams: dict[asyncio.Future[Outcome], ResponseStream]
    _running: weakref.WeakSet[ResponseStream]  # executed, perhaps not complete

    if TYPE_CHECKING:

        def submit(
            self,
            inputs: dict[str, Array],
            batch_size: int,
            priority: int = 0,
            timeout_us: int | None = None,
            params: dict[str, Any] | None = None,
        ) -> asyncio.Future[Outcome]: ...

        def _finish(self, p: _Pending, outcome: Outcome | BaseException) -> None: ...

        def _sampled(self, cpu_ns: int, wall_ns: int) -> None: ...

        def _infer(self, inst: Backend, inputs: dict[str, Array]) -> Outputs: ...

    # -- direct: one request run at once on the loop (DataPlane.infer_direct) ------------------

    def try_direct(self, inputs: dict[str, Array], batch_size: int) -> Outcome | None:
        """Run one request now, on the loop, or None to queue it instead.

        Only for what the inline path would run on the loop: no dynamic batcher, a short
        non-blocking backend, an idle instance (the default scheduler promises no order between
        concurrent requests, so a request need not wait behind queued ones).
        """
        if not self._inline or self._spec.dynamic or self._closing:
            return None
        arrived = time.perf_counter_ns()
        inst = self._pool.take()
        if inst is None:
            return None
        t0 = time.perf_counter_ns()
        try:
            if self._takes_requests:
                outputs = self._one_request(inst, inputs)
            else:
                outputs = self._infer(inst, inputs)
            t1 = time.perf_counter_ns()
        except Exception as exc:  # the backend boundary, as in _execute
            if self._takes_requests and isinstance(exc, ServerError):
                raise  # this request's own error (exec_modes: _request_error)
            raise InferenceFailed(
                f"model '{self._stats.name}' failed to execute the batch: {exc}"
            ) from None
        finally:
            self._pool.release(inst)
        # Nothing to gather or scatter for one request: all of its compute time is infer time.
        # Its queue time is taking the instance (as Triton, which always counts some queue time).
        self._stats.record_execution(batch_size, 0, t1 - t0, 0)
        return outputs, RequestTimes(t0 - arrived, 0, t1 - t0, 0)

    # -- decoupled -----------------------------------------------------------------------------

    def submit_stream(
        self,
        inputs: dict[str, Array],
        batch_size: int,
        priority: int = 0,
        timeout_us: int | None = None,
        params: dict[str, Any] | None = None,
    ) -> ResponseStream:
        """Queue one request of a decoupled model: its responses (`decoupled.Response`: outputs
        or error, FINAL flag, times) come on the returned stream, in the order the model sends
        them. Queue policies apply as to `submit`; closing the stream before the request runs
        takes it off the queue."""
        if not self._decoupled:
            raise InvalidInput(
                f"model '{self._stats.name}' is not decoupled: it sends one response per request"
            )
        stream = ResponseStream(self._stats.name, asyncio.get_running_loop())
        stream.report = self._response_stats
        fut = self.submit(inputs, batch_size, priority, timeout_us, params)
        stream.request = fut
        self._streams[fut] = stream
        fut.add_done_callback(self._stream_resolved)
        return stream

    def _stream_resolved(self, fut: asyncio.Future[Outcome]) -> None:
        """A decoupled request left the queue without running (timeout, unload, cancel)."""
        stream = self._streams.pop(fut, None)
        if stream is None or fut.cancelled():  # it runs, or its consumer cancelled it
            return
        exc = fut.exception()
        if isinstance(exc, ServerError):
            stream.fail(exc)

    async def _execute_decoupled(self, inst: Backend, batch: list[_Pending]) -> None:
        """Hand the batch to execute_decoupled; the instance is free when it returns, while its
        responses may still come (from the model's threads) until each request's FINAL."""
        streams: list[ResponseStream] = []
        requests: list[Outputs] = []
        batch_size = 0
        t0 = time.perf_counter_ns()
        for p in batch:
            stream = self._streams.pop(p.future, None)
            if stream is None:  # queued with submit(): no one could take its responses
                self._finish(p, InvalidInput(_needs_stream(self._stats.name)))
                continue
            stream.enqueue_ns = p.enqueue_ns
            stream.started(t0)
            self._finish(p, STARTED)
            streams.append(stream)
            self._running.add(stream)
            requests.append(p.inputs)
            batch_size += p.batch_size
        if not streams:
            self._pool.release(inst)
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                self._executor,
                inst.execute_decoupled,  # type: ignore[attr-defined]
                requests,
                send_to(streams),
            )
        except Exception as exc:  # the backend boundary: every request not yet complete fails
            logger.debug("decoupled execution failed on model %s: %s", self._stats.name, exc)
            err = InferenceFailed(f"model '{self._stats.name}' failed to execute the batch: {exc}")
            for stream in streams:
                stream.fail(err)
        finally:
            self._pool.release(inst)
        self._stats.record_execution(batch_size, 0, time.perf_counter_ns() - t0, 0)

    def _unhold_streams(self) -> None:
        """Unloading: senders held at a stream's bound (a client that does not read) go on, so
        the backend's close, which waits for its senders, cannot wait on a client."""
        for stream in list(self._running):
            stream.unhold()

    # -- takes_requests ------------------------------------------------------------------------

    def _run_requests(
        self, inst: Backend, batch: list[_Pending]
    ) -> tuple[list[Outputs], int, int, int, int]:
        """One input dict per request, one result (or Exception) each; no gather, no scatter."""
        t0 = time.perf_counter_ns()
        results = self._execute_requests(inst, [p.inputs for p in batch])
        t1 = time.perf_counter_ns()
        return results, t0, t0, t1, t1

    def _execute_requests(self, inst: Backend, requests: list[Outputs]) -> list[Outputs]:
        """inst.execute, sampled for the inline decision as `Scheduler._infer` samples infer."""
        execute = inst.execute  # type: ignore[attr-defined]
        self._calls += 1
        if not self._may_inline or (self._inline and self._calls & 7):
            results: list[Outputs] = execute(requests)
        else:
            c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
            results = execute(requests)
            self._sampled(time.thread_time_ns() - c0, time.perf_counter_ns() - w0)
        if not isinstance(results, list) or len(results) != len(requests):
            got = len(results) if isinstance(results, list) else type(results).__name__
            raise ValueError(f"execute returned {got} results for {len(requests)} requests")
        return results

    def _one_request(self, inst: Backend, inputs: Outputs) -> Outputs:
        """The direct path's request on a takes_requests backend (its error raises)."""
        result = self._execute_requests(inst, [inputs])[0]
        if isinstance(result, Exception):
            raise self._request_error(result)
        return result

    def _request_error(self, exc: Exception) -> ServerError:
        """One request's error from a takes_requests backend: a ServerError as it is (its
        message is the model's), anything else named as the model's failure."""
        if isinstance(exc, ServerError):
            return exc
        return InferenceFailed(f"model '{self._stats.name}' failed to execute the request: {exc}")


def _needs_stream(model: str) -> str:
    return (
        f"model '{model}' is decoupled (model_transaction_policy): its requests are answered on "
        "a stream; send them with gRPC ModelStreamInfer"
    )
