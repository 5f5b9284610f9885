"""Scheduling: dynamic batching forms (preferred) batches, the default scheduler does not, and two
instances execute two batches at the same time."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from tests.server import models
from tests.server.helpers import (
    HOOK_ENV,
    Gate,
    concurrent_singles,
    fp32_input,
    overlapping,
    span_log,
    spans,
    stats,
)


async def _first_done(futures: list[asyncio.Future[Any]], count: int) -> list[asyncio.Future[Any]]:
    """Wait (bounded) until `count` of `futures` are done; those, in completion order."""
    done: list[asyncio.Future[Any]] = []
    pending = set(futures)
    async with asyncio.timeout(30):
        while len(done) < count:
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            done.extend(finished)
    return done


async def test_dynamic_batching_forms_preferred_batches(perfkit_server, tmp_path):
    batching = (
        "dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 500000 }"
    )
    models.slow_identity(tmp_path, "batched", delay_us=20000, batching=batching)
    server = perfkit_server(tmp_path)
    await concurrent_singles(server.grpc_url, "batched", 8)
    s = stats(server.http_url, "batched")
    assert s["inference_count"] == 8
    assert s["execution_count"] < s["inference_count"]
    sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in s["batch_stats"]}
    assert sizes.get(4, 0) >= 1, sizes
    assert sum(size * n for size, n in sizes.items()) == 8
    # per-request accounting: every request counts once in success/queue/compute
    assert s["inference_stats"]["success"]["count"] == 8
    assert s["inference_stats"]["queue"]["count"] == 8
    assert s["inference_stats"]["compute_infer"]["count"] == 8


async def test_default_scheduler_executes_each_request(perfkit_server, tmp_path):
    models.slow_identity(tmp_path, "plain", delay_us=5000)
    server = perfkit_server(tmp_path)
    await concurrent_singles(server.grpc_url, "plain", 6)
    s = stats(server.http_url, "plain")
    assert s["inference_count"] == s["execution_count"] == 6
    assert [b["batch_size"] for b in s["batch_stats"]] == [1]


async def test_requests_carrying_a_batch_are_combined_up_to_max(perfkit_server, tmp_path):
    batching = "dynamic_batching { max_queue_delay_microseconds: 300000 }"
    models.slow_identity(tmp_path, "combo", max_batch_size=8, delay_us=10000, batching=batching)
    server = perfkit_server(tmp_path)
    client = grpcaio.InferenceServerClient(server.grpc_url)
    try:
        arrays = [np.full((3, 16), i, dtype=np.float32) for i in range(4)]
        results = await asyncio.gather(
            *(client.infer("combo", [fp32_input(grpcaio, "INPUT0", a)]) for a in arrays)
        )
        for a, r in zip(arrays, results, strict=True):
            np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a)
    finally:
        await client.close()
    s = stats(server.http_url, "combo")
    assert s["inference_count"] == 12
    assert all(b["batch_size"] <= 8 for b in s["batch_stats"])
    assert {b["batch_size"] for b in s["batch_stats"]} <= {3, 6}
    assert s["execution_count"] < 4


async def test_two_instances_execute_in_parallel(perfkit_server, tmp_path, monkeypatch):
    monkeypatch.setenv(HOOK_ENV, str(tmp_path))
    log2, log1 = span_log(tmp_path, "two"), span_log(tmp_path, "one")
    repo = tmp_path / "repo"
    models.slow_identity(repo, "two", delay_us=200000, instances=2)
    models.slow_identity(repo, "one", delay_us=100000, instances=1)
    server = perfkit_server(repo)
    await asyncio.gather(
        concurrent_singles(server.grpc_url, "two", 2), concurrent_singles(server.grpc_url, "one", 2)
    )
    two, one = spans(log2), spans(log1)
    assert len(two) == 2
    assert {row[2] for row in two} == {0, 1}  # each instance ran one batch
    assert overlapping(two)
    assert len(one) == 2
    assert not overlapping(one)


async def test_preserve_ordering_and_priority_levels(perfkit_server, tmp_path):
    batching = """dynamic_batching {
  max_queue_delay_microseconds: 1000 preserve_ordering: true
  priority_levels: 2 default_priority_level: 2
}"""
    models.slow_identity(tmp_path, "ordered", delay_us=5000, instances=2, batching=batching)
    server = perfkit_server(tmp_path)
    await concurrent_singles(server.grpc_url, "ordered", 10)
    assert stats(server.http_url, "ordered")["inference_count"] == 10


async def test_queue_policy_rejects_when_full_and_on_timeout(perfkit_server, tmp_path, monkeypatch):
    batching = """dynamic_batching {
  max_queue_delay_microseconds: 0
  default_queue_policy { max_queue_size: 1 timeout_action: REJECT allow_timeout_override: true }
}"""
    monkeypatch.setenv(HOOK_ENV, str(tmp_path))
    with Gate(tmp_path, "policy") as gate:
        models.slow_identity(
            tmp_path / "repo", "policy", max_batch_size=1, delay_us=0, batching=batching
        )
        server = perfkit_server(tmp_path / "repo")
        client = grpcaio.InferenceServerClient(server.grpc_url)
        try:
            a = np.zeros((1, 16), dtype=np.float32)
            first = asyncio.ensure_future(
                client.infer("policy", [fp32_input(grpcaio, "INPUT0", a)])
            )
            await gate.started()  # the first request is executing, held by the gate
            # Three more, each with a 1 us queue timeout: one waits in the queue (and has timed
            # out by the time the instance is free), two find the queue full.
            calls = [
                asyncio.ensure_future(
                    client.infer("policy", [fp32_input(grpcaio, "INPUT0", a)], timeout=1)
                )
                for _ in range(3)
            ]
            refused = await _first_done(calls, 2)
            for call in refused:
                with pytest.raises(InferenceServerException, match="Exceeds maximum queue size"):
                    call.result()
            gate.release()
            rest = await asyncio.gather(*calls, return_exceptions=True)
            results = [await first, *rest]
        finally:
            await client.close()
    errors = [str(r) for r in results if isinstance(r, Exception)]
    ok = [r for r in results if not isinstance(r, Exception)]
    assert len(ok) == 1, results
    assert sum("Exceeds maximum queue size" in e for e in errors) == 2, errors
    assert sum("timeout" in e.lower() for e in errors) == 1, errors
    s = stats(server.http_url, "policy")
    assert s["inference_stats"]["fail"]["count"] == 3
