"""Client helpers for the contract tests: infer, error capture, statistics and index normalized to dicts.

Everything goes through tritonclient (http or grpc), the way perfkit reaches a server. gRPC
answers are read from the protobuf messages, so int64 fields stay ints.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.contract._server import Server

PROTOCOLS = ("http", "grpc")

# HTTP status -> gRPC status code name, as Triton maps its errors.
GRPC_STATUS = {
    "400": "INVALID_ARGUMENT",
    "404": "NOT_FOUND",
    "500": "INTERNAL",
    "503": "UNAVAILABLE",
}

STAT_KEYS = (
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "cache_hit",
    "cache_miss",
)
BATCH_KEYS = ("compute_input", "compute_infer", "compute_output")


def batch(rows: int, seed: int = 0) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).standard_normal((rows, 16)).astype(np.float32)


def infer(
    server: Server,
    protocol: str,
    model: str,
    data: npt.NDArray[Any],
    *,
    datatype: str = "FP32",
    input_name: str = "INPUT0",
    version: str = "",
    binary: bool = True,
) -> Any:
    """One infer call; returns the tritonclient InferResult."""
    module: Any = httpclient if protocol == "http" else grpcclient
    inp = module.InferInput(input_name, list(data.shape), datatype)
    if protocol == "http":
        inp.set_data_from_numpy(data, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)]
    else:
        inp.set_data_from_numpy(data)
        outputs = [grpcclient.InferRequestedOutput("OUTPUT0")]
    return server.client(protocol).infer(model, [inp], model_version=version, outputs=outputs)


def expect_error(
    protocol: str, exc: pytest.ExceptionInfo[InferenceServerException], http: str
) -> str:
    """Assert the error's status is `http` (or Triton's matching gRPC code); return its message."""
    status = exc.value.status()
    if protocol == "http":
        assert status == http, f"HTTP status {status}, Triton answers {http}: {exc.value.message()}"
    else:
        want = f"StatusCode.{GRPC_STATUS[http]}"
        assert status == want, f"gRPC status {status}, Triton answers {want}: {exc.value.message()}"
    return str(exc.value.message())


def _pair(pb: Any) -> dict[str, int]:
    return {"count": int(pb.count), "ns": int(pb.ns)}


def statistics(server: Server, protocol: str, model: str) -> dict[str, Any]:
    """The model's (only version's) statistics, normalized to HTTP's JSON shape with ints."""
    if protocol == "http":
        stats = server.client("http").get_inference_statistics(model)
        [entry] = stats["model_stats"]
        return dict(entry)
    pb = server.client("grpc").get_inference_statistics(model)
    [ms] = pb.model_stats
    return {
        "name": ms.name,
        "version": ms.version,
        "last_inference": int(ms.last_inference),
        "inference_count": int(ms.inference_count),
        "execution_count": int(ms.execution_count),
        "inference_stats": {k: _pair(getattr(ms.inference_stats, k)) for k in STAT_KEYS},
        "batch_stats": [
            {"batch_size": int(b.batch_size), **{k: _pair(getattr(b, k)) for k in BATCH_KEYS}}
            for b in ms.batch_stats
        ],
    }


def index(server: Server, protocol: str) -> dict[str, dict[str, Any]]:
    """Repository index by model name. HTTP entries as sent; gRPC entries as dicts of the proto's fields."""
    if protocol == "http":
        return {e["name"]: dict(e) for e in server.client("http").get_model_repository_index()}
    pb = server.client("grpc").get_model_repository_index()
    return {
        m.name: {"name": m.name, "version": m.version, "state": m.state, "reason": m.reason}
        for m in pb.models
    }


def wait_state(
    server: Server, model: str, states: tuple[str, ...], timeout_s: float = 20.0
) -> dict[str, Any]:
    """Poll the HTTP index until `model`'s state is one of `states`; returns the entry."""
    deadline = time.monotonic() + timeout_s
    while True:
        entry = index(server, "http").get(model, {})
        if entry.get("state") in states or time.monotonic() > deadline:
            return entry
        time.sleep(0.05)
