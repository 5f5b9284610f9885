"""The `perfkit run` stdout summary in perf_analyzer's shape (src/perf_analyzer.cc, inference_profiler.cc).

Plain text (the CLI prints it). perfkit's additions (corrected latency and late sends in open
loop, the generator's own CPU use, saturation) are extra lines inside the same blocks, so a reader
of perf_analyzer output finds every line where it expects it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from perfkit.report.pa_server import server_lines
from perfkit.results import Measurement, RunResult


def _p(p: float) -> str:
    return f"p{int(p)}" if float(p).is_integer() else f"p{p:g}"


def settings_block(
    result: RunResult | Mapping[str, Any], *, percentile: float | None, verbose: bool = False
) -> list[str]:
    # A RunResult, or its settings alone (`perfkit run` piped prints this before any level).
    s = result.settings if isinstance(result, RunResult) else result
    lines = ["*** Measurement Settings ***", f"  Batch size: {s.get('batch_size', 1)}"]
    lines.append("  Service Kind: Triton")
    if s.get("warmup_request_count"):
        lines.append(f"  Sending {s['warmup_request_count']} warmup requests")
    if s.get("request_count"):
        lines.append(f"  Sending {s['request_count']} benchmark requests")
    else:
        lines.append(
            f'  Using "{s.get("measurement_mode", "time_windows")}" mode for stabilization'
        )
        if percentile is None:
            lines.append("  Stabilizing using average latency and throughput")
        else:
            lines.append(f"  Stabilizing using {_p(percentile)}latency and throughput")
        if s.get("measurement_mode") == "count_windows":
            lines.append(
                f"  Minimum number of samples in each window: {s.get('measurement_request_count')}"
            )
        else:
            lines.append(f"  Measurement window: {s.get('measurement_interval_ms')} msec")
    if s.get("load_mode") == "concurrency":
        levels = s.get("concurrency_levels") or [1]
        if len(levels) > 1 or levels[-1] != 1:
            lines.append(
                f"  Latency limit: {s.get('latency_threshold_ms', 0):g} msec / Concurrency limit: "
                f"{max(levels)} concurrent requests"
            )
    else:
        dist = "uniform" if s.get("request_distribution") == "constant" else "poisson"
        if s.get("request_intervals"):
            lines.append(f"  Using custom request intervals from {s['request_intervals']}")
        else:
            lines.append(f"  Using {dist} distribution on request generation")
    if s.get("binary_search"):
        lines.append("  Using Binary Search algorithm")
    lines.append("  Using asynchronous calls for inference")
    if s.get("decoupled"):
        # perf_analyzer says "first response" here, but ends a request's latency at its last
        # response with outputs; so does perfkit, and says so.
        lines.append("  Detected decoupled model, using the last response for measuring latency")
    if int(s.get("workers", 1)) > 1:
        lines.append(f"  Using {s['workers']} load-generator processes (perfkit --workers)")
    return lines


def level_block(
    m: Measurement, *, protocol: str, percentile: float | None, verbose: bool = False
) -> list[str]:
    if m.mode == "concurrency":
        lines = [f"Request concurrency: {int(m.level)}"]
    else:
        lines = [f"Request Rate: {m.level:g} inference requests per second"]
    if not m.stable:
        lines[0] += " (UNSTABLE: not stable within the measurement windows)"
    if verbose:
        for win in m.windows:
            lines.append(
                f"  Pass [{win.index + 1}] throughput: {win.throughput_infer_per_s:.2f} infer/sec. "
                f"Avg latency: {int(win.latency_avg_us)} usec" + (" (merged)" if win.merged else "")
            )
    lat = m.latency
    lines += ["  Client: ", f"    Request count: {m.request_count}"]
    if m.send_rate_rps is not None:
        lines.append(f"    Avg send request rate: {m.send_rate_rps:.2f} infer/sec")
    for w in m.warnings:
        if "keep up with the desired request rate" in w:
            lines.append(f"    [WARNING] {w}")
    if m.sequence_count is not None:
        lines.append(f"    Sequence count: {m.sequence_count} ({m.sequences_per_s:g} seq/sec)")
    lines.append(f"    Throughput: {m.throughput_infer_per_s:.2f} infer/sec")
    if m.response_count is not None:
        lines.append(f"    Response Throughput: {m.response_throughput_per_s:.2f} infer/sec")
    if verbose or m.generator_saturated:
        lines.append(
            f"    Generator CPU: {m.client_cpu_pct:.1f}% of a core, "
            f"{m.client_cpu_us_per_request:.1f} CPU-usec per request"
        )
    if percentile is None:
        lines.append(
            f"    Avg latency: {int(lat.avg_us)} usec (standard deviation {int(lat.std_us)} usec)"
        )
    ps = sorted(
        {50.0, 90.0, 95.0, 99.0} | ({float(percentile)} if percentile is not None else set())
    )
    for p in ps:
        lines.append(f"    {_p(p)} latency: {int(lat.percentile_us(p))} usec")
    if m.corrected_latency is not None:
        c = m.corrected_latency
        lines.append(
            f"    Corrected latency (from the scheduled send time): avg {int(c.avg_us)} usec, "
            f"p50 {int(c.p50_us)} usec, p99 {int(c.p99_us)} usec"
        )
        lines.append(
            f"    Late sends: {m.late_send_count} (send lag p99 {int(m.send_lag_p99_us)} usec)"
        )
    send, recv = int(m.client_send_us), int(m.client_recv_us)
    wait = max(int(lat.avg_us) - send - recv, 0)
    if m.response_count is not None:
        # A decoupled model: perf_analyzer keeps no client library times, and prints the line
        # empty.
        lines.append("    ")
    elif protocol == "grpc":
        lines.append(
            f"    Avg gRPC time: {int(lat.avg_us)} usec ((un)marshal request/response "
            f"{send + recv} usec + response wait {wait} usec)"
        )
    else:
        lines.append(
            f"    Avg HTTP time: {int(lat.avg_us)} usec (send/recv {send + recv} usec + "
            f"response wait {wait} usec)"
        )
    s = m.server
    if s is not None:
        lines += ["  Server: ", *server_lines(s)]
    gpu = {k: v for k, v in m.metrics.items() if v}
    if gpu:
        names = {
            "gpu_utilization": ("Avg GPU Utilization", "%", 100.0),
            "gpu_power_usage": ("Avg GPU Power Usage", " watts", 1.0),
            "gpu_memory_used_bytes": ("Max GPU Memory Usage", " bytes", 1.0),
            "gpu_memory_total_bytes": ("Total GPU Memory", " bytes", 1.0),
        }
        lines.append("  Server Prometheus Metrics: ")
        for key, (title, unit, scale) in names.items():
            if key in gpu:
                lines.append(f"    {title}:")
                for uuid, v in gpu[key].items():
                    lines.append(f"      {uuid} : {v * scale:.0f}{unit}")
    for w in m.warnings:
        if "keep up with the desired request rate" not in w:
            lines.append(f"  [WARNING] {w}")
    return lines


def summary(result: RunResult, *, percentile: float | None = None, verbose: bool = False) -> str:
    """The whole summary: settings, one block per level, the throughput/latency table."""
    proto = result.server.protocol
    lines = settings_block(result, percentile=percentile, verbose=verbose)
    for m in result.measurements:
        lines.append("")
        lines += level_block(m, protocol=proto, percentile=percentile, verbose=verbose)
    if any(m.generator_saturated for m in result.measurements):
        lines.append(
            "[WARNING] perfkit is not able to keep up with the desired load. The results may not "
            "be accurate."
        )
    lines.append("")
    lines += final_table(result.measurements, percentile=percentile)
    return "\n".join(lines)


def final_table(ms: Sequence[Measurement], *, percentile: float | None) -> list[str]:
    kind = "Average" if percentile is None else _p(percentile)
    lines = [f"Inferences/Second vs. Client {kind} Batch Latency"]
    for m in ms:
        lat = m.latency.avg_us if percentile is None else m.latency.percentile_us(percentile)
        head = (
            f"Concurrency: {int(m.level)}"
            if m.mode == "concurrency"
            else f"Request Rate: {m.level:g}"
        )
        lines.append(
            f"{head}, throughput: {m.throughput_infer_per_s:.2f} infer/sec, latency {int(lat)} usec"
            + ("" if m.stable else " (unstable)")
        )
    return lines
