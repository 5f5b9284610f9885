"""Triton's shared-memory extensions on perfkit_server, through tritonclient's HTTP and gRPC clients
and `tritonclient.utils.shared_memory` (real POSIX shm objects in /dev/shm): register / status /
unregister, inputs and outputs in system regions against the same request without them, Triton's
errors (and the server still serving after each), CUDA registration refused on a machine without
CUDA, and `--allow-client-shm` off by default."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import json
import os
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import (
    InferenceServerException,
    serialize_byte_tensor,
    serialized_byte_size,
)

from perfkit import zoo
from tests.fixtures.server import ServerHandle, start_server
from tests.server import models
from tests.server.helpers import HOOK_ENV, Gate

PROTOCOLS = ["http", "grpc"]
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    for name in ("identity", "add_sub"):
        zoo.build(name, root)
    (root / "strings" / "1").mkdir(parents=True)
    models.write_config(root, "strings", STRINGS_CONFIG)
    return root


STRINGS_CONFIG = """name: "strings"
backend: "perfkit_identity"
max_batch_size: 4
input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ 3 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ 3 ] } ]
"""


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerHandle]:
    handle = start_server(repo, "--allow-client-shm=true", "--max-shared-memory-regions=8")
    try:
        yield handle
    finally:
        handle.stop()


def _client(server: ServerHandle, protocol: str) -> Any:
    if protocol == "http":
        return httpclient.InferenceServerClient(server.http_url)
    return grpcclient.InferenceServerClient(server.grpc_url)


class Regions:
    """POSIX shm objects made for one test; unregistered and destroyed at its end."""

    def __init__(self, server: ServerHandle) -> None:
        self.server = server
        self.handles: list[tuple[str, Any]] = []

    def create(self, size: int, data: list[np.ndarray[Any, Any]] | None = None) -> tuple[str, str]:
        name = f"pk_test_{uuid.uuid4().hex[:12]}"
        key = f"/{name}"
        handle = shm.create_shared_memory_region(name, key, size)
        self.handles.append((name, handle))
        if data:
            shm.set_shared_memory_region(handle, data)
        return name, key

    def handle(self, name: str) -> Any:
        return dict(self.handles)[name]

    def close(self) -> None:
        client = httpclient.InferenceServerClient(self.server.http_url)
        for name, handle in self.handles:
            client.unregister_system_shared_memory(name)
            shm.destroy_shared_memory_region(handle)


@pytest.fixture
def regions(server: ServerHandle) -> Iterator[Regions]:
    made = Regions(server)
    try:
        yield made
    finally:
        made.close()


def _http(server: ServerHandle, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{server.http_url}{path}", data=data, method=method)
    try:
        with _OPENER.open(request, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw or b"null")
        except json.JSONDecodeError:
            return exc.code, raw.decode()


def _still_serving(server: ServerHandle) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    i = httpclient.InferInput("INPUT0", [1, 16], "FP32")
    i.set_data_from_numpy(x)
    np.testing.assert_array_equal(client.infer("identity", [i]).as_numpy("OUTPUT0"), x)


def test_metadata_lists_the_extensions(server: ServerHandle) -> None:
    extensions = _client(server, "http").get_server_metadata()["extensions"]
    assert {"system_shared_memory", "cuda_shared_memory"} <= set(extensions)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_register_status_unregister(server: ServerHandle, regions: Regions, protocol: str) -> None:
    client = _client(server, protocol)
    name, key = regions.create(4096 + 64)
    client.register_system_shared_memory(name, key, 64, offset=4096)
    if protocol == "http":
        assert client.get_system_shared_memory_status(name) == [
            {"name": name, "key": key, "offset": 4096, "byte_size": 64}
        ]
        assert {"name": name, "key": key, "offset": 4096, "byte_size": 64} in (
            client.get_system_shared_memory_status()
        )
    else:
        status = client.get_system_shared_memory_status(name, as_json=True)
        assert status == {
            "regions": {name: {"name": name, "key": key, "offset": "4096", "byte_size": "64"}}
        }
        assert name in client.get_system_shared_memory_status(as_json=True)["regions"]
    client.unregister_system_shared_memory(name)
    with pytest.raises(InferenceServerException) as exc:
        client.get_system_shared_memory_status(name)
    assert f"Unable to find system shared memory region: '{name}'" in exc.value.message()
    # Unregistering an unknown region succeeds, as in Triton.
    client.unregister_system_shared_memory(name)


def test_unregister_all(server: ServerHandle, regions: Regions) -> None:
    client = _client(server, "http")
    names = []
    for _ in range(2):
        name, key = regions.create(64)
        client.register_system_shared_memory(name, key, 64)
        names.append(name)
    client.unregister_system_shared_memory()
    assert client.get_system_shared_memory_status() == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_inputs_and_outputs_in_shm_match_plain(
    server: ServerHandle, regions: Regions, protocol: str
) -> None:
    mod = httpclient if protocol == "http" else grpcclient
    client = _client(server, protocol)
    rng = np.random.default_rng(7)
    a = rng.standard_normal((2, 16)).astype(np.float32)
    b = rng.standard_normal((2, 16)).astype(np.float32)
    plain_in = [
        mod.InferInput("INPUT0", [2, 16], "FP32"),
        mod.InferInput("INPUT1", [2, 16], "FP32"),
    ]
    plain_in[0].set_data_from_numpy(a)
    plain_in[1].set_data_from_numpy(b)
    plain = client.infer("add_sub", plain_in)

    # Both inputs in one region (b at an offset), outputs in another.
    in_name, in_key = regions.create(a.nbytes + b.nbytes, [a, b])
    out_name, out_key = regions.create(2 * a.nbytes)
    client.register_system_shared_memory(in_name, in_key, a.nbytes + b.nbytes)
    client.register_system_shared_memory(out_name, out_key, 2 * a.nbytes)
    ins = [mod.InferInput("INPUT0", [2, 16], "FP32"), mod.InferInput("INPUT1", [2, 16], "FP32")]
    ins[0].set_shared_memory(in_name, a.nbytes)
    ins[1].set_shared_memory(in_name, b.nbytes, offset=a.nbytes)
    outs = [mod.InferRequestedOutput("OUTPUT0"), mod.InferRequestedOutput("OUTPUT1")]
    outs[0].set_shared_memory(out_name, a.nbytes)
    outs[1].set_shared_memory(out_name, a.nbytes, offset=a.nbytes)
    result = client.infer("add_sub", ins, outputs=outs)

    handle = regions.handle(out_name)
    for i, out in enumerate(("OUTPUT0", "OUTPUT1")):
        meta = result.get_output(out)
        if protocol == "http":
            assert meta == {"name": out, "datatype": "FP32", "shape": [2, 16]}
        else:
            assert (meta.datatype, list(meta.shape)) == ("FP32", [2, 16])
        got = shm.get_contents_as_numpy(handle, np.float32, [2, 16], offset=i * a.nbytes)
        np.testing.assert_array_equal(got, plain.as_numpy(out))
    np.testing.assert_allclose(plain.as_numpy("OUTPUT0"), a + b, rtol=1e-6)

    # Mixed: INPUT0 in shm, INPUT1 inline; OUTPUT1 inline.
    mixed = [mod.InferInput("INPUT0", [2, 16], "FP32"), mod.InferInput("INPUT1", [2, 16], "FP32")]
    mixed[0].set_shared_memory(in_name, a.nbytes)
    mixed[1].set_data_from_numpy(b)
    result = client.infer("add_sub", mixed, outputs=[mod.InferRequestedOutput("OUTPUT1")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), plain.as_numpy("OUTPUT1"))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bytes_tensors_in_shm(server: ServerHandle, regions: Regions, protocol: str) -> None:
    """BYTES tensors travel serialized (4-byte length + bytes per element), as tritonclient writes
    them; an output region too small for them is Triton's INTERNAL error."""
    mod = httpclient if protocol == "http" else grpcclient
    client = _client(server, protocol)
    x = np.array([[b"a", b"", "ünï".encode()]], dtype=np.object_)
    serialized = serialize_byte_tensor(x)
    size = serialized_byte_size(serialized)
    name, key = regions.create(size, [serialized])
    out_name, out_key = regions.create(256)
    client.register_system_shared_memory(name, key, size)
    client.register_system_shared_memory(out_name, out_key, 256)
    i = mod.InferInput("INPUT0", [1, 3], "BYTES")
    i.set_shared_memory(name, size)
    out = mod.InferRequestedOutput("OUTPUT0")
    out.set_shared_memory(out_name, 256)
    result = client.infer("strings", [i], outputs=[out])
    assert list(result.get_output("OUTPUT0")["shape"] if protocol == "http" else
                result.get_output("OUTPUT0").shape) == [1, 3]  # fmt: skip
    got = shm.get_contents_as_numpy(regions.handle(out_name), np.object_, [1, 3])
    assert got.tolist() == x.tolist()
    small = mod.InferRequestedOutput("OUTPUT0")
    small.set_shared_memory(out_name, 8)
    with pytest.raises(InferenceServerException) as exc:
        client.infer("strings", [i], outputs=[small])
    assert f"(8 bytes) should be at least {size} bytes to hold the results" in exc.value.message()


