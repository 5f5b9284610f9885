"""The "Server:" block of the `perfkit run` summary, as perf_analyzer prints it
(inference_profiler.cc ReportServerSideStats): counts, the average request latency and its split,
the response cache's figures when the model (or a composing model) enables it, and, for an
ensemble or a BLS model, each composing model's block, indented one level deeper, recursively.

An ensemble's (or BLS model's) own split adds up its composing models' averages (queue, compute,
cache), since its own queue and compute are theirs. Times are whole microseconds, as there.
"""

from __future__ import annotations

from dataclasses import dataclass

from perfkit.results import ServerBreakdown


@dataclass(frozen=True, slots=True)
class _Totals:
    queue: int = 0
    compute: int = 0
    hit: int = 0
    miss: int = 0
    combined: int = 0


def _compute_count(s: ServerBreakdown) -> int:
    # Requests computed: the successful ones not answered from the cache.
    return max(s.success_count - s.cache_hit_count, 0)


def _combined(s: ServerBreakdown) -> int:
    """perf_analyzer's combined cache + compute average over the computed and cached requests."""
    computed = _compute_count(s)
    n = computed + s.cache_hit_count
    if n == 0:
        return 0
    compute = s.compute_input_us + s.compute_infer_us + s.compute_output_us
    total = compute * computed + s.cache_hit_us * s.cache_hit_count
    total += s.cache_miss_us * s.cache_miss_count
    return int(total / n)


def _totals(s: ServerBreakdown) -> _Totals:
    """The sums over composing models (recursively) of their averages (GetTotalEnsembleDurations)."""
    q = c = h = m = k = 0
    for comp in s.composing:
        t = comp.server
        if t.composing:
            sub = _totals(t)
            q, c, h, m, k = (
                q + sub.queue,
                c + sub.compute,
                h + sub.hit,
                m + sub.miss,
                k + sub.combined,
            )
        else:
            q += int(t.queue_us)
            c += int(t.compute_input_us + t.compute_infer_us + t.compute_output_us)
            h += int(t.cache_hit_us)
            m += int(t.cache_miss_us)
            k += _combined(t)
    return _Totals(q, c, h, m, k)


def server_lines(s: ServerBreakdown, iteration: int = 1) -> list[str]:
    """The lines under "  Server: " for `s` (iteration 1), its composing models deeper."""
    ident = " " * (2 * iteration)
    if s.success_count == 0:
        return [f"{ident}  Request count: 0"]
    lines = [
        f"{ident}  Inference count: {s.inference_count}",
        f"{ident}  Execution count: {s.execution_count}",
    ]
    if s.cache_enabled:
        lines += [
            f"{ident}  Cache hit count: {s.cache_hit_count}",
            f"{ident}  Cache miss count: {s.cache_miss_count}",
        ]
    lines.append(f"{ident}  Successful request count: {s.success_count}")
    avg = int(s.avg_request_us)
    head = f"{ident}  Avg request latency: {avg} usec"
    queue, cin, cinf, cout = (
        int(s.queue_us), int(s.compute_input_us), int(s.compute_infer_us), int(s.compute_output_us),
    )  # fmt: skip
    if not s.composing:
        if s.cache_enabled:
            combined = _combined(s)
            lines.append(
                f"{head} (overhead {max(avg - queue - combined, 0)} usec + queue {queue} usec + "
                f"cache hit/miss {combined} usec)"
            )
            lines.append(f"{ident}{ident}  Average Cache Hit Latency: {int(s.cache_hit_us)} usec")
            miss = int(s.cache_miss_us)
            lines.append(
                f"{ident}{ident}  Average Cache Miss Latency: {miss + cin + cinf + cout} usec "
                f"(cache lookup/insertion {miss} usec + compute input {cin} usec + compute infer "
                f"{cinf} usec + compute output {cout} usec)"
            )
        else:
            compute = int(s.compute_input_us + s.compute_infer_us + s.compute_output_us)
            lines.append(
                f"{head} (overhead {max(avg - queue - compute, 0)} usec + queue {queue} usec + "
                f"compute input {cin} usec + compute infer {cinf} usec + compute output {cout} "
                "usec)"
            )
        return lines
    t = _totals(s)
    if s.cache_enabled:
        lines.append(
            f"{head} (overhead {max(avg - t.queue - t.combined, 0)} usec + queue {t.queue} usec "
            f"+ cache hit/miss {t.combined} usec)"
        )
        lines.append(f"{ident}{ident}  Average Cache Hit Latency: {t.hit} usec")
        lines.append(f"{ident}{ident}  Average Cache Miss Latency: {t.miss + t.compute} usec ")
    else:
        lines.append(
            f"{head} (overhead {max(avg - t.queue - t.compute, 0)} usec + queue {t.queue} usec "
            f"+ compute {t.compute} usec)"
        )
    lines += ["", f"{ident}Composing models: "]
    for comp in s.composing:
        lines.append(f"{ident}{comp.name}, version: {comp.version or '-1'}")
        lines += server_lines(comp.server, iteration + 1)
    return lines
