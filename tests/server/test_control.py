"""Model control: explicit load with a config override applied live, unload, poll mode."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from perfkit.model_repo.config import (
    config_to_json,
    load_config,
    with_dynamic_batching,
    with_instances,
    with_max_batch_size,
)
from tests.server import models
from tests.server.helpers import (
    HOOK_ENV,
    concurrent_singles,
    fp32_input,
    overlapping,
    span_log,
    spans,
    stats,
)


def _batch(client: Any, model: str, n: int) -> Any:
    a = np.ones((n, 16), dtype=np.float32)
    return client.infer(model, [fp32_input(httpclient, "INPUT0", a)])


async def test_load_with_override_changes_config_and_behaviour(
    perfkit_server, tmp_path, monkeypatch
):
    monkeypatch.setenv(HOOK_ENV, str(tmp_path))
    log = span_log(tmp_path, "m")
    repo = tmp_path / "repo"
    models.slow_identity(repo, "m", max_batch_size=4, delay_us=100000)
    server = perfkit_server(repo, "--model-control-mode=explicit", "--load-model=m")
    client = httpclient.InferenceServerClient(server.http_url)
    pid = server.process.pid

    # before: max_batch_size 4, one instance, default scheduler
    with pytest.raises(InferenceServerException, match="batch-size must be <= 4"):
        _batch(client, "m", 8)
    await concurrent_singles(server.grpc_url, "m", 2)
    assert not overlapping(spans(log))

    base = load_config(repo / "m" / "config.pbtxt")
    override = with_dynamic_batching(
        with_instances(with_max_batch_size(base, 16), 2),
        preferred_batch_sizes=[4],
        max_queue_delay_us=300000,
    )
    client.load_model("m", config=json.dumps(config_to_json(override)))

    config = client.get_model_config("m")
    assert config["max_batch_size"] == 16
    assert config["instance_group"][0]["count"] == 2
    assert config["dynamic_batching"]["preferred_batch_size"] == [4]
    # behaviour: batch 8 accepted, singles batched, two instances run at once
    np.testing.assert_array_equal(_batch(client, "m", 8).as_numpy("OUTPUT0"), np.ones((8, 16)))
    log.unlink()
    await concurrent_singles(server.grpc_url, "m", 8)
    s = stats(server.http_url, "m")
    assert s["execution_count"] < s["inference_count"]
    assert any(b["batch_size"] == 4 for b in s["batch_stats"])
    assert overlapping(spans(log))
    assert server.process.pid == pid
    assert server.process.poll() is None

    # a plain load of an unchanged model keeps the override (as Triton does)
    client.load_model("m")
    assert client.get_model_config("m")["max_batch_size"] == 16

    # unload, then load reverts to the file
    client.unload_model("m")
    assert not client.is_model_ready("m")
    with pytest.raises(InferenceServerException, match="has no available versions") as info:
        _batch(client, "m", 1)
    assert info.value.status() == "404"
    index = {e["name"]: e for e in client.get_model_repository_index()}
    assert (index["m"]["version"], index["m"]["state"], index["m"]["reason"]) == (
        "1",
        "UNAVAILABLE",
        "unloaded",
    )
    client.load_model("m")
    assert client.get_model_config("m")["max_batch_size"] == 4
    assert "dynamic_batching" not in client.get_model_config("m")


def test_grpc_load_unload_and_failed_override_keeps_old(perfkit_server, tmp_path):
    models.add_sub(tmp_path)
    server = perfkit_server(tmp_path, "--model-control-mode=explicit")
    client = grpcclient.InferenceServerClient(server.grpc_url)
    assert not client.is_model_ready("add_sub")
    client.load_model("add_sub")
    assert client.is_model_ready("add_sub")
    # an invalid override is refused, and the loaded model keeps serving
    override = {
        "backend": "onnxruntime",
        "max_batch_size": 8,
        "dynamic_batching": {"preferred_batch_size": [64]},
    }
    with pytest.raises(InferenceServerException, match="preferred_batch_size") as info:
        client.load_model("add_sub", config=json.dumps(override))
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert client.is_model_ready("add_sub")
    assert client.get_model_config("add_sub").config.max_batch_size == 8
    client.unload_model("add_sub")
    assert not client.is_model_ready("add_sub")


def test_load_api_refused_outside_explicit_mode(perfkit_server, tmp_path):
    models.add_sub(tmp_path)
    server = perfkit_server(tmp_path)  # mode none: everything loaded at start
    client = httpclient.InferenceServerClient(server.http_url)
    assert client.is_model_ready("add_sub")
    with pytest.raises(InferenceServerException, match="explicit"):
        client.load_model("add_sub")


def _wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_poll_mode_picks_up_changes(perfkit_server, tmp_path):
    models.slow_identity(tmp_path, "p", max_batch_size=4, delay_us=0)
    server = perfkit_server(tmp_path, "--model-control-mode=poll", "--repository-poll-secs=0.2")
    client = httpclient.InferenceServerClient(server.http_url)
    assert client.get_model_config("p")["max_batch_size"] == 4
    config_path = tmp_path / "p" / "config.pbtxt"
    config_path.write_text(
        config_path.read_text().replace("max_batch_size: 4", "max_batch_size: 12")
    )
    _wait_for(lambda: client.get_model_config("p")["max_batch_size"] == 12)
    assert _batch(client, "p", 12).as_numpy("OUTPUT0").shape == (12, 16)
    # a new model appears, a removed one goes
    models.add_sub(tmp_path)
    _wait_for(lambda: client.is_model_ready("add_sub"))
    shutil.rmtree(tmp_path / "p")
    _wait_for(lambda: not client.is_model_ready("p"))


def test_a_repeated_request_header_is_checked_again_after_a_reload(perfkit_server, tmp_path):
    """perfkit_server parses a binary request's JSON header once and checks it against a model
    version once (the header is cached by its bytes): new data under the same header gets its own
    outputs, and a reloaded version checks the header again."""
    models.slow_identity(tmp_path, "m", max_batch_size=4, delay_us=0)
    server = perfkit_server(tmp_path, "--model-control-mode=explicit", "--load-model=m")
    client = httpclient.InferenceServerClient(server.http_url)
    for value in (1.0, 2.0, 3.0):  # one header, three bodies
        a = np.full((4, 16), value, dtype=np.float32)
        out = client.infer("m", [fp32_input(httpclient, "INPUT0", a)]).as_numpy("OUTPUT0")
        np.testing.assert_array_equal(out, a)
    override = with_max_batch_size(load_config(tmp_path / "m" / "config.pbtxt"), 2)
    client.load_model("m", config=json.dumps(config_to_json(override)))
    with pytest.raises(InferenceServerException, match="batch-size must be <= 2") as info:
        _batch(client, "m", 4)
    assert info.value.status() == "400"
    np.testing.assert_array_equal(_batch(client, "m", 2).as_numpy("OUTPUT0"), np.ones((2, 16)))
