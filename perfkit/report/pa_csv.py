"""perf_analyzer's `-f` latency report CSV, byte-compatible headers (src/report_writer.cc).

Column order is built as perf_analyzer builds it; values are integer microseconds (integer
division), throughput with C++ stream formatting (6 significant digits). Rows are sorted by
ascending Inferences/Second, as perf_analyzer sorts them, so scripts that parse its files keep
working; perfkit's own results.csv keeps load order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from perfkit.results import LoadMode, Measurement

FIXED_PERCENTILES = (50.0, 90.0, 95.0, 99.0)
GPU_COLUMNS = (
    ("Avg GPU Utilization", "gpu_utilization"),
    ("Avg GPU Power Usage", "gpu_power_usage"),
    ("Max GPU Memory Usage", "gpu_memory_used_bytes"),
    ("Total GPU Memory", "gpu_memory_total_bytes"),
)


def cfmt(x: float) -> str:
    """A double as C++ `ostream << x` prints it (precision 6, %g)."""
    return format(x, ".6g")


def _pct_label(p: float) -> str:
    return f"p{int(p)}" if float(p).is_integer() else f"p{p:g}"


def _percentiles(percentile: float | None) -> list[float]:
    ps = set(FIXED_PERCENTILES)
    if percentile is not None:
        ps.add(float(percentile))
    return sorted(ps)


def header(
    mode: LoadMode,
    *,
    server_stats: bool = True,
    verbose: bool = False,
    percentile: float | None = None,
    collect_metrics: bool = False,
) -> list[str]:
    """The header perf_analyzer writes for these options."""
    cols = [
        "Concurrency" if mode == "concurrency" else "Request Rate",
        "Inferences/Second",
        "Client Send",
    ]
    if server_stats:
        cols += [
            "Network+Server Send/Recv",
            "Server Queue",
            "Server Compute Input",
            "Server Compute Infer",
            "Server Compute Output",
        ]
    cols.append("Client Recv")
    cols += [f"{_pct_label(p)} latency" for p in _percentiles(percentile)]
    if verbose:
        if percentile is None:
            cols.append("Avg latency")
        cols += ["request/response", "response wait"]
        if collect_metrics:
            cols += [c for c, _ in GPU_COLUMNS]
    return cols


def _us(x: float) -> str:
    return str(int(max(x, 0.0)))


def _gpu_cell(m: Measurement, key: str) -> str:
    vals = m.metrics.get(key, {})
    return "".join(f"{uuid}:{cfmt(v)};" for uuid, v in vals.items() if uuid)


def row(
    m: Measurement,
    *,
    server_stats: bool = True,
    verbose: bool = False,
    percentile: float | None = None,
    collect_metrics: bool = False,
) -> list[str]:
    level = str(int(m.level)) if m.mode == "concurrency" else cfmt(m.level)
    send = int(m.client_send_us)
    recv = int(m.client_recv_us)
    cells = [level, cfmt(m.throughput_infer_per_s), str(send)]
    if server_stats:
        s = m.server
        if s is None:
            cells += ["0"] * 5
        else:
            cells += [
                _us(s.network_server_send_recv_us),
                _us(s.queue_us),
                _us(s.compute_input_us),
                _us(s.compute_infer_us),
                _us(s.compute_output_us),
            ]
    cells.append(str(recv))
    cells += [_us(m.latency.percentile_us(p)) for p in _percentiles(percentile)]
    if verbose:
        avg = int(m.latency.avg_us)
        if percentile is None:
            cells.append(str(avg))
        cells += [str(send + recv), str(max(avg - send - recv, 0))]
        if collect_metrics:
            cells += [_gpu_cell(m, key) for _, key in GPU_COLUMNS]
    return cells


def render(
    measurements: Sequence[Measurement],
    *,
    server_stats: bool | None = None,
    verbose: bool = False,
    percentile: float | None = None,
    collect_metrics: bool = False,
) -> str:
    """The CSV text. `server_stats` defaults to whether any level has server statistics."""
    if not measurements:
        return ""
    mode = measurements[0].mode
    if server_stats is None:
        server_stats = any(m.server is not None for m in measurements)
    lines = [
        ",".join(
            header(
                mode,
                server_stats=server_stats,
                verbose=verbose,
                percentile=percentile,
                collect_metrics=collect_metrics,
            )
        )
    ]
    for m in sorted(measurements, key=lambda m: m.throughput_infer_per_s):
        cells = row(
            m,
            server_stats=server_stats,
            verbose=verbose,
            percentile=percentile,
            collect_metrics=collect_metrics,
        )
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def write(
    path: str | Path,
    measurements: Sequence[Measurement],
    *,
    server_stats: bool | None = None,
    verbose: bool = False,
    percentile: float | None = None,
    collect_metrics: bool = False,
) -> Path:
    """Write the CSV (see `render`); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(
        render(
            measurements,
            server_stats=server_stats,
            verbose=verbose,
            percentile=percentile,
            collect_metrics=collect_metrics,
        )
    )
    return p
