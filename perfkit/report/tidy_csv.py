"""perfkit's tidy CSVs: one row per load level (results.csv) or per trial (trials.csv), the units in
the column names, lists as JSON in one cell. Pure rows, plus the one function that writes them and
the one that makes them a pandas DataFrame (`RunResult.to_pandas()`, `TuneResult.to_pandas()`).

Floats are rounded to what was measured (`measured_precision`): a latency in µs to the µs, a rate
to 0.1/s, a duration to the ms, anything else to 4 significant digits, so that no row carries float
noise such as `293.89414500000004`. The JSON keeps the full values.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perfkit.results import LatencySummary, Measurement, RunResult, TuneResult

if TYPE_CHECKING:
    import pandas as pd

JsonDict = dict[str, Any]

_PCTS = ("p50", "p90", "p95", "p99")


def _fmt_pct(p: float) -> str:
    return f"p{p:g}"


def _latency_cols(prefix: str, lat: LatencySummary | None, extras: Iterable[float]) -> JsonDict:
    row: JsonDict = {}
    names = ("avg", "std", "min", "max", *_PCTS)
    for name in names:
        row[f"{prefix}{name}_latency_us"] = getattr(lat, f"{name}_us") if lat else None
    for p in extras:
        value = lat.extra_percentiles_us.get(p) if lat else None
        row[f"{prefix}{_fmt_pct(p)}_latency_us"] = value
    return row


def metric_column(name: str, gpu: str) -> str:
    """CSV column of one scraped metric: the metric name, then `__<gpu uuid>` when per GPU."""
    return f"{name}__{gpu}" if gpu else name


def measurement_row(m: Measurement, extras: Iterable[float] = ()) -> JsonDict:
    """One tidy row (column -> value) for a load level. Units are in the column names."""
    extras = tuple(extras)
    s = m.server
    row: JsonDict = {
        "mode": m.mode,
        "concurrency": int(m.level) if m.mode == "concurrency" else None,
        "request_rate_rps": m.level if m.mode == "request_rate" else None,
        "batch_size": m.batch_size,
        "stable": m.stable,
        "request_count": m.request_count,
        "error_count": m.error_count,
        "duration_s": m.duration_ns / 1e9,
        "throughput_infer_per_s": m.throughput_infer_per_s,
        **_latency_cols("", m.latency, extras),
        **_latency_cols("corrected_", m.corrected_latency, extras if m.corrected_latency else ()),
        "send_rate_rps": m.send_rate_rps,
        "late_send_count": m.late_send_count,
        "send_lag_p99_us": m.send_lag_p99_us,
        "client_send_us": m.client_send_us,
        "client_recv_us": m.client_recv_us,
        "server_inference_count": s.inference_count if s else None,
        "server_execution_count": s.execution_count if s else None,
        "server_success_count": s.success_count if s else None,
        "server_failure_count": s.failure_count if s else None,
        "server_request_us": s.avg_request_us if s else None,
        "server_queue_us": s.queue_us if s else None,
        "server_compute_input_us": s.compute_input_us if s else None,
        "server_compute_infer_us": s.compute_infer_us if s else None,
        "server_compute_output_us": s.compute_output_us if s else None,
        "server_overhead_us": s.overhead_us if s else None,
        "network_server_send_recv_us": s.network_server_send_recv_us if s else None,
        "window_count": len(m.windows),
        "merged_window_count": sum(1 for w in m.windows if w.merged),
        "client_cpu_pct": m.client_cpu_pct,
        "client_cpu_us_per_request": m.client_cpu_us_per_request,
        "generator_saturated": m.generator_saturated,
    }
    row.update(_model_kind_cols(m))
    for name in sorted(m.metrics):
        for gpu in sorted(m.metrics[name]):
            row[metric_column(name, gpu)] = m.metrics[name][gpu]
    return row


def _model_kind_cols(m: Measurement) -> JsonDict:
    """The columns only some models have: sequences, decoupled responses, the response cache,
    and each composing model of an ensemble or BLS model (`composing_<name>_<field>`)."""
    row: JsonDict = {}
    if m.sequence_count is not None:
        row["sequence_count"] = m.sequence_count
        row["sequences_per_s"] = m.sequences_per_s
    if m.response_count is not None:
        row["response_count"] = m.response_count
        row["response_throughput_per_s"] = m.response_throughput_per_s
    s = m.server
    if s is None:
        return row
    if s.cache_enabled:
        row.update({
            "server_cache_hit_count": s.cache_hit_count,
            "server_cache_miss_count": s.cache_miss_count,
            "server_cache_hit_us": s.cache_hit_us,
            "server_cache_miss_us": s.cache_miss_us,
        })  # fmt: skip
    for c in s.composing:
        cs = c.server
        for key, value in (
            ("version", c.version), ("inference_count", cs.inference_count),
            ("execution_count", cs.execution_count), ("success_count", cs.success_count),
            ("request_us", cs.avg_request_us), ("queue_us", cs.queue_us),
            ("compute_input_us", cs.compute_input_us), ("compute_infer_us", cs.compute_infer_us),
            ("compute_output_us", cs.compute_output_us),
        ):  # fmt: skip
            row[f"composing_{c.name}_{key}"] = value
    return row


def _extra_percentiles(measurements: Iterable[Measurement]) -> list[float]:
    ps: set[float] = set()
    for m in measurements:
        ps.update(m.latency.extra_percentiles_us)
        if m.corrected_latency:
            ps.update(m.corrected_latency.extra_percentiles_us)
    return sorted(ps)


def _sig(value: float, digits: int) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def measured_precision(column: str, value: Any) -> Any:
    """A cell rounded to the precision its measurement has, by the unit its column name says:
    µs (latencies, times) to integers, rates (`_per_s`, `_rps`) to 0.1, seconds to 0.001,
    percentages to 0.1, other floats to 4 significant digits. Non-floats are unchanged."""
    if not isinstance(value, float) or not math.isfinite(value):
        return value
    name = column.split("__", 1)[0]  # a per-GPU metric column: "<metric>__<uuid>"
    if name.endswith("_us"):
        return float(round(value))
    if name.endswith(("_per_s", "_rps")):
        return round(value, 1)
    if name.endswith("_s"):
        return round(value, 3)
    if name.endswith("_pct"):
        return round(value, 1)
    return _sig(value, 4)


def _rounded(row: JsonDict) -> JsonDict:
    return {k: measured_precision(k, v) for k, v in row.items()}


def run_rows(result: RunResult) -> list[JsonDict]:
    """Tidy rows of a run: one per load level, in load order, with the run's identity first."""
    extras = _extra_percentiles(result.measurements)
    ident = {
        "model": result.model,
        "model_version": result.model_version,
        "config_hash": result.config_hash,
        "server_kind": result.server.kind,
        "started_at": result.started_at,
    }
    return [_rounded({**ident, **measurement_row(m, extras)}) for m in result.measurements]


