"""The versioned results schema: RunResult/TuneResult <-> results.json, and the files a run or a
tune writes (results.json plus the tidy CSV). Stdlib only.

Layout (documented in docs/results-schema.md): the JSON is the dataclass fields of
`perfkit.results` at the top level, plus `"schema": "perfkit.run" | "perfkit.tune"` and
`"schema_version"`. Reading goes through `perfkit.report.migrate` (older versions upgraded, newer
ones refused) and `perfkit.report.codec` (JSON <-> dataclasses); the CSV rows are
`perfkit.report.tidy_csv`'s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perfkit.errors import ConfigError
from perfkit.report.codec import DecodeError, decode_dataclass, decode_value, encode_value
from perfkit.report.migrate import RUN_SCHEMA, SCHEMA_VERSION, TUNE_SCHEMA, upgrade
from perfkit.report.tidy_csv import measurement_row, run_rows, trial_rows, write_csv
from perfkit.results import Measurement, RunResult, TuneResult

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
TRIALS_CSV = "trials.csv"

AnyResult = RunResult | TuneResult
JsonDict = dict[str, Any]

# ---------------------------------------------------------------------------------------------
# Write


def run_to_dict(result: RunResult) -> JsonDict:
    """The JSON form of a run (current schema version)."""
    return {"schema": RUN_SCHEMA, "schema_version": SCHEMA_VERSION, **encode_value(result)}


def tune_to_dict(result: TuneResult) -> JsonDict:
    """The JSON form of a tune (current schema version)."""
    return {"schema": TUNE_SCHEMA, "schema_version": SCHEMA_VERSION, **encode_value(result)}


def result_to_dict(result: AnyResult) -> JsonDict:
    return run_to_dict(result) if isinstance(result, RunResult) else tune_to_dict(result)


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
    write_csv(csv_path, run_rows(result))
    return [json_path, csv_path]


def write_tune(result: TuneResult, out_dir: Path) -> list[Path]:
    """Write results.json and trials.csv (tidy, one row per trial) into out_dir."""
    out_dir = _ensure_dir(out_dir)
    json_path, csv_path = out_dir / RESULTS_JSON, out_dir / TRIALS_CSV
    _write_json(json_path, tune_to_dict(result))
    write_csv(csv_path, trial_rows(result))
    return [json_path, csv_path]


# ---------------------------------------------------------------------------------------------
# GPU metrics of a level

MB = 1e6  # Model Analyzer's MB (bytes / 1e6)
# GpuLevel field -> its Measurement.metrics key (perf_analyzer's names, perfkit.load.metrics_scrape).
_GPU_KEYS = {
    "utilization": "gpu_utilization",
    "memory_used": "gpu_memory_used_bytes",
    "memory_total": "gpu_memory_total_bytes",
    "power": "gpu_power_usage",
}


@dataclass(frozen=True, slots=True)
class GpuLevel:
    """One GPU over one load level, from `Measurement.metrics` (perf_analyzer's aggregation):
    utilization the mean (fraction 0..1), memory used the peak and total (MB), power the mean (W).
    A value the level has no sample of is None."""

    uuid: str
    utilization: float | None
    memory_used_mb: float | None
    memory_total_mb: float | None
    power_w: float | None


def level_gpus(m: Measurement) -> list[GpuLevel]:
    """The GPUs of a level's collected metrics, by UUID (empty without GPU metrics)."""
    per: dict[str, dict[str, float]] = {}
    for field, key in _GPU_KEYS.items():
        for uuid, value in m.metrics.get(key, {}).items():
            if uuid:
                per.setdefault(uuid, {})[field] = float(value)
    out = []
    for uuid in sorted(per):
        v = per[uuid]
        used, total = v.get("memory_used"), v.get("memory_total")
        out.append(
            GpuLevel(
                uuid=uuid,
                utilization=v.get("utilization"),
                memory_used_mb=None if used is None else used / MB,
                memory_total_mb=None if total is None else total / MB,
                power_w=v.get("power"),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# Read


def result_from_dict(doc: JsonDict, source: str = "<results>") -> AnyResult:
    """Decode a results document (any supported version) into a RunResult or TuneResult."""
    doc = upgrade(doc, source)
    body = {k: v for k, v in doc.items() if k not in ("schema", "schema_version")}
    cls: type[AnyResult] = RunResult if doc["schema"] == RUN_SCHEMA else TuneResult
    try:
        return decode_dataclass(cls, body, "$")
    except DecodeError as exc:
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


def result_label(path: Path) -> str:
    """A short name for a result: its output directory's name, or the file's stem."""
    path = path.resolve()
    if path.is_dir():
        return path.name
    if path.name == RESULTS_JSON:
        parent = path.parent
        return parent.parent.name if parent.name == "results" else parent.name
    return path.stem


def load_labelled(paths: Sequence[Path], labels: Sequence[str] = ()) -> list[tuple[str, AnyResult]]:
    """Each result with its label: the one given (one per path, in order) or `result_label`'s; a
    label seen before gets " #2", " #3", ..."""
    out: list[tuple[str, AnyResult]] = []
    seen: dict[str, int] = {}
    for i, path in enumerate(paths):
        label = labels[i] if labels else result_label(path)
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label} #{seen[label]}"
        out.append((label, load_result(path)))
    return out


__all__ = [
    "RESULTS_CSV",
    "RESULTS_JSON",
    "SCHEMA_VERSION",
    "TRIALS_CSV",
    "GpuLevel",
    "decode_value",
    "encode_value",
    "level_gpus",
    "load_labelled",
    "load_result",
    "measurement_row",
    "result_from_dict",
    "result_label",
    "result_to_dict",
    "run_rows",
    "run_to_dict",
    "trial_rows",
    "tune_to_dict",
    "upgrade",
    "write_run",
    "write_tune",
]
