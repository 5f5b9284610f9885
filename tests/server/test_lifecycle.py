"""Process lifecycle and repository semantics: drain on SIGTERM, `perfkit serve`, warmup,
version_policy, config completion flags."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.fixtures.server import ServerHandle, start_server
from tests.server import models
from tests.server.helpers import HOOK_ENV, Gate, fp32_input, span_log, spans, stats


async def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path, monkeypatch):
    monkeypatch.setenv(HOOK_ENV, str(tmp_path))
    with Gate(tmp_path, "slow") as gate:
        models.slow_identity(tmp_path / "repo", "slow", delay_us=0)
        server = start_server(tmp_path / "repo", log_path=tmp_path / "server.log")
        try:
            client = grpcaio.InferenceServerClient(server.grpc_url)
            a = np.ones((1, 16), dtype=np.float32)
            call = asyncio.ensure_future(client.infer("slow", [fp32_input(grpcaio, "INPUT0", a)]))
            await gate.started()  # the request is executing, held by the gate
            server.process.send_signal(signal.SIGTERM)
            await _logged(server, "Signal received, draining")
            gate.release()  # only now may the request finish: the server is draining
            result = await call
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a)
            await client.close()
            assert await asyncio.to_thread(server.process.wait, 20) == 0
        finally:
            server.stop()
    assert "Server stopped" in server.log()


async def _logged(server: ServerHandle, text: str, timeout_s: float = 20.0) -> None:
    """Wait (bounded) until the server's log holds `text`.

    The log line is the only sign that the server has handled a signal, so this polls the file
    for that condition (no event crosses the process boundary).
    """
    async with asyncio.timeout(timeout_s):
        while text not in server.log():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def test_perfkit_serve_runs_the_server(tmp_path):
    models.add_sub(tmp_path)
    perfkit = Path(sys.executable).parent / "perfkit"
    with start_server(
        tmp_path, log_path=tmp_path / "serve.log", command=[str(perfkit), "serve"]
    ) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        assert client.is_model_ready("add_sub")
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(20) == 0


def test_warmup_runs_before_ready_and_is_not_counted(perfkit_server, tmp_path, monkeypatch):
    monkeypatch.setenv(HOOK_ENV, str(tmp_path))
    log = span_log(tmp_path, "warm")
    extra = """model_warmup [ {
  name: "zeros" batch_size: 4 count: 3
  inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 16 ] zero_data: true } }
} ]"""
    models.slow_identity(tmp_path / "repo", "warm", delay_us=1000, instances=2, extra=extra)
    server = perfkit_server(tmp_path / "repo")
    assert len(spans(log)) == 6  # 3 per instance, done before the server reported ready
    s = stats(server.http_url, "warm")
    assert s["execution_count"] == 0
    assert s["inference_count"] == 0


def test_version_policy(perfkit_server, tmp_path):
    policies = {
        "latest2": "version_policy: { latest: { num_versions: 2 } }",
        "specific": "version_policy: { specific: { versions: [ 1, 3 ] } }",
        "all": "version_policy: { all: {} }",
        "default": "",
    }
    for name, policy in policies.items():
        models.slow_identity(tmp_path, name, delay_us=0, extra=policy)
        for v in (2, 3):
            (tmp_path / name / str(v)).mkdir()
    server = perfkit_server(tmp_path)
    client = httpclient.InferenceServerClient(server.http_url)
    expected = {
        "latest2": ["2", "3"],
        "specific": ["1", "3"],
        "all": ["1", "2", "3"],
        "default": ["3"],
    }
    a = np.ones((1, 16), dtype=np.float32)
    for name, versions in expected.items():
        assert client.get_model_metadata(name)["versions"] == versions
        for version in ("1", "2", "3"):
            assert client.is_model_ready(name, version) == (version in versions)
        result = client.infer(name, [fp32_input(httpclient, "INPUT0", a)])
        assert result.get_response()["model_version"] == versions[-1]  # no version: the latest
    with pytest.raises(InferenceServerException) as info:
        client.infer("default", [fp32_input(httpclient, "INPUT0", a)], model_version="1")
    assert info.value.status() == "404"
    s = client.get_inference_statistics("all")["model_stats"]
    assert [m["version"] for m in s] == ["1", "2", "3"]


def test_config_completion_flags(perfkit_server, tmp_path):
    models.add_sub(tmp_path, "partial", write_cfg=False)
    models.write_config(tmp_path, "partial", 'name: "partial"\nbackend: "onnxruntime"\n')
    models.mlp(tmp_path, "noconfig")
    strict = perfkit_server(tmp_path, "--strict-model-config=true")
    index = {
        e["name"]: e
        for e in httpclient.InferenceServerClient(strict.http_url).get_model_repository_index()
    }
    assert index["partial"]["state"] == "UNAVAILABLE"
    assert "input" in index["partial"]["reason"]
    assert index["noconfig"]["state"] == "READY"  # a missing config.pbtxt is always completed

    relaxed = perfkit_server(tmp_path, "--strict-model-config=false")
    client = httpclient.InferenceServerClient(relaxed.http_url)
    config = client.get_model_config("partial")
    assert [i["name"] for i in config["input"]] == ["INPUT0", "INPUT1"]
    assert config["max_batch_size"] == 4

    disabled = perfkit_server(tmp_path, "--disable-auto-complete-config")
    index = {
        e["name"]: e
        for e in httpclient.InferenceServerClient(disabled.http_url).get_model_repository_index()
    }
    assert index["noconfig"]["state"] == "UNAVAILABLE"
    assert "auto-completion is disabled" in index["noconfig"]["reason"]
