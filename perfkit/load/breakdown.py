"""The server-side breakdown of a level from two statistics snapshots, as perf_analyzer computes it
(inference_profiler.cc, report_writer.cc): per-request averages of queue, compute input / infer /
output and the response cache, the composing models of an ensemble or BLS model (recursively,
each from its own statistics, `perfkit.load.composing`), and what the client waited beyond them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from perfkit.load.composing import stats_version
from perfkit.results import ComposingBreakdown, ServerBreakdown


def breakdown(
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    *,
    client_wait_us: float,
    cache_enabled: bool = False,
) -> ServerBreakdown | None:
    """Server-side averages between two snapshots (perf_analyzer's breakdown); None without
    statistics. `client_wait_us`: the client's average latency less its send and receive time."""
    if before is None or after is None:
        return None
    s = _breakdown(before, after, cache_enabled)
    accounted = s.queue_us + _compute(s) + s.cache_hit_us + s.cache_miss_us
    return _with(s, network_server_send_recv_us=max(0.0, client_wait_us - accounted))


def _compute(s: ServerBreakdown) -> float:
    return s.compute_input_us + s.compute_infer_us + s.compute_output_us


def _with(s: ServerBreakdown, **kw: Any) -> ServerBreakdown:
    from dataclasses import replace

    return replace(s, **kw)


def _breakdown(
    before: Mapping[str, Any], after: Mapping[str, Any], cache_enabled: bool
) -> ServerBreakdown:
    def d(key: str) -> int:
        return int(after.get(key, 0)) - int(before.get(key, 0))

    def avg(key: str) -> float:
        n = d(f"{key}_count")
        return d(f"{key}_ns") / n / 1000.0 if n > 0 else 0.0

    request = avg("success")
    queue, cin, cinf, cout = (
        avg("queue"), avg("compute_input"), avg("compute_infer"), avg("compute_output"),
    )  # fmt: skip
    hit, miss = avg("cache_hit"), avg("cache_miss")
    before_batch = before.get("batch", {})
    batches = {
        int(k): int(v) - int(before_batch.get(k, 0))
        for k, v in after.get("batch", {}).items()
        if int(v) - int(before_batch.get(k, 0)) > 0
    }
    if cache_enabled:
        # perf_analyzer: the overhead beyond queue and the combined cache + compute time,
        # averaged over the requests computed or answered from the cache.
        n = d("compute_input_count") + d("cache_hit_count")
        combined_ns = (
            d("cache_hit_ns") + d("cache_miss_ns")
            + d("compute_input_ns") + d("compute_infer_ns") + d("compute_output_ns")
        )  # fmt: skip
        overhead = max(0.0, request - queue - (combined_ns / n / 1000.0 if n else 0.0))
    else:
        overhead = max(0.0, request - queue - cin - cinf - cout)
    composing = tuple(
        _composing(key, before.get("composing", {}).get(key, {}), snap, cache_enabled)
        for key, snap in sorted(after.get("composing", {}).items())
    )
    return ServerBreakdown(
        inference_count=d("inference_count"),
        execution_count=d("execution_count"),
        success_count=d("success_count"),
        failure_count=d("fail_count"),
        avg_request_us=request,
        queue_us=queue,
        compute_input_us=cin,
        compute_infer_us=cinf,
        compute_output_us=cout,
        overhead_us=overhead,
        network_server_send_recv_us=0.0,
        batch_executions=batches,
        cache_enabled=cache_enabled,
        cache_hit_count=d("cache_hit_count"),
        cache_miss_count=d("cache_miss_count"),
        cache_hit_us=hit,
        cache_miss_us=miss,
        composing=composing,
    )


def _composing(
    key: str, before: Mapping[str, Any], after: Mapping[str, Any], cache_enabled: bool
) -> ComposingBreakdown:
    """One composing model: its version's statistics (the given version, or the one that ran),
    with perf_analyzer's composing CSV "overhead" (request time beyond queue, compute and cache)
    as its `network_server_send_recv_us`."""
    name, _, given = key.partition("|")
    version = stats_version(before, after, given)
    if version and version in (after.get("versions") or {}):
        b = (before.get("versions") or {}).get(version) or {}
        a = after["versions"][version]
        b, a = (
            {**b, "composing": before.get("composing", {})},
            {**a, "composing": after.get("composing", {})},
        )
    else:
        b, a = before, after
    s = _breakdown(b, a, cache_enabled)
    accounted = s.queue_us + _compute(s) + s.cache_hit_us + s.cache_miss_us
    return ComposingBreakdown(
        name=name,
        version=version,
        server=_with(s, network_server_send_recv_us=max(0.0, s.avg_request_us - accounted)),
    )