def _identity_in_shm(
    client: Any,
    mod: Any,
    region: str,
    byte_size: int,
    offset: int = 0,
    shape: tuple[int, ...] = (1, 16),
) -> Any:
    i = mod.InferInput("INPUT0", list(shape), "FP32")
    i.set_shared_memory(region, byte_size, offset=offset)
    return client.infer("identity", [i])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_errors_as_triton(server: ServerHandle, regions: Regions, protocol: str) -> None:
    mod = httpclient if protocol == "http" else grpcclient
    client = _client(server, protocol)
    x = np.ones((1, 16), dtype=np.float32)
    name, key = regions.create(128, [x])
    client.register_system_shared_memory(name, key, 64)
    cases: list[tuple[Callable[[], Any], str, tuple[str, ...]]] = [
        (
            lambda: client.register_system_shared_memory(name, key, 64),
            f"shared memory region '{name}' already in manager",
            ("400", "StatusCode.ALREADY_EXISTS"),
        ),
        (
            lambda: client.register_system_shared_memory("pk_other", key, 64, offset=100),
            "failed to register shared memory region 'pk_other': invalid args",
            ("400", "StatusCode.INVALID_ARGUMENT"),
        ),
        (
            lambda: client.register_system_shared_memory("pk_other", "/pk_no_such_key_xyz", 64),
            "Unable to open shared memory region: '/pk_no_such_key_xyz'",
            ("500", "StatusCode.INTERNAL"),
        ),
        (
            lambda: client.register_system_shared_memory("pk_other", "/../etc/passwd", 64),
            "Unable to open shared memory region: '/../etc/passwd'",
            ("500", "StatusCode.INTERNAL"),
        ),
        (
            lambda: _identity_in_shm(client, mod, "pk_unknown_region", 64),
            "Unable to find shared memory region: 'pk_unknown_region'",
            ("404", "StatusCode.NOT_FOUND"),
        ),
        (
            lambda: _identity_in_shm(client, mod, name, 64, offset=64),
            f"Invalid offset for shared memory region: '{name}'",
            ("400", "StatusCode.INVALID_ARGUMENT"),
        ),
        (
            lambda: _identity_in_shm(client, mod, name, 64, offset=32),
            f"Invalid offset + byte size for shared memory region: '{name}'",
            ("400", "StatusCode.INVALID_ARGUMENT"),
        ),
        (
            lambda: _identity_in_shm(client, mod, name, 60),
            "input byte size mismatch for input 'INPUT0' for model 'identity'. Expected 64, got 60",
            ("400", "StatusCode.INVALID_ARGUMENT"),
        ),
    ]
    for call, message, statuses in cases:
        with pytest.raises(InferenceServerException) as exc:
            call()
        assert message in exc.value.message()
        assert str(exc.value.status()) in statuses, (message, exc.value.status())
    _still_serving(server)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_output_region_too_small(server: ServerHandle, regions: Regions, protocol: str) -> None:
    mod = httpclient if protocol == "http" else grpcclient
    client = _client(server, protocol)
    name, key = regions.create(32)
    client.register_system_shared_memory(name, key, 32)
    i = mod.InferInput("INPUT0", [1, 16], "FP32")
    i.set_data_from_numpy(np.ones((1, 16), dtype=np.float32))
    out = mod.InferRequestedOutput("OUTPUT0")
    out.set_shared_memory(name, 32)
    with pytest.raises(InferenceServerException) as exc:
        client.infer("identity", [i], outputs=[out])
    assert (
        "shared memory size specified with the request for output 'OUTPUT0' (32 bytes) should be "
        "at least 64 bytes to hold the results" in exc.value.message()
    )
    assert str(exc.value.status()) in ("500", "StatusCode.INTERNAL")
    _still_serving(server)


