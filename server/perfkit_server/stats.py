"""Per model-version statistics in the shape of Triton's statistics extension.

Accounting follows Triton: `success`/`fail`/`queue`/`compute_*` in inference_stats are per request
(a request in a batch of 8 adds the whole batch's compute time to its own count), batch_stats are per
execution keyed by batch size, inference_count sums the batch sizes of executed requests, and
execution_count counts executions. Every update and every read happens on the event loop.

`response_stats` (decoupled models) are per response index within a request, as Triton keeps
them: "0" for every request's first response, "1" for its second, ...; each response counts as
success (it has outputs), fail (an error) or empty_response (a FINAL without outputs).
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Duration:
    """A count and cumulative nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def to_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchStat:
    """Per-execution durations for one batch size."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


# Response indexes kept in response_stats: a request may make a decoupled model send any number of
# responses, the statistics stay bounded (responses past this index are not counted there).
MAX_RESPONSE_INDEXES = 1024


@dataclass(slots=True)
class ResponseStat:
    """Triton's InferResponseStatistics of one response index."""

    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    empty_response: Duration = field(default_factory=Duration)
    cancel: Duration = field(default_factory=Duration)

    def to_json(self) -> dict[str, dict[str, int]]:
        return {
            "compute_infer": self.compute_infer.to_json(),
            "compute_output": self.compute_output.to_json(),
            "success": self.success.to_json(),
            "fail": self.fail.to_json(),
            "empty_response": self.empty_response.to_json(),
            "cancel": self.cancel.to_json(),
        }


@dataclass(slots=True)
class RequestTimes:
    """What one request spent where, in ns (filled by the scheduler)."""

    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0


# Triton's secondary stats aggregator: while an ensemble step's request runs, the compute times
# its model records are also added here, to the ensemble request's own (set by
# perfkit_server.ensemble in the step's task, so concurrent requests never share one).
SECONDARY: ContextVar[RequestTimes | None] = ContextVar("perfkit_secondary_stats", default=None)


@dataclass(slots=True)
class ModelStats:
    """Cumulative statistics of one model version."""

    name: str
    version: str
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batch: dict[int, BatchStat] = field(default_factory=dict)
    # Failures by Triton's metric `reason` label (REJECTED, CANCELED, BACKEND, OTHER).
    fail_reasons: dict[str, int] = field(default_factory=dict)
    # Response cache (perfkit_server.response_cache): hits (lookup time) and misses (lookup +
    # insertion time).
    cache_hit: Duration = field(default_factory=Duration)
    cache_miss: Duration = field(default_factory=Duration)
    # Decoupled models: per response index (see the module docstring).
    responses: dict[int, ResponseStat] = field(default_factory=dict)

    def record_success(self, duration_ns: int, times: RequestTimes) -> None:
        self.success.add(duration_ns)
        self.queue.add(times.queue_ns)
        self.compute_input.add(times.compute_input_ns)
        self.compute_infer.add(times.compute_infer_ns)
        self.compute_output.add(times.compute_output_ns)
        self.last_inference_ms = time.time_ns() // 1_000_000
        secondary = SECONDARY.get()
        if secondary is not None:
            secondary.compute_input_ns += times.compute_input_ns
            secondary.compute_infer_ns += times.compute_infer_ns
            secondary.compute_output_ns += times.compute_output_ns

    def record_cache_hit(self, duration_ns: int, queue_ns: int, lookup_ns: int) -> None:
        """A response served from the cache (Triton's UpdateSuccessCacheHit): a success with its
        queue time before the lookup; no compute time, inference or execution, last_inference
        unchanged."""
        self.success.add(duration_ns)
        self.queue.add(queue_ns)
        self.cache_hit.add(lookup_ns)

    def record_failure(self, duration_ns: int, reason: str) -> None:
        self.fail.add(duration_ns)
        self.fail_reasons[reason] = self.fail_reasons.get(reason, 0) + 1

    def record_response(self, index: int, kind: str, start_ns: int, end_ns: int) -> None:
        """One response of a decoupled request: `kind` is "success", "fail" or "empty_response";
        `start_ns`..`end_ns` the work behind it (Triton: from the response's start to its end;
        there is no separate output phase here, so compute_output adds 0 ns)."""
        if index >= MAX_RESPONSE_INDEXES:
            return
        stat = self.responses.get(index)
        if stat is None:
            stat = self.responses[index] = ResponseStat()
        ns = max(0, end_ns - start_ns)
        stat.compute_infer.add(ns)
        if kind == "success":
            stat.compute_output.add(0)
        getattr(stat, kind).add(ns)

    def record_execution(
        self, batch_size: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        self.execution_count += 1
        self.inference_count += batch_size
        stat = self.batch.get(batch_size)
        if stat is None:
            stat = self.batch[batch_size] = BatchStat()
        stat.compute_input.add(input_ns)
        stat.compute_infer.add(infer_ns)
        stat.compute_output.add(output_ns)

    def to_json(self) -> dict[str, Any]:
        """Triton's `model_stats[]` entry (HTTP JSON; gRPC parses the same dict)."""
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.to_json(),
                "fail": self.fail.to_json(),
                "queue": self.queue.to_json(),
                "compute_input": self.compute_input.to_json(),
                "compute_infer": self.compute_infer.to_json(),
                "compute_output": self.compute_output.to_json(),
                "cache_hit": self.cache_hit.to_json(),
                "cache_miss": self.cache_miss.to_json(),
            },
            "response_stats": {
                str(index): stat.to_json() for index, stat in sorted(self.responses.items())
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": stat.compute_input.to_json(),
                    "compute_infer": stat.compute_infer.to_json(),
                    "compute_output": stat.compute_output.to_json(),
                }
                for size, stat in sorted(self.batch.items())
            ],
            "memory_usage": [],
        }