def _cell(value: Any) -> Any:
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return value


def trial_rows(result: TuneResult) -> list[JsonDict]:
    """Tidy rows of a tune: one per trial, in trial order. Lists (e.g. preferred batch sizes)
    are JSON in one cell."""
    params = sorted({p for t in result.trials for p in t.params})
    objectives = list(result.objectives) + sorted(
        {o for t in result.trials for o in t.objectives} - set(result.objectives)
    )
    constraints = sorted({c for t in result.trials for c in t.constraints})
    measured = [t.measurement for t in result.trials if t.measurement is not None]
    extras = _extra_percentiles(measured)
    rows = []
    for t in result.trials:
        row: JsonDict = {
            "model": result.model,
            "trial": t.number,
            "variant_name": t.variant_name,
            "state": t.state,
            "feasible": t.feasible,
            "is_default": t.number == result.default_trial,
            "is_best": t.number == result.best_trial,
            "is_pareto": t.number in result.pareto_trials,
            "reason": t.reason or "",
            "duration_s": t.duration_s,
            "overhead_s": t.overhead_s,
        }
        row.update({f"param_{p}": _cell(t.params.get(p)) for p in params})
        row.update({f"objective_{o}": t.objectives.get(o) for o in objectives})
        row.update({f"constraint_{c}": t.constraints.get(c) for c in constraints})
        if t.measurement is not None:
            row.update(measurement_row(t.measurement, extras))
        for name, m in t.models.items():  # several models tuned together: each one's figures
            own = measurement_row(m)
            row.update({f"{name}.{k}": own[k] for k in _MODEL_COLUMNS if k in own})
        rows.append(_rounded(row))
    return rows


# A model group's per-model columns in trials.csv (`<model>.<column>`).
_MODEL_COLUMNS = (
    "concurrency",
    "request_rate_rps",
    "throughput_infer_per_s",
    "avg_latency_us",
    "p50_latency_us",
    "p99_latency_us",
    "error_count",
    "server_inference_count",
)


def write_csv(path: Path, rows: list[JsonDict]) -> None:
    columns: list[str] = []
    seen: set[str] = set()
    for row in rows:
        for key in row:
            if key not in seen:
                seen.add(key)
                columns.append(key)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else _cell(v) for k, v in row.items()})


def to_dataframe(rows: list[JsonDict]) -> pd.DataFrame:
    """Tidy rows as a pandas DataFrame: the CSV's columns in the CSV's order, None as NaN/None."""
    import pandas as pd  # lazy: the CSV writers do not need pandas loaded

    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    return pd.DataFrame.from_records(rows, columns=columns)
