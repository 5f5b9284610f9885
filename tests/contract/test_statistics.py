"""Contract: the statistics extension (shape and semantics after N requests) and Prometheus metrics."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.contract._client import (
    BATCH_KEYS,
    PROTOCOLS,
    STAT_KEYS,
    batch,
    infer,
    statistics,
)
from tests.contract._models import IdentitySpec
from tests.contract._server import Server

N = 16
BATCHED, PLAIN, REJECTS = "batched", "plain", "rejects"
SPECS = [
    # A long queue delay and a per-execution sleep: N concurrent requests form full batches of 8.
    IdentitySpec(BATCHED, max_batch_size=8, queue_delay_us=50_000, delay_us=5_000),
    IdentitySpec(PLAIN, max_batch_size=8),  # default scheduler
    IdentitySpec(REJECTS, max_batch_size=8),
]

pytestmark = pytest.mark.timeout(120)

METRICS = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
)

_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\}\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            labels = frozenset(_LABEL.findall(match.group(2)))
            samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def metric(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, model: str,
           **labels: str) -> float:  # fmt: skip
    key = (name, frozenset({"model": model, "version": "1", **labels}.items()))
    assert key in samples, f"no {name} sample labelled {dict(key[1])}"
    return samples[key]


@dataclass
class Traffic:
    """Statistics (HTTP) and metrics snapshots around two rounds of load."""

    first: dict[str, dict[str, Any]]  # model -> stats after round 1
    second: dict[str, dict[str, Any]]  # model -> stats after round 2
    metrics: str  # /metrics text right after round 2's statistics


def _concurrent(server: Server, model: str, n: int) -> None:
    client = httpclient.InferenceServerClient(server.http_url, concurrency=n)
    try:
        pending = []
        for i in range(n):
            inp = httpclient.InferInput("INPUT0", [1, 16], "FP32")
            inp.set_data_from_numpy(batch(1, seed=i))
            pending.append(client.async_infer(model, [inp]))
        for request in pending:
            assert request.get_result().as_numpy("OUTPUT0").shape == (1, 16)
    finally:
        client.close()


@pytest.fixture(scope="module")
def traffic(server: Server) -> Traffic:
    """Round 1: N concurrent requests to BATCHED, N sequential to PLAIN. Round 2: the same again."""
    snaps = []
    for _ in range(2):
        _concurrent(server, BATCHED, N)
        for i in range(N):
            infer(server, "http", PLAIN, batch(1, seed=i))
        snaps.append({m: statistics(server, "http", m) for m in (BATCHED, PLAIN)})
    return Traffic(snaps[0], snaps[1], server.metrics())


def test_statistics_http_shape(server: Server, traffic: Traffic) -> None:
    stats = server.client("http").get_inference_statistics(BATCHED)
    assert set(stats) == {"model_stats"}
    [entry] = stats["model_stats"]
    core = {"name", "version", "last_inference", "inference_count", "execution_count"}
    assert core | {"inference_stats", "batch_stats"} <= set(entry)
    assert (entry["name"], entry["version"]) == (BATCHED, "1")
    for key in core - {"name", "version"}:
        assert type(entry[key]) is int, key
    assert set(entry["inference_stats"]) == set(STAT_KEYS)
    for key, pair in entry["inference_stats"].items():
        assert set(pair) == {"count", "ns"}, key
        assert type(pair["count"]) is int
        assert type(pair["ns"]) is int
    assert entry["batch_stats"]
    for bucket in entry["batch_stats"]:
        assert set(bucket) == {"batch_size", *BATCH_KEYS}
        assert type(bucket["batch_size"]) is int


def test_statistics_all_models(server: Server, traffic: Traffic) -> None:
    names = [e["name"] for e in server.client("http").get_inference_statistics()["model_stats"]]
    assert sorted(names) == sorted(s.name for s in SPECS)
    pb = server.client("grpc").get_inference_statistics()
    assert sorted(e.name for e in pb.model_stats) == sorted(names)


def test_statistics_grpc_matches_http(server: Server, traffic: Traffic) -> None:
    for model in (BATCHED, PLAIN):
        http = statistics(server, "http", model)
        grpc = statistics(server, "grpc", model)
        for key in ("name", "version", "last_inference", "inference_count", "execution_count"):
            assert grpc[key] == http[key], key
        assert grpc["inference_stats"] == {k: http["inference_stats"][k] for k in STAT_KEYS}
        assert grpc["batch_stats"] == [
            {k: b[k] for k in ("batch_size", *BATCH_KEYS)} for b in http["batch_stats"]
        ]


def test_counts_with_dynamic_batching(traffic: Traffic) -> None:
    stats = traffic.first[BATCHED]
    inf = stats["inference_stats"]
    for key in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert inf[key]["count"] == N, key
    assert inf["fail"]["count"] == 0
    assert stats["inference_count"] == N
    assert stats["execution_count"] < stats["inference_count"]
    buckets = stats["batch_stats"]
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in buckets) == N
    assert sum(b["compute_infer"]["count"] for b in buckets) == stats["execution_count"]
    for bucket in buckets:
        for key in BATCH_KEYS:
            assert bucket[key]["count"] == bucket["compute_infer"]["count"], key
        assert 1 <= bucket["batch_size"] <= 8


def test_counts_without_dynamic_batching(traffic: Traffic) -> None:
    stats = traffic.first[PLAIN]
    assert stats["inference_count"] == stats["execution_count"] == N
    assert stats["inference_stats"]["success"]["count"] == N
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in stats["batch_stats"]] == [
        (1, N)
    ]


def test_durations_consistent(traffic: Traffic) -> None:
    for model, stats in traffic.first.items():
        inf = stats["inference_stats"]
        parts = ("queue", "compute_input", "compute_infer", "compute_output")
        for key in ("success", *parts):
            assert inf[key]["ns"] > 0, (model, key)
        # A request's end-to-end time covers its queueing and its batch's compute.
        assert inf["success"]["ns"] >= sum(inf[k]["ns"] for k in parts), model
        # Per-request compute is its batch's compute: the totals agree with the batch buckets.
        per_batch = sum(b["batch_size"] * b["compute_infer"]["ns"] for b in stats["batch_stats"])
        assert inf["compute_infer"]["ns"] == pytest.approx(per_batch, rel=1e-3), model
        # last_inference: milliseconds since the epoch.
        assert abs(stats["last_inference"] - time.time() * 1000) < 120_000, model


def test_queue_delay_shows_in_queue_ns(traffic: Traffic) -> None:
    """With a 50 ms queue delay and batches of 8, requests wait: mean queue time is > 1 ms."""
    queue = traffic.first[BATCHED]["inference_stats"]["queue"]
    assert queue["ns"] / queue["count"] > 1_000_000


def test_statistics_monotonic(traffic: Traffic) -> None:
    for model in (BATCHED, PLAIN):
        a, b = traffic.first[model], traffic.second[model]
        assert b["inference_count"] == 2 * N
        assert b["execution_count"] > a["execution_count"]
        assert b["last_inference"] >= a["last_inference"]
        for key in STAT_KEYS:
            assert b["inference_stats"][key]["count"] >= a["inference_stats"][key]["count"], key
            assert b["inference_stats"][key]["ns"] >= a["inference_stats"][key]["ns"], key
        for key in ("success", "queue", "compute_infer"):
            assert b["inference_stats"][key]["ns"] > a["inference_stats"][key]["ns"], (model, key)
        before = {x["batch_size"]: x for x in a["batch_stats"]}
        for bucket in b["batch_stats"]:
            old = before.get(bucket["batch_size"])
            if old is not None:
                for key in BATCH_KEYS:
                    assert bucket[key]["count"] >= old[key]["count"]
                    assert bucket[key]["ns"] >= old[key]["ns"]


def test_metric_names_and_labels(server: Server, traffic: Traffic) -> None:
    text = traffic.metrics
    samples = parse_metrics(text)
    for name in METRICS:
        assert f"# TYPE {name} counter" in text, name
        for model in (BATCHED, PLAIN):
            if name == "nv_inference_request_failure":
                for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER"):
                    metric(samples, name, model, reason=reason)
            else:
                metric(samples, name, model)
    assert "# TYPE nv_inference_pending_request_count gauge" in text
    metric(samples, "nv_inference_pending_request_count", BATCHED)


def test_metrics_agree_with_statistics(traffic: Traffic) -> None:
    samples = parse_metrics(traffic.metrics)
    for model, stats in traffic.second.items():
        inf = stats["inference_stats"]
        assert metric(samples, "nv_inference_request_success", model) == inf["success"]["count"]
        assert metric(samples, "nv_inference_count", model) == stats["inference_count"]
        assert metric(samples, "nv_inference_exec_count", model) == stats["execution_count"]
        failures = sum(
            metric(samples, "nv_inference_request_failure", model, reason=r)
            for r in ("REJECTED", "CANCELED", "BACKEND", "OTHER")
        )
        assert failures == inf["fail"]["count"] == 0
        for name, key in (
            ("nv_inference_request_duration_us", "success"),
            ("nv_inference_queue_duration_us", "queue"),
            ("nv_inference_compute_infer_duration_us", "compute_infer"),
        ):
            us = metric(samples, name, model)
            assert us == pytest.approx(inf[key]["ns"] / 1000, rel=0.02, abs=50), (model, name)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_refused_requests_not_counted(server: Server, protocol: str) -> None:
    before = statistics(server, protocol, REJECTS)
    bad: list[tuple[Any, str]] = [
        (np.zeros((1, 15), np.float32), "FP32"),
        (np.zeros((1, 16), np.int32), "INT32"),
        (batch(9), "FP32"),
    ]
    for data, datatype in bad:
        with pytest.raises(InferenceServerException):
            infer(server, protocol, REJECTS, data, datatype=datatype)
    after = statistics(server, protocol, REJECTS)
    assert after["inference_stats"]["fail"] == before["inference_stats"]["fail"]
    assert after["inference_stats"]["success"] == before["inference_stats"]["success"]
    samples = parse_metrics(server.metrics())
    for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER"):
        assert metric(samples, "nv_inference_request_failure", REJECTS, reason=reason) == 0
