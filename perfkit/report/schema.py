"""The versioned results schema: RunResult/TuneResult <-> JSON, and the tidy CSVs. Stdlib only.

Layout (documented in docs/results-schema.md): the JSON is the dataclass fields of
`perfkit.results` at the top level, plus `"schema": "perfkit.run" | "perfkit.tune"` and
`"schema_version"`. Older versions are read through explicit upgrade functions (`_UPGRADES`);
newer versions and unknown schemas are refused with a `ConfigError` that says what to do.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar, Union

from perfkit import __version__
from perfkit.errors import ConfigError
from perfkit.results import LatencySummary, Measurement, RunResult, TuneResult

SCHEMA_VERSION = 1
RUN_SCHEMA = "perfkit.run"
TUNE_SCHEMA = "perfkit.tune"
RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
TRIALS_CSV = "trials.csv"

T = TypeVar("T")
AnyResult = RunResult | TuneResult
JsonDict = dict[str, Any]

# ---------------------------------------------------------------------------------------------
# Encoding


def _encode(value: Any) -> Any:
    """Dataclass values -> JSON-ready values. Non-finite floats become null (strict JSON)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {_encode_key(k): _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _encode_key(key: Any) -> str:
    # JSON object keys are strings; the decoder turns them back into the annotated key type.
    if isinstance(key, float) and key.is_integer():
        return repr(key)  # "99.0", so that it reads back as a float key
    return str(key)


def encode_value(value: Any) -> Any:
    """The JSON form of any result value (a Measurement, a TrialRecord, ...)."""
    return _encode(value)


def run_to_dict(result: RunResult) -> JsonDict:
    """The JSON form of a run (current schema version)."""
    return {"schema": RUN_SCHEMA, "schema_version": SCHEMA_VERSION, **_encode(result)}


def tune_to_dict(result: TuneResult) -> JsonDict:
    """The JSON form of a tune (current schema version)."""
    return {"schema": TUNE_SCHEMA, "schema_version": SCHEMA_VERSION, **_encode(result)}


def result_to_dict(result: AnyResult) -> JsonDict:
    return run_to_dict(result) if isinstance(result, RunResult) else tune_to_dict(result)


# ---------------------------------------------------------------------------------------------
# Decoding: driven by the dataclass annotations, so the schema cannot drift from results.py.


class _DecodeError(Exception):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")


def _decode(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _decode(inner[0], value, where)
    if origin is typing.Literal:
        if value not in args:
            raise _DecodeError(where, f"{value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _decode_dataclass(tp, value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise _DecodeError(where, f"expected a list, found {type(value).__name__}")
        item = args[0]
        return tuple(_decode(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise _DecodeError(where, f"expected an object, found {type(value).__name__}")
        key_tp, val_tp = args
        return {
            _decode_key(key_tp, k, where): _decode(val_tp, v, f"{where}.{k}")
            for k, v in value.items()
        }
    if tp is float:
        if value is None:
            return math.nan
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _DecodeError(where, f"expected a number, found {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _DecodeError(where, f"expected an integer, found {value!r}")
        return value
    if tp is bool or tp is str:
        if not isinstance(value, tp):
            raise _DecodeError(where, f"expected {tp.__name__}, found {value!r}")
        return value
    return value  # Any


def _decode_key(tp: Any, key: str, where: str) -> Any:
    try:
        return tp(key) if tp in (int, float) else key
    except ValueError as exc:
        raise _DecodeError(where, f"key {key!r} is not {tp.__name__}") from exc


def _decode_dataclass(cls: type[T], value: Any, where: str) -> T:
    if not isinstance(value, dict):
        raise _DecodeError(where, f"expected an object, found {type(value).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in value:
            has_default = (
                f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            )
            if has_default:
                continue
            raise _DecodeError(where, f"missing key {f.name!r}")
        kwargs[f.name] = _decode(hints[f.name], value[f.name], f"{where}.{f.name}")
    return cls(**kwargs)


def decode_value(cls: type[T], value: Any, where: str = "$") -> T:
    """A result dataclass (e.g. Measurement) from its JSON form; `ConfigError` names the key."""
    try:
        return _decode_dataclass(cls, value, where)
    except _DecodeError as exc:
        raise ConfigError(f"{exc}: does not match {cls.__name__}.") from exc


# ---------------------------------------------------------------------------------------------
# Upgrades from older layouts. Each takes the JSON of version N and returns version N+1.


def _latency_from_ms(ms: Mapping[str, Any]) -> JsonDict:
    us = {k: float(v) * 1000.0 for k, v in ms.items() if k != "count"}
    return {
        "count": int(ms.get("count", 0)),
        **{f"{k}_us": us.get(k, math.nan) for k in ("avg", "std", "min", "max")},
        **{f"{k}_us": us[k] for k in ("p50", "p90", "p95", "p99")},
    }


def _upgrade_run_v0(doc: JsonDict) -> JsonDict:
    """v0 (pre-release, 0.0.x): levels in `levels`, latencies in milliseconds under `latency_ms`,
    `throughput` for infer/s, `concurrency` or `request_rate` keys instead of mode+level, a flat
    `server_url`, and no machine or config record."""
    measurements = []
    for lv in doc["levels"]:
        mode = "concurrency" if "concurrency" in lv else "request_rate"
        m: JsonDict = {
            "mode": mode,
            "level": float(lv[mode]),
            "batch_size": int(lv.get("batch", 1)),
            "stable": bool(lv.get("stable", True)),
            "request_count": int(lv["requests"]),
            "error_count": int(lv.get("errors", 0)),
            "duration_ns": int(float(lv["duration_s"]) * 1e9),
            "throughput_infer_per_s": float(lv["throughput"]),
            "latency": _latency_from_ms({"count": lv["requests"], **lv["latency_ms"]}),
        }
        if "server_ms" in lv:
            s = {k: float(v) * 1000.0 for k, v in lv["server_ms"].items()}
            m["server"] = {
                "inference_count": int(lv["requests"]) * int(lv.get("batch", 1)),
                "execution_count": int(lv["requests"]),
                "success_count": int(lv["requests"]),
                "failure_count": 0,
                "avg_request_us": sum(s.values()),
                "queue_us": s.get("queue", 0.0),
                "compute_input_us": s.get("compute_input", 0.0),
                "compute_infer_us": s.get("compute_infer", 0.0),
                "compute_output_us": s.get("compute_output", 0.0),
                "overhead_us": 0.0,
                "network_server_send_recv_us": 0.0,
            }
        measurements.append(m)
    url = str(doc.get("server_url", "unknown"))
    return {
        "schema": RUN_SCHEMA,
        "schema_version": 1,
        "model": doc["model"],
        "model_version": str(doc.get("model_version", "")),
        "server": {
            "url": url,
            "protocol": "grpc" if url.startswith("grpc") or ":8001" in url else "http",
            "kind": doc.get("server", "unknown"),
            "version": doc.get("server_version", "unknown"),
        },
        "model_config": {},
        "config_hash": "",
        "settings": doc.get("settings", {}),
        "measurements": measurements,
        "status": "ok" if all(m["stable"] for m in measurements) else "unstable",
        "started_at": doc["time"],
        "perfkit_version": doc.get("perfkit", "0.0.0"),
        "machine": {"hostname": doc.get("host", "unknown"), "cpu": "unknown", "cpu_count": 0},
        "messages": ["upgraded from results schema v0 (no machine or model config recorded)"],
    }


# (schema, version) -> function returning the document at version + 1.
_UPGRADES: dict[tuple[str, int], Callable[[JsonDict], JsonDict]] = {
    (RUN_SCHEMA, 0): _upgrade_run_v0,
}
_OLDEST = {RUN_SCHEMA: 0, TUNE_SCHEMA: 1}


def _identify(doc: JsonDict, source: str) -> tuple[str, int]:
    if "schema" in doc:
        schema, version = doc["schema"], doc.get("schema_version")
    elif doc.get("format") == "perfkit.results":  # the v0 pre-release marker
        schema, version = RUN_SCHEMA, doc.get("version")
    else:
        raise ConfigError(
            f"{source}: not a perfkit results file (no 'schema' key). Pass the results.json that "
            "`perfkit run --output-dir` or `perfkit tune --output` writes, or that directory."
        )
    if schema not in _OLDEST:
        raise ConfigError(
            f"{source}: unknown results schema {schema!r}; this perfkit reads "
            f"{RUN_SCHEMA!r} and {TUNE_SCHEMA!r}. Pass a perfkit results.json."
        )
    if not isinstance(version, int) or isinstance(version, bool):
        raise ConfigError(f"{source}: 'schema_version' must be an integer, found {version!r}.")
    supported = f"{_OLDEST[schema]} to {SCHEMA_VERSION}"
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"{source}: results schema {schema} version {version} is newer than this perfkit "
            f"{__version__} reads (versions {supported}). Upgrade perfkit "
            "(pip install -U perfkit) to read it, or re-create the results with this version."
        )
    if version < _OLDEST[schema]:
        raise ConfigError(
            f"{source}: results schema {schema} version {version} is too old; this perfkit "
            f"{__version__} reads versions {supported}. Re-create the results with this version."
        )
    return schema, version


def upgrade(doc: JsonDict, source: str = "<results>") -> JsonDict:
    """Bring a results document of any supported version to the current version."""
    schema, version = _identify(doc, source)
    while version < SCHEMA_VERSION:
        doc = _UPGRADES[(schema, version)](doc)
        version += 1
    return doc


def result_from_dict(doc: JsonDict, source: str = "<results>") -> AnyResult:
    """Decode a results document (any supported version) into a RunResult or TuneResult."""
    doc = upgrade(doc, source)
    body = {k: v for k, v in doc.items() if k not in ("schema", "schema_version")}
    cls: type[AnyResult] = RunResult if doc["schema"] == RUN_SCHEMA else TuneResult
    try:
        return _decode_dataclass(cls, body, "$")
    except _DecodeError as exc:
        raise ConfigError(
            f"{source}: results do not match schema {doc['schema']} v{SCHEMA_VERSION}: {exc}. "
            "The file was edited or truncated; re-create it with `perfkit run`/`perfkit tune`."
        ) from exc


def resolve_result_path(path: Path) -> Path:
    """A results file, or the results.json inside a run's or a tune's output directory."""
    path = Path(path)
    if path.is_dir():
        # A run's --output-dir holds results.json; a tune's --output holds results/results.json.
        for candidate in (path / RESULTS_JSON, path / "results" / RESULTS_JSON):
            if candidate.is_file():
                return candidate
        raise ConfigError(
            f"{path}: directory has no {RESULTS_JSON} (nor results/{RESULTS_JSON}). Pass the "
            "--output-dir of a `perfkit run` or the --output of a `perfkit tune`, or a results "
            "JSON file."
        )
    if not path.is_file():
        raise ConfigError(f"{path}: no such results file or directory.")
    return path


def load_result(path: Path | str) -> AnyResult:
    """Read a results JSON file, or a directory containing results.json."""
    file = resolve_result_path(Path(path))
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read results: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{file}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})."
        ) from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{file}: expected a JSON object at the top level.")
    return result_from_dict(doc, str(file))


# ---------------------------------------------------------------------------------------------
# Tidy CSV rows


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
    for name in sorted(m.metrics):
        for gpu in sorted(m.metrics[name]):
            row[metric_column(name, gpu)] = m.metrics[name][gpu]
    return row


def _extra_percentiles(measurements: Iterable[Measurement]) -> list[float]:
    ps: set[float] = set()
    for m in measurements:
        ps.update(m.latency.extra_percentiles_us)
        if m.corrected_latency:
            ps.update(m.corrected_latency.extra_percentiles_us)
    return sorted(ps)


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
    return [{**ident, **measurement_row(m, extras)} for m in result.measurements]


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
        rows.append(row)
    return rows


def _write_csv(path: Path, rows: list[JsonDict]) -> None:
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


def _write_json(path: Path, doc: JsonDict) -> None:
    text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # atomic: a crash never leaves a half-written results file


def _ensure_dir(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{out_dir}: cannot create the output directory: {exc}") from exc
    return out_dir


def write_run(result: RunResult, out_dir: Path) -> list[Path]:
    """Write results.json and results.csv (tidy, one row per level) into out_dir."""
    out_dir = _ensure_dir(out_dir)
    json_path, csv_path = out_dir / RESULTS_JSON, out_dir / RESULTS_CSV
    _write_json(json_path, run_to_dict(result))
    _write_csv(csv_path, run_rows(result))
    return [json_path, csv_path]


def write_tune(result: TuneResult, out_dir: Path) -> list[Path]:
    """Write results.json and trials.csv (tidy, one row per trial) into out_dir."""
    out_dir = _ensure_dir(out_dir)
    json_path, csv_path = out_dir / RESULTS_JSON, out_dir / TRIALS_CSV
    _write_json(json_path, tune_to_dict(result))
    _write_csv(csv_path, trial_rows(result))
    return [json_path, csv_path]


__all__ = [
    "RESULTS_CSV",
    "RESULTS_JSON",
    "SCHEMA_VERSION",
    "TRIALS_CSV",
    "decode_value",
    "encode_value",
    "load_result",
    "measurement_row",
    "result_from_dict",
    "result_to_dict",
    "run_rows",
    "run_to_dict",
    "trial_rows",
    "tune_to_dict",
    "upgrade",
    "write_run",
    "write_tune",
]
