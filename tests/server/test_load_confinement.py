"""The load API is confined to the model's directory and capped (issue #10, findings 3, 7 and 9).

A config override (or a config.pbtxt) may name warmup data only under the model's warmup/
directory, model files only inside the version directory, and no path at all for a backend; its
instance and thread counts stay under the server's caps. Each violation is a clean load failure
(400 / INVALID_ARGUMENT naming the field and the rule), never a file read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from perfkit.model_repo import InvalidRepository
from perfkit.model_repo.config import config_to_json, load_config
from perfkit.model_repo.repository import check_model_name
from tests.fixtures.server import ServerHandle, start_server
from tests.server import models
from tests.server.helpers import HOOK_ENV, fp32_input

SAMPLE_BYTES = 16 * 4  # one FP32 [16] sample


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository (identity model `w` with a warmup/ directory, ONNX `add_sub`) and, beside it,
    files a load must never reach."""
    root = tmp_path_factory.mktemp("confine")
    repo = root / "repo"
    models.slow_identity(repo, "w", delay_us=0)
    models.add_sub(repo)
    warmup = repo / "w" / "warmup"
    warmup.mkdir()
    secret = root / "secret.bin"
    secret.write_bytes(b"s" * 4 * SAMPLE_BYTES)
    (root / "model.onnx").write_bytes((repo / "add_sub" / "1" / "model.onnx").read_bytes())
    (warmup / "good.bin").write_bytes(np.arange(16, dtype=np.float32).tobytes() + b"tail")
    (warmup / "short.bin").write_bytes(b"x" * (SAMPLE_BYTES - 1))
    (warmup / "sub").mkdir()
    (warmup / "sub" / "nested.bin").write_bytes(b"\0" * SAMPLE_BYTES)
    (warmup / "to_secret").symlink_to(secret)
    (warmup / "to_zero").symlink_to("/dev/zero")
    (warmup / "to_good").symlink_to(warmup / "good.bin")
    os.mkfifo(warmup / "fifo")
    return root


@pytest.fixture(scope="module")
def server(layout: Path) -> Iterator[ServerHandle]:
    with start_server(layout / "repo", "--model-control-mode=explicit") as handle:
        yield handle


def _override(repo: Path, name: str, edit: Callable[[Any], None]) -> str:
    config = load_config(repo / name / "config.pbtxt")
    edit(config)
    return json.dumps(config_to_json(config))


def _warmup_from(file_name: str) -> Callable[[Any], None]:
    def edit(config: Any) -> None:
        from tritonclient.grpc import model_config_pb2 as mc

        warmup = config.model_warmup.add(name="file", batch_size=2, count=1)
        spec = warmup.inputs["INPUT0"]
        spec.data_type = mc.TYPE_FP32
        spec.dims.append(16)
        spec.input_data_file = file_name

    return edit


def _refused(server: ServerHandle, name: str, config: str) -> str:
    """Load `name` with `config` over HTTP; expect a 400 and the model not ready; the message."""
    client = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException) as info:
        client.load_model(name, config=config)
    assert info.value.status() == "400", info.value.message()
    assert not client.is_model_ready(name)
    assert server.process.poll() is None
    return str(info.value.message())


@pytest.mark.parametrize(
    ("file_name", "rule"),
    [
        ("/dev/zero", "relative"),
        ("{secret}", "relative"),
        ("../config.pbtxt", "'..'"),
        ("sub/../../config.pbtxt", "'..'"),
        ("to_secret", "inside"),
        ("to_zero", "inside"),
        ("fifo", "regular file"),
        ("sub", "regular file"),
        ("missing.bin", "no such file"),
        ("short.bin", f"{SAMPLE_BYTES} bytes"),
    ],
)
def test_warmup_data_file_confined_to_the_warmup_directory(server, layout, file_name, rule):
    file_name = file_name.format(secret=layout / "secret.bin")
    message = _refused(server, "w", _override(layout / "repo", "w", _warmup_from(file_name)))
    assert "input_data_file" in message
    assert rule in message
    assert "warmup" in message


@pytest.mark.parametrize("file_name", ["good.bin", "to_good", "sub/nested.bin"])
def test_warmup_data_file_inside_the_warmup_directory_loads(server, layout, file_name):
    client = httpclient.InferenceServerClient(server.http_url)
    client.load_model("w", config=_override(layout / "repo", "w", _warmup_from(file_name)))
    assert client.is_model_ready("w")
    a = np.ones((1, 16), dtype=np.float32)
    out = client.infer("w", [fp32_input(httpclient, "INPUT0", a)]).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(out, a)
    client.unload_model("w")


@pytest.mark.parametrize(
    "file_name",
    ["{root}/model.onnx", "../../model.onnx", "../../absent.onnx", "1/model.onnx", ".."],
)
def test_default_model_filename_is_a_plain_name_in_the_version_directory(server, layout, file_name):
    file_name = file_name.format(root=layout)

    def edit(config: Any) -> None:
        config.default_model_filename = file_name

    message = _refused(server, "add_sub", _override(layout / "repo", "add_sub", edit))
    assert "default_model_filename" in message
    # The same words whether or not the file exists out there: nothing is looked up.
    assert message.replace(repr(file_name), "<name>", 1).endswith(
        "must be a file name inside the version directory (no '/', '\\' or '..')"
    ), message


