"""/metrics (Prometheus text, Triton's names) agrees with the statistics extension after a load."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.server import models
from tests.server.helpers import concurrent_singles, fp32_input, metrics


async def test_metrics_agree_with_statistics(perfkit_server, tmp_path):
    batching = "dynamic_batching { max_queue_delay_microseconds: 20000 }"
    models.slow_identity(tmp_path, "m", delay_us=2000, batching=batching)
    models.add_sub(tmp_path)
    server = perfkit_server(tmp_path)
    await asyncio.gather(*(concurrent_singles(server.grpc_url, "m", 8) for _ in range(3)))
    http = httpclient.InferenceServerClient(server.http_url)
    a = np.zeros((1, 16), dtype=np.float32)
    for _ in range(5):
        http.infer("add_sub", [fp32_input(httpclient, n, a) for n in ("INPUT0", "INPUT1")])
    for bad in (np.zeros((1, 8), np.float32), np.zeros((9, 16), np.float32)):
        with pytest.raises(InferenceServerException):
            http.infer("m", [fp32_input(httpclient, "INPUT0", bad)])

    page = metrics(server.metrics_url)
    grpc_stats = grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics(
        as_json=True
    )
    http_stats = http.get_inference_statistics()
    assert len(http_stats["model_stats"]) == len(grpc_stats["model_stats"]) == 2
    for s in http_stats["model_stats"]:
        labels = f'model="{s["name"]}",version="{s["version"]}"'
        inf = s["inference_stats"]

        def metric(name: str, labels: str = labels) -> float:
            return page[f"{name}{{{labels}}}"]

        assert metric("nv_inference_request_success") == inf["success"]["count"]
        failures = sum(
            page[f'nv_inference_request_failure{{model="{s["name"]}",reason="{r}",version="1"}}']
            for r in ("REJECTED", "CANCELED", "BACKEND", "OTHER")
        )
        assert failures == inf["fail"]["count"]
        assert metric("nv_inference_count") == s["inference_count"]
        assert metric("nv_inference_exec_count") == s["execution_count"]
        assert metric("nv_inference_queue_duration_us") == inf["queue"]["ns"] // 1000
        assert (
            metric("nv_inference_compute_infer_duration_us") == inf["compute_infer"]["ns"] // 1000
        )
        assert (
            metric("nv_inference_compute_input_duration_us") == inf["compute_input"]["ns"] // 1000
        )
        assert (
            metric("nv_inference_compute_output_duration_us") == inf["compute_output"]["ns"] // 1000
        )
        assert (
            metric("nv_inference_request_duration_us")
            == (inf["success"]["ns"] + inf["fail"]["ns"]) // 1000
        )
    by_name = {s["name"]: s for s in http_stats["model_stats"]}
    assert by_name["m"]["inference_count"] == 24
    # refused by validation: never reached the model, so not counted (as in Triton)
    assert by_name["m"]["inference_stats"]["fail"]["count"] == 0
    assert by_name["add_sub"]["inference_count"] == by_name["add_sub"]["execution_count"] == 5
    # gRPC reports the same numbers (uint64 come back as strings in protobuf JSON)
    g = {s["name"]: s for s in grpc_stats["model_stats"]}
    assert int(g["m"]["inference_count"]) == 24
    assert int(g["m"]["execution_count"]) == by_name["m"]["execution_count"]
