"""Read perf_analyzer's files as perfkit results: its `-f` latency report CSV (with or without
--verbose-csv, concurrency or request-rate mode; src/report_writer.cc's columns) as a `RunResult`
baseline, and a profile export JSON (perf_analyzer's or the one `perfkit run --output-dir` writes)
as per-request latencies for `perfkit compare`'s bootstrap.

A perf_analyzer CSV holds one row of averages and percentiles per level: no windows, no requests,
no model name, no batch size. The `RunResult` made from it has `model=""` (matches any model in
`compare_runs`), batch size 1 unless given, no windows (so `compare` compares it by percentage
only and says so), and a message naming the file.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from perfkit.errors import ConfigError
from perfkit.report.stats import RawRequests
from perfkit.results import LatencySummary, MachineInfo, Measurement, RunResult, ServerInfo

PROFILE_EXPORT = "profile_export.json"
_FIXED = {50.0, 90.0, 95.0, 99.0}


def is_pa_csv(path: Path) -> bool:
    """Does this file start with perf_analyzer's CSV header?"""
    if path.is_dir() or path.suffix.lower() != ".csv":
        return False
    try:
        with path.open(encoding="utf-8") as f:
            head = f.readline()
    except (OSError, UnicodeDecodeError):
        return False
    return head.startswith(("Concurrency,", "Request Rate,")) and "Inferences/Second" in head


def _num(row: dict[str, str], col: str, where: str) -> float:
    try:
        return float(row[col])
    except (KeyError, ValueError) as exc:
        raise ConfigError(
            f"{where}: column {col!r} is missing or not a number ({row.get(col)!r}); pass a CSV "
            "written by perf_analyzer -f (or perfkit run -f)."
        ) from exc


def read_pa_csv(path: Path | str, *, batch_size: int = 1) -> RunResult:
    """A perf_analyzer `-f` CSV as a `RunResult` (levels in load order, latencies in us)."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the perf_analyzer CSV: {exc}") from exc
    if not rows:
        raise ConfigError(f"{path}: the perf_analyzer CSV has no data row.")
    first = next(iter(rows[0]))
    if first not in ("Concurrency", "Request Rate"):
        raise ConfigError(
            f"{path}: first column is {first!r}, not 'Concurrency' or 'Request Rate'; not a "
            "perf_analyzer -f CSV."
        )
    mode: Any = "concurrency" if first == "Concurrency" else "request_rate"
    ms = []
    for i, row in enumerate(rows):
        where = f"{path}: row {i + 2}"
        pct = {
            float(col.split()[0][1:]): _num(row, col, where)
            for col in row
            if col and col.startswith("p") and col.endswith(" latency")
        }
        missing = _FIXED - set(pct)
        if missing:
            raise ConfigError(f"{where}: no p{min(missing):g} latency column.")
        avg = _num(row, "Avg latency", where) if row.get("Avg latency") else pct[50.0]
        thr = _num(row, "Inferences/Second", where)
        ms.append(
            Measurement(
                mode=mode,
                level=_num(row, first, where),
                batch_size=batch_size,
                stable=True,
                request_count=0,
                error_count=0,
                duration_ns=0,
                throughput_infer_per_s=thr,
                latency=LatencySummary(
                    count=0,
                    avg_us=avg,
                    std_us=float("nan"),
                    min_us=float("nan"),
                    max_us=float("nan"),
                    p50_us=pct[50.0],
                    p90_us=pct[90.0],
                    p95_us=pct[95.0],
                    p99_us=pct[99.0],
                    extra_percentiles_us={p: v for p, v in pct.items() if p not in _FIXED},
                ),
            )
        )
    ms.sort(key=lambda m: m.level)  # perf_analyzer sorts rows by throughput; load order here
    return RunResult(
        model="",
        model_version="",
        server=ServerInfo(url="", protocol="http", kind="perf_analyzer csv", version=""),
        model_config={},
        config_hash="",
        settings={"source": str(path)},
        measurements=tuple(ms),
        status="ok",
        started_at="",
        perfkit_version="",
        machine=MachineInfo(hostname="", cpu="", cpu_count=0),
        messages=(f"read from the perf_analyzer CSV {path}",),
    )


def read_requests(path: Path | str) -> list[RawRequests]:
    """Per experiment of a profile export JSON: the requests' latencies (us), completion times
    (s) and the first window's start (s), in the file's order."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        out: list[RawRequests] = []
        for exp in doc["experiments"]:
            reqs = exp["requests"]
            sent = np.array([r["timestamp"] for r in reqs], dtype=np.float64)
            done = np.array([r["response_timestamps"][-1] for r in reqs], dtype=np.float64)
            bounds = exp.get("window_boundaries") or [sent.min() if sent.size else 0.0]
            out.append(((done - sent) / 1e3, done / 1e9, float(bounds[0]) / 1e9))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ConfigError(
            f"{path}: not a readable profile export ({exc}); remove it or re-create it with "
            "`perfkit run --output-dir`."
        ) from exc
    return out


def requests_next_to(results_path: Path) -> list[RawRequests] | None:
    """The per-request data of a run's output directory (its profile_export.json), if any."""
    folder = results_path if results_path.is_dir() else results_path.parent
    export = folder / PROFILE_EXPORT
    return read_requests(export) if export.is_file() else None


__all__ = ["PROFILE_EXPORT", "is_pa_csv", "read_pa_csv", "read_requests", "requests_next_to"]