def test_the_error_never_says_whether_a_file_exists_outside(server, layout):
    def message(file_name: str) -> str:
        def edit(config: Any) -> None:
            config.default_model_filename = file_name

        text = _refused(server, "add_sub", _override(layout / "repo", "add_sub", edit))
        return text.replace(repr(file_name), "<name>", 1)

    assert message("../../model.onnx") == message("../../absent.onnx")
    assert message(str(layout / "model.onnx")) == message(str(layout / "absent.onnx"))


@pytest.mark.parametrize("key", ["span_log", "started_fifo", "release_fifo"])
def test_no_backend_parameter_names_a_path(server, layout, key):
    target = layout / f"{key}.out"

    def edit(config: Any) -> None:
        config.parameters[key].string_value = str(target)

    message = _refused(server, "w", _override(layout / "repo", "w", edit))
    assert key in message
    assert HOOK_ENV in message
    assert not target.exists()


def test_instance_and_thread_caps_by_default(server, layout):
    def instances(config: Any) -> None:
        del config.instance_group[:]
        config.instance_group.add(count=40)
        config.instance_group.add(count=40)

    message = _refused(server, "w", _override(layout / "repo", "w", instances))
    assert "instance_group" in message
    assert "80" in message
    assert "64" in message
    assert "--max-instances-per-model" in message

    cap = 4 * (os.cpu_count() or 1)
    for key in ("intra_op_thread_count", "inter_op_thread_count"):

        def threads(config: Any, key: str = key) -> None:
            config.parameters[key].string_value = str(cap + 1)

        message = _refused(server, "add_sub", _override(layout / "repo", "add_sub", threads))
        assert f"parameters['{key}']" in message
        assert str(cap + 1) in message
        assert str(cap) in message
        assert "--max-threads-per-instance" in message

    def endless(config: Any) -> None:
        config.model_warmup.add(name="endless", batch_size=1, count=2**31 - 1)
        config.model_warmup[-1].inputs["INPUT0"].zero_data = True
        config.model_warmup[-1].inputs["INPUT0"].data_type = 11  # TYPE_FP32
        config.model_warmup[-1].inputs["INPUT0"].dims.append(16)

    message = _refused(server, "w", _override(layout / "repo", "w", endless))
    assert "model_warmup 'endless'" in message
    assert f"count {2**31 - 1}" in message
    assert "cap of 1000" in message
    assert "--max-warmup-count" in message

    def negative(config: Any) -> None:
        config.parameters["intra_op_thread_count"].string_value = "-3"

    assert "intra_op_thread_count" in _refused(
        server, "add_sub", _override(layout / "repo", "add_sub", negative)
    )


def test_caps_follow_their_flags(perfkit_server, tmp_path):
    models.slow_identity(tmp_path, "w", delay_us=0)
    models.add_sub(tmp_path)
    server = perfkit_server(
        tmp_path,
        "--model-control-mode=explicit",
        "--max-instances-per-model=2",
        "--max-threads-per-instance=2",
    )
    client = httpclient.InferenceServerClient(server.http_url)

    def count(n: int) -> Callable[[Any], None]:
        def edit(config: Any) -> None:
            config.instance_group[0].count = n

        return edit

    message = _refused(server, "w", _override(tmp_path, "w", count(3)))
    assert "3 instances" in message
    assert "cap of 2" in message
    assert "--max-instances-per-model=3" in message
    client.load_model("w", config=_override(tmp_path, "w", count(2)))
    assert client.is_model_ready("w")

    def threads(n: int) -> Callable[[Any], None]:
        def edit(config: Any) -> None:
            config.parameters["intra_op_thread_count"].string_value = str(n)

        return edit

    assert "cap of 2; lower it, or start the server with --max-threads-per-instance=3" in _refused(
        server, "add_sub", _override(tmp_path, "add_sub", threads(3))
    )
    client.load_model("add_sub", config=_override(tmp_path, "add_sub", threads(2)))
    assert client.is_model_ready("add_sub")


def test_a_config_file_over_the_caps_fails_its_load_at_start(perfkit_server, tmp_path):
    models.slow_identity(tmp_path, "many", delay_us=0, instances=65)
    models.slow_identity(tmp_path, "ok", delay_us=0)
    server = perfkit_server(tmp_path)
    client = httpclient.InferenceServerClient(server.http_url)
    assert client.is_model_ready("ok")
    assert not client.is_model_ready("many")
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert "--max-instances-per-model" in index["many"]["reason"]


def test_an_overlong_model_name_is_a_clean_400(server):
    name = "m" * 300
    client = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException, match="255") as info:
        client.load_model(name)
    assert info.value.status() == "400"
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException, match="255") as info:
        grpc.load_model(name)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as info:
        client.unload_model(name)
    assert info.value.status() == "400"
    assert server.process.poll() is None


def test_check_model_name_limits_the_length():
    assert check_model_name("m" * 255) == "m" * 255
    with pytest.raises(InvalidRepository, match="255"):
        check_model_name("m" * 256)
    # The limit is a file name's, in bytes: 128 two-byte characters are 256 bytes.
    with pytest.raises(InvalidRepository, match="255"):
        check_model_name("é" * 128)