def test_http_input_with_data_and_region(server: ServerHandle, regions: Regions) -> None:
    name, key = regions.create(64)
    _client(server, "http").register_system_shared_memory(name, key, 64)
    body = {
        "inputs": [
            {
                "name": "INPUT0",
                "datatype": "FP32",
                "shape": [1, 16],
                "data": [0.0] * 16,
                "parameters": {"shared_memory_region": name, "shared_memory_byte_size": 64},
            }
        ]
    }
    status, reply = _http(server, "POST", "/v2/models/identity/infer", body)
    assert status == 400
    assert reply["error"].startswith("Input must set only one of the following fields")
    body["inputs"][0].pop("data")
    body["outputs"] = [
        {"name": "OUTPUT0", "parameters": {"shared_memory_region": name, "binary_data": True}}
    ]
    status, reply = _http(server, "POST", "/v2/models/identity/infer", body)
    assert (status, reply["error"]) == (
        400,
        "Output can't set both 'shared_memory_region' and 'binary_data'",
    )


async def test_unregister_while_in_use(
    perfkit_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Triton's deferred unregister: regions unregistered (and unlinked) while a request that uses
    them executes stay mapped until it is done; it answers, its output lands in the region; the
    names are free at once."""
    monkeypatch.setenv(HOOK_ENV, str(tmp_path))
    with Gate(tmp_path, "gated") as gate:
        models.slow_identity(tmp_path / "repo", "gated", delay_us=0)
        server = perfkit_server(tmp_path / "repo", "--allow-client-shm=true")
        made = Regions(server)
        try:
            x = np.arange(16, dtype=np.float32).reshape(1, 16)
            in_name, in_key = made.create(64, [x])
            out_name, out_key = made.create(64)
            client = httpaio.InferenceServerClient(server.http_url)
            try:
                await client.register_system_shared_memory(in_name, in_key, 64)
                await client.register_system_shared_memory(out_name, out_key, 64)
                i = httpaio.InferInput("INPUT0", [1, 16], "FP32")
                i.set_shared_memory(in_name, 64)
                out = httpaio.InferRequestedOutput("OUTPUT0")
                out.set_shared_memory(out_name, 64)
                pending = asyncio.ensure_future(client.infer("gated", [i], outputs=[out]))
                await gate.started()
                await client.unregister_system_shared_memory()
                assert await client.get_system_shared_memory_status() == []
                for name, _ in made.handles:  # unlink the objects too: the mappings remain
                    os.unlink(f"/dev/shm/{name}")
                gate.release()
                result = await pending
                assert result.get_output("OUTPUT0")["shape"] == [1, 16]
                got = shm.get_contents_as_numpy(made.handle(out_name), np.float32, [1, 16])
                np.testing.assert_array_equal(got, x)
            finally:
                await client.close()
        finally:
            for _, handle in made.handles:
                with contextlib.suppress(Exception):  # already unlinked
                    shm.destroy_shared_memory_region(handle)


def test_region_cap(server: ServerHandle, regions: Regions) -> None:
    client = _client(server, "http")
    name, key = regions.create(64)
    for i in range(8):
        client.register_system_shared_memory(f"{name}_{i}", key, 64)
    try:
        with pytest.raises(InferenceServerException) as exc:
            client.register_system_shared_memory(f"{name}_8", key, 64)
        assert "--max-shared-memory-regions" in exc.value.message()
    finally:
        for i in range(8):
            client.unregister_system_shared_memory(f"{name}_{i}")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cuda_register_without_cuda(server: ServerHandle, protocol: str) -> None:
    if os.path.exists("/dev/nvidiactl"):
        pytest.skip("this machine has an NVIDIA driver")
    client = _client(server, protocol)
    with pytest.raises(InferenceServerException) as exc:
        # tritonclient takes the handle as base64 over both protocols.
        client.register_cuda_shared_memory("pk_cuda", base64.b64encode(bytes(64)), 0, 64)
    assert "failed to register CUDA shared memory region: 'pk_cuda', GPUs not supported" in (
        exc.value.message()
    )
    assert str(exc.value.status()) in ("400", "StatusCode.INVALID_ARGUMENT")
    if protocol == "http":
        assert client.get_cuda_shared_memory_status() == []
    else:
        assert client.get_cuda_shared_memory_status(as_json=True) == {}
    client.unregister_cuda_shared_memory()
    _still_serving(server)


def test_http_register_requests_as_triton(server: ServerHandle) -> None:
    base = "/v2/systemsharedmemory"
    cases = [
        (f"{base}/register", {"key": "/k", "byte_size": 1},
         "'region name' is necessary to register system shared memory region"),
        (f"{base}/region/r/register", {"byte_size": 1},
         "Shared memory register request has no 'key' field"),
        (f"{base}/region/r/register", {"key": "/k"},
         "Shared memory register request has no 'byte_size' field"),
        (f"{base}/region/r/register", {"key": "/", "byte_size": 1},
         "cannot register shared memory region 'r' - invalid shm key '/'"),
        (f"{base}/region/r/register",
         {"key": "/triton_python_backend_shm_region_x", "byte_size": 1},
         "cannot register shared memory region 'r' with key '/triton_python_backend_shm_region_x' "
         "as the key contains the reserved prefix 'triton_python_backend_shm_region_'"),
        ("/v2/cudasharedmemory/register", {},
         "'region name' is necessary to register cuda shared memory region"),
    ]  # fmt: skip
    for path, body, message in cases:
        assert _http(server, "POST", path, body) == (400, {"error": message}), path
    assert _http(server, "GET", f"{base}/region/r/register")[0] == 405
    _still_serving(server)


def test_client_shm_off_by_default(repo: Path, tmp_path: Path) -> None:
    handle = start_server(repo, log_path=tmp_path / "server.log")
    try:
        status, reply = _http(
            handle,
            "POST",
            "/v2/systemsharedmemory/region/r/register",
            {"key": "/k", "byte_size": 1},
        )
        assert (status, reply["error"]) == (
            501,
            "Client shared memory is disabled. Start the server with '--allow-client-shm=true' "
            "to enable.",
        )
        assert _http(handle, "GET", "/v2/systemsharedmemory/status") == (200, [])
        with pytest.raises(InferenceServerException) as exc:
            grpcclient.InferenceServerClient(handle.grpc_url).unregister_system_shared_memory()
        assert str(exc.value.status()) == "StatusCode.UNIMPLEMENTED"
    finally:
        handle.stop()


def _cuda_client_lib() -> Any:
    """tritonclient's CUDA shared-memory utilities (cuda-python), or skip."""
    try:
        import tritonclient.utils.cuda_shared_memory as cudashm
    except Exception as exc:  # RuntimeError without cuda-python
        pytest.skip(f"tritonclient's CUDA shared memory does not load: {exc}")
    return cudashm


@pytest.mark.gpu
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cuda_inputs_and_outputs(server: ServerHandle, protocol: str) -> None:
    """The real path: the server (another process, CuPy) opens the client's IPC handles, reads the
    input from device memory and writes the output there."""
    pytest.importorskip("cupy")
    cudashm = _cuda_client_lib()
    mod = httpclient if protocol == "http" else grpcclient
    client = _client(server, protocol)
    x = np.arange(32, dtype=np.float32).reshape(2, 16)
    tag = uuid.uuid4().hex[:8]
    in_h = cudashm.create_shared_memory_region(f"pk_cin_{tag}", x.nbytes, 0)
    out_h = cudashm.create_shared_memory_region(f"pk_cout_{tag}", x.nbytes, 0)
    try:
        cudashm.set_shared_memory_region(in_h, [x])
        client.register_cuda_shared_memory(
            f"pk_cin_{tag}", cudashm.get_raw_handle(in_h), 0, x.nbytes
        )
        client.register_cuda_shared_memory(
            f"pk_cout_{tag}", cudashm.get_raw_handle(out_h), 0, x.nbytes
        )
        if protocol == "http":
            assert {"name": f"pk_cin_{tag}", "device_id": 0, "byte_size": x.nbytes} in (
                client.get_cuda_shared_memory_status()
            )
        i = mod.InferInput("INPUT0", [2, 16], "FP32")
        i.set_shared_memory(f"pk_cin_{tag}", x.nbytes)
        out = mod.InferRequestedOutput("OUTPUT0")
        out.set_shared_memory(f"pk_cout_{tag}", x.nbytes)
        client.infer("identity", [i], outputs=[out])
        got = cudashm.get_contents_as_numpy(out_h, np.float32, [2, 16])
        np.testing.assert_array_equal(got, x)
    finally:
        client.unregister_cuda_shared_memory()
        cudashm.destroy_shared_memory_region(in_h)
        cudashm.destroy_shared_memory_region(out_h)
    assert _http(server, "GET", "/v2/cudasharedmemory/status") == (200, [])


def test_perfkit_serve_passes_allow_client_shm(repo: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "perfkit", "serve"]
    handle = start_server(repo, "--allow-client-shm", "true", command=command,
                          log_path=tmp_path / "serve.log")  # fmt: skip
    try:
        status, reply = _http(handle, "POST", "/v2/systemsharedmemory/region/r/register", {})
        assert (status, reply) == (
            400,
            {"error": "Shared memory register request has no 'key' field"},
        )
    finally:
        handle.stop()


class FakeCudaRuntime:
    """A FAKE CUDA runtime (this machine has no GPU): "device memory" is host memory, an IPC handle
    names one of `buffers`, and cudaMemcpy is a memmove. It stands in for CuPy's runtime at the
    GPU boundary so that the CUDA region's own logic (offsets, copy directions, deferred close)
    runs here; the real path is the gpu-marked tests'."""

    def __init__(self) -> None:
        self.buffers: dict[bytes, Any] = {}
        self.copies: list[int] = []
        self.closed: list[int] = []

    def allocate(self, handle: bytes, size: int) -> Any:
        self.buffers[handle] = (ctypes.c_char * size)()
        return self.buffers[handle]

    # CuPy's names (cupy.cuda.runtime mirrors the CUDA runtime's).
    def setDevice(self, device_id: int) -> None:
        assert device_id == 0

    def ipcOpenMemHandle(self, handle: bytes) -> int:
        return ctypes.addressof(self.buffers[handle])

    def ipcCloseMemHandle(self, ptr: int) -> None:
        self.closed.append(ptr)

    def memcpy(self, dst: int, src: int, size: int, kind: int) -> None:
        self.copies.append(kind)
        ctypes.memmove(dst, src, size)


def test_cuda_region_logic_with_a_fake_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    from perfkit_server import shm as server_shm
    from perfkit_server import shm_cuda
    from perfkit_server.errors import InvalidInput

    fake = FakeCudaRuntime()
    monkeypatch.setattr(shm_cuda, "_runtime", lambda name: fake)
    monkeypatch.setattr(
        shm_cuda,
        "_allocation_size",
        lambda ptr: {ctypes.addressof(b): len(b) for b in fake.buffers.values()}[ptr],
    )
    regions = server_shm.SharedMemory(True, 8)
    device = fake.allocate(b"h" * 64, 128)
    x = np.arange(16, dtype=np.float32)
    ctypes.memmove(ctypes.addressof(device), x.tobytes(), x.nbytes)

    with pytest.raises(InvalidInput, match="invalid args"):
        regions.register_cuda("c", b"h" * 64, 0, 256)  # larger than the allocation
    with pytest.raises(InvalidInput, match="valid base64 encoded cudaIpcMemHandle_t"):
        regions.register_cuda("c", b"h" * 63, 0, 64)
    assert fake.closed == [ctypes.addressof(device)]  # the refused handle was closed again
    fake.closed.clear()
    regions.register_cuda("c", b"h" * 64, 0, 128)
    assert regions.status("", "cuda") == [{"name": "c", "device_id": 0, "byte_size": 128}]
    assert regions.status("", "system") == []
    with pytest.raises(server_shm.RegionNotFound, match="registered as CUDA shared memory, not"):
        regions.status("c", "system")

    ref = server_shm.ShmRef("c", 0, 64)
    got = regions.input_array(ref, "INPUT0", "FP32", (1, 16), "m")
    np.testing.assert_array_equal(got, x.reshape(1, 16))
    slot = regions.output_slot(server_shm.ShmRef("c", 64, 64))
    regions.unregister("c", "cuda")
    assert fake.closed == []  # an in-flight request's output slot still holds it
    server_shm.write_output(slot, "OUTPUT0", x * 2)
    out = np.frombuffer(bytes(device)[64:128], dtype=np.float32)
    np.testing.assert_array_equal(out, x * 2)
    assert fake.copies == [2, 1]  # device -> host for the input, host -> device for the output
    del slot
    assert fake.closed == [ctypes.addressof(device)]
