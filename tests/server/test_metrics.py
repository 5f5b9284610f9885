"""/metrics (Prometheus text, Triton's names) agrees with the statistics extension after a load."""

from __future__ import annotations

import asyncio
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
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


def test_metrics_page_is_prometheus_text_with_tritons_families(perfkit_server, tmp_path):
    # A model directory name may hold a quote: the page escapes it, and a Prometheus parser reads
    # the name back.
    name = 'we"ird'
    (tmp_path / name / "1").mkdir(parents=True)
    (tmp_path / name / "config.pbtxt").write_text(
        'backend: "perfkit_identity"\nmax_batch_size: 8\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]\n'
    )
    server = perfkit_server(tmp_path)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    for _ in range(3):
        grpc.infer(name, [fp32_input(grpcclient, "INPUT0", np.zeros((1, 16), np.float32))])
    with urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=5) as resp:
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
        text = resp.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # Triton's family names: counters carry no `_total`, in the # TYPE line as in the samples.
    assert "# TYPE nv_inference_request_success counter\n" in text
    assert "# TYPE nv_inference_pending_request_count gauge\n" in text
    assert families["nv_inference_request_success"].type == "counter"
    assert families["nv_inference_pending_request_count"].type == "gauge"
    success = families["nv_inference_request_success"].samples
    # (this parser renames a counter's samples `<family>_total`, OpenMetrics' form, so the page's
    # own sample line is checked as text)
    assert [(s.labels, s.value) for s in success] == [({"model": name, "version": "1"}, 3.0)]
    assert 'nv_inference_request_success{model="we\\"ird",version="1"} 3.0\n' in text
    reasons = {s.labels["reason"] for s in families["nv_inference_request_failure"].samples}
    assert reasons == {"REJECTED", "CANCELED", "BACKEND", "OTHER"}
