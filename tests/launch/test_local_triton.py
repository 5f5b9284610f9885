"""LocalTriton runs a real tritonserver (the nvidia-pytriton wheel's, on CPU) serving python-backend models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from perfkit.errors import MissingDependency, ServerUnavailable
from perfkit.launch import LocalTriton, ServerHandle, find_tritonserver, server_info
from perfkit.launch import triton as triton_launch
from tests.fixtures.triton import TritonServerFactory, write_add_sub, write_identity


def test_serves_python_backend_models(triton_server: TritonServerFactory, tmp_path: Path) -> None:
    write_identity(tmp_path)
    write_add_sub(tmp_path, delay_s=0.001)
    server = triton_server(tmp_path, disable_auto_complete_config=True)
    assert isinstance(server, ServerHandle)
    assert server.kind == "local_triton"
    assert server.alive()
    info = server_info(server.http_url, "http")
    assert info.kind == "triton"
    assert info.version.startswith("2.")
    assert server_info(server.grpc_url, "grpc").kind == "triton"

    x = np.arange(48, dtype=np.float32).reshape(3, 16)
    http = httpclient.InferenceServerClient(server.http_url)
    inp = httpclient.InferInput("INPUT0", [3, 16], "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_array_equal(http.infer("identity", [inp]).as_numpy("OUTPUT0"), x)
    config = http.get_model_config("identity")
    assert config["max_batch_size"] == 8
    http.close()

    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    inputs = [grpcclient.InferInput(n, [3, 16], "FP32") for n in ("INPUT0", "INPUT1")]
    inputs[0].set_data_from_numpy(x)
    inputs[1].set_data_from_numpy(np.ones_like(x))
    result = grpc.infer("add_sub", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x + 1)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), x - 1)
    grpc.close()

    server.stop()
    assert not server.alive()


def test_model_that_fails_to_load_names_the_error(
    triton_server: TritonServerFactory, tmp_path: Path
) -> None:
    model_dir = write_identity(tmp_path, "broken")
    (model_dir / "1" / "model.py").write_text("this is not python\n")
    with pytest.raises(ServerUnavailable, match=r"exited with code \d+ during start-up") as info:
        triton_server(tmp_path, disable_auto_complete_config=True, log_path=tmp_path / "triton.log")
    assert "broken" in str(info.value)
    assert "NameError" in str(info.value)  # the python error, from the log


def test_missing_tritonserver_gives_an_install_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Simulate a machine without the optional dependency: nothing on PATH, no wheel.
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(triton_launch, "pytriton_server_dir", lambda: None)
    with pytest.raises(MissingDependency, match=r"pip install nvidia-pytriton"):
        LocalTriton(tmp_path)
    with pytest.raises(MissingDependency, match="does not exist or is not executable"):
        find_tritonserver(tmp_path / "tritonserver")
