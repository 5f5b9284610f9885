"""perf_analyzer's `-f` latency report CSV, byte-compatible headers (src/report_writer.cc).

Column order is built as perf_analyzer builds it; values are integer microseconds (integer
division), throughput with C++ stream formatting (6 significant digits). Rows are sorted by
ascending Inferences/Second, as perf_analyzer sorts them, so scripts that parse its files keep
working; perfkit's own results.csv keeps load order. A decoupled model adds "Response
Throughput", the response cache "Server Cache Hit" / "Server Cache Miss"; an ensemble or BLS
model's composing models each get their own file, `<name>_v<version>.<file>` (`write_composing`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from perfkit.results import LoadMode, Measurement, ServerBreakdown

FIXED_PERCENTILES = (50.0, 90.0, 95.0, 99.0)
GPU_COLUMNS = (
    ("Avg GPU Utilization", "gpu_utilization"),
    ("Avg GPU Power Usage", "gpu_power_usage"),
    ("Max GPU Memory Usage", "gpu_memory_used_bytes"),
    ("Total GPU Memory", "gpu_memory_total_bytes"),
)


SERVER_COLUMNS = [
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
]
CACHE_COLUMNS = ["Server Cache Hit", "Server Cache Miss"]


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
    cache: bool = False,
    decoupled: bool = False,
) -> list[str]:
    """The header perf_analyzer writes for these options (`cache`: the response cache is on;
    `decoupled`: a decoupled model)."""
    cols = ["Concurrency" if mode == "concurrency" else "Request Rate", "Inferences/Second"]
    if decoupled:
        cols.append("Response Throughput")
    cols.append("Client Send")
    if server_stats:
        cols += SERVER_COLUMNS
        if cache:
            cols += CACHE_COLUMNS
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


def _level(m: Measurement) -> str:
    return str(int(m.level)) if m.mode == "concurrency" else cfmt(m.level)


def _server_cells(s: ServerBreakdown | None, cache: bool) -> list[str]:
    if s is None:
        return ["0"] * (7 if cache else 5)
    cells = [
        _us(s.network_server_send_recv_us),
        _us(s.queue_us),
        _us(s.compute_input_us),
        _us(s.compute_infer_us),
        _us(s.compute_output_us),
    ]
    if cache:
        cells += [_us(s.cache_hit_us), _us(s.cache_miss_us)]
    return cells


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
    cache: bool = False,
    decoupled: bool = False,
) -> list[str]:
    send = int(m.client_send_us)
    recv = int(m.client_recv_us)
    cells = [_level(m), cfmt(m.throughput_infer_per_s)]
    if decoupled:
        cells.append(cfmt(m.response_throughput_per_s))
    cells.append(str(send))
    if server_stats:
        cells += _server_cells(m.server, cache)
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
    opts: dict[str, Any] = {
        "server_stats": server_stats,
        "verbose": verbose,
        "percentile": percentile,
        "collect_metrics": collect_metrics,
        "cache": any(m.server is not None and m.server.cache_enabled for m in measurements),
        "decoupled": any(m.response_count is not None for m in measurements),
    }
    lines = [",".join(header(mode, **opts))]
    lines += [
        ",".join(row(m, **opts))
        for m in sorted(measurements, key=lambda m: m.throughput_infer_per_s)
    ]
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


def composing_files(path: str | Path, measurements: Sequence[Measurement]) -> dict[Path, str]:
    """perf_analyzer's composing-model CSVs next to `path`: one per composing model of the first
    level (`<name>_v<version>.<file name>`), each row a level with that model's breakdown, its
    Inferences/Second scaled by its share of the model's successful requests, Client Send and
    Client Recv 0, and its request time beyond queue, compute and cache in the
    "Network+Server Send/Recv" column, as perf_analyzer writes them."""
    ms = [m for m in measurements if m.server is not None]
    if not ms or not ms[0].server or not ms[0].server.composing:
        return {}
    p = Path(path)
    cache = any(m.server is not None and m.server.cache_enabled for m in ms)
    out: dict[Path, str] = {}
    for comp in ms[0].server.composing:
        cols = [
            "Concurrency" if ms[0].mode == "concurrency" else "Request Rate",
            "Inferences/Second",
            "Client Send",
            *SERVER_COLUMNS,
            *(CACHE_COLUMNS if cache else []),
            "Client Recv",
        ]
        lines = [",".join(cols)]
        for m in sorted(ms, key=lambda m: m.throughput_infer_per_s):
            assert m.server is not None
            mine = next((c.server for c in m.server.composing if c.name == comp.name), None)
            total = m.server.success_count
            ratio = mine.success_count / total if mine is not None and total > 0 else 0.0
            cells = [_level(m), cfmt(ratio * m.throughput_infer_per_s), "0"]
            cells += [*_server_cells(mine, cache), "0"]
            lines.append(",".join(cells))
        out[p.with_name(f"{comp.name}_v{comp.version or '-1'}.{p.name}")] = "\n".join(lines) + "\n"
    return out


def write_composing(path: str | Path, measurements: Sequence[Measurement]) -> list[Path]:
    """Write `composing_files`; returns their paths."""
    written = []
    for p, text in composing_files(path, measurements).items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        written.append(p)
    return written
