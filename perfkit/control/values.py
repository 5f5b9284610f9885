"""Pure helpers over Triton's JSON replies (either protocol): statistics sums, metadata with integer
shapes, the served config, `ServerInfo`, and the numpy -> Triton datatype name. No I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from perfkit.datatypes import V2_BY_NP_NAME
from perfkit.results import ServerInfo

ServerProtocol = Literal["http", "grpc"]


def _int(v: Any) -> int:
    return int(v) if v not in (None, "") else 0


_STAT_KEYS = (
    "success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit",
    "cache_miss",
)  # fmt: skip


def sum_model_stats(model_stats: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Flatten Triton's ModelStatistics (JSON form, any protocol) into summed ints:
    {"inference_count", "execution_count", "<key>_count", "<key>_ns", "batch": {size: count}}."""
    out: dict[str, Any] = {"inference_count": 0, "execution_count": 0, "batch": {}}
    for k in _STAT_KEYS:
        out[f"{k}_count"] = 0
        out[f"{k}_ns"] = 0
    for ms in model_stats:
        out["inference_count"] += _int(ms.get("inference_count"))
        out["execution_count"] += _int(ms.get("execution_count"))
        st = ms.get("inference_stats", {})
        for k in _STAT_KEYS:
            d = st.get(k, {})
            out[f"{k}_count"] += _int(d.get("count"))
            out[f"{k}_ns"] += _int(d.get("ns"))
        for b in ms.get("batch_stats", []) or []:
            size = _int(b.get("batch_size"))
            n = _int(b.get("compute_infer", {}).get("count"))
            out["batch"][size] = out["batch"].get(size, 0) + n
    return out


def model_metadata(md: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(md)
    for key in ("inputs", "outputs"):  # gRPC's JSON gives int64 dims as strings
        out[key] = [
            {"name": str(x["name"]), "datatype": str(x["datatype"]),
             "shape": [int(d) for d in x.get("shape", [])]}
            for x in md.get(key, [])
        ]  # fmt: skip
    return out


def model_config(reply: Mapping[str, Any]) -> dict[str, Any]:
    """gRPC's JSON wraps the config in {"config": ...}; HTTP's is the config."""
    return dict(reply.get("config", reply))


def server_info(
    metadata: Mapping[str, Any], *, url: str, protocol: ServerProtocol, embedded: bool = False
) -> ServerInfo:
    """Server metadata as a `ServerInfo`; `embedded` is recorded as given."""
    name = str(metadata.get("name", ""))
    return ServerInfo(
        url=url,
        protocol=protocol,
        kind=name or "unknown",
        version=str(metadata.get("version", "")),
        extensions=tuple(str(e) for e in metadata.get("extensions", ())),
        embedded=embedded,
    )


def np_to_triton(dtype: np.dtype[Any]) -> str:
    """The KServe v2 datatype of a numpy dtype (perfkit.datatypes); "BYTES" for anything else."""
    return V2_BY_NP_NAME.get(str(dtype), "BYTES")
