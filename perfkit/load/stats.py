"""Window statistics: raw per-request timings per window, exact percentiles, stability, merging.

Pure and synchronous (numpy only). perf_analyzer keeps every latency and computes nearest-rank
percentiles on the merged stable windows; so does this module: a window holds its raw arrays
(nanoseconds), and merging concatenates them, so `--workers` processes merge exactly too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from perfkit.results import LatencySummary, WindowStat

I64 = npt.NDArray[np.int64]
FIXED_PERCENTILES = (50.0, 90.0, 95.0, 99.0)


@dataclass(slots=True, kw_only=True)
class RawWindow:
    """Every request that was sent and answered inside one window (nanoseconds, perf_counter)."""

    index: int
    start_ns: int
    end_ns: int
    sent_ns: I64
    done_ns: I64
    # Open loop only: the scheduled send time of each request (same order), else empty.
    intended_ns: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    error_count: int = 0
    # Sum of client-side send and receive time over the window's requests.
    send_time_ns: int = 0
    recv_time_ns: int = 0
    # Open loop: sends in the window, how many were late, and how many waited for the in-flight
    # cap (--max-in-flight) before they could be sent.
    scheduled_count: int = 0
    late_count: int = 0
    dropped_count: int = 0
    # Generator process CPU seconds (user+sys) spent during the window, summed over workers.
    cpu_s: float = 0.0
    workers: int = 1
    # Sequence models: answered requests that ended a sequence (perf_analyzer's sequence count).
    sequence_count: int = 0
    # Streaming: the responses of the window's requests (decoupled models send several).
    response_count: int = 0
    # Sequence models: each request's sequence id (same order as done_ns), else empty.
    sequence_ids: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    # Streaming: each request's response times (same order as done_ns), else empty.
    response_times: list[list[int]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return int(self.done_ns.size)

    @property
    def duration_ns(self) -> int:
        return max(1, self.end_ns - self.start_ns)

    def latency_ns(self) -> I64:
        return self.done_ns - self.sent_ns


def nearest_rank(sorted_ns: I64, p: float) -> float:
    """perf_analyzer's percentile: index = p/100 * (n-1) + 0.5, truncated, on sorted values."""
    n = int(sorted_ns.size)
    if n == 0:
        return 0.0
    idx = int(p / 100.0 * (n - 1) + 0.5)
    return float(sorted_ns[min(max(idx, 0), n - 1)])


def summarize(latency_ns: I64, extra: Sequence[float] = ()) -> LatencySummary:
    """Exact summary of a set of latencies (ns in, µs out)."""
    n = int(latency_ns.size)
    if n == 0:
        return LatencySummary(
            count=0, avg_us=0.0, std_us=0.0, min_us=0.0, max_us=0.0,
            p50_us=0.0, p90_us=0.0, p95_us=0.0, p99_us=0.0,
            extra_percentiles_us={float(p): 0.0 for p in extra if float(p) not in FIXED_PERCENTILES},
        )  # fmt: skip
    s = np.sort(latency_ns)
    f = s.astype(np.float64)
    pct = {p: nearest_rank(s, p) / 1000.0 for p in FIXED_PERCENTILES}
    extras = {float(p): nearest_rank(s, p) / 1000.0 for p in extra if float(p) not in pct}
    return LatencySummary(
        count=n,
        avg_us=float(f.mean()) / 1000.0,
        std_us=float(f.std()) / 1000.0,
        min_us=float(s[0]) / 1000.0,
        max_us=float(s[-1]) / 1000.0,
        p50_us=pct[50.0],
        p90_us=pct[90.0],
        p95_us=pct[95.0],
        p99_us=pct[99.0],
        extra_percentiles_us=extras,
    )


def stability_latency_us(latency_ns: I64, percentile: float | None) -> float:
    """The latency the stability rule and the threshold use: the average, or --percentile."""
    if latency_ns.size == 0:
        return 0.0
    if percentile is None:
        return float(latency_ns.mean()) / 1000.0
    return nearest_rank(np.sort(latency_ns), percentile) / 1000.0


def window_stat(w: RawWindow, *, batch_size: int, percentile: float | None) -> WindowStat:
    lat = w.latency_ns()
    return WindowStat(
        index=w.index,
        start_ns=w.start_ns,
        duration_ns=w.duration_ns,
        request_count=w.count,
        error_count=w.error_count,
        throughput_infer_per_s=w.count * batch_size * 1e9 / w.duration_ns,
        latency_avg_us=float(lat.mean()) / 1000.0 if lat.size else 0.0,
        latency_stability_us=stability_latency_us(lat, percentile),
    )


def is_stable(stats: Sequence[WindowStat], *, pct: float, windows: int = 3) -> bool:
    """perf_analyzer's rule: the last `windows` windows agree within pct% (max/min) on throughput
    and on the stabilizing latency, and each has requests."""
    if len(stats) < windows:
        return False
    last = stats[-windows:]
    if any(s.request_count == 0 for s in last):
        return False
    bound = 1.0 + pct / 100.0
    for values in (
        [s.throughput_infer_per_s for s in last],
        [s.latency_stability_us for s in last],
    ):
        lo, hi = min(values), max(values)
        if lo <= 0 or hi / lo > bound:
            return False
    return True


def merge(windows: Sequence[RawWindow]) -> RawWindow:
    """Concatenate windows (consecutive windows of one process, or the same window of several
    worker processes) into one: counts add, arrays concatenate, the span covers all."""
    if not windows:
        raise ValueError("merge() needs at least one window")
    return RawWindow(
        index=windows[-1].index,
        start_ns=min(w.start_ns for w in windows),
        end_ns=max(w.end_ns for w in windows),
        sent_ns=np.concatenate([w.sent_ns for w in windows]),
        done_ns=np.concatenate([w.done_ns for w in windows]),
        intended_ns=np.concatenate([w.intended_ns for w in windows]),
        error_count=sum(w.error_count for w in windows),
        send_time_ns=sum(w.send_time_ns for w in windows),
        recv_time_ns=sum(w.recv_time_ns for w in windows),
        scheduled_count=sum(w.scheduled_count for w in windows),
        late_count=sum(w.late_count for w in windows),
        dropped_count=sum(w.dropped_count for w in windows),
        cpu_s=sum(w.cpu_s for w in windows),
        workers=max(w.workers for w in windows),
        sequence_count=sum(w.sequence_count for w in windows),
        response_count=sum(w.response_count for w in windows),
        sequence_ids=np.concatenate([w.sequence_ids for w in windows]),
        response_times=[t for w in windows for t in w.response_times],
    )


def merge_parallel(windows: Sequence[RawWindow]) -> RawWindow:
    """The same window measured by several worker processes: like `merge`, but the duration is the
    shared window (not the sum), and the worker count adds up."""
    m = merge(windows)
    m.workers = sum(w.workers for w in windows)
    return m
