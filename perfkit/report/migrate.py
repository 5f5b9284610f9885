"""Results schema identities and versions: recognise a results document and bring an older version
to the current one through explicit upgrade functions. Stdlib only.

Newer versions and unknown schemas are refused with a `ConfigError` that says what to do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from perfkit import __version__
from perfkit.errors import ConfigError

SCHEMA_VERSION = 1
RUN_SCHEMA = "perfkit.run"
TUNE_SCHEMA = "perfkit.tune"

JsonDict = dict[str, Any]

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
