"""CUDA shared memory on a real GPU: a client's device buffers (CuPy's cudaMalloc, exported with
cudaIpcGetMemHandle) registered over HTTP and gRPC, inputs read from them and outputs written to
them by a KIND_GPU model, as torch computes them; and `perfkit run --shared-memory cuda`."""

from __future__ import annotations

import base64
import csv
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.gpu import helpers
from tests.gpu.conftest import GpuHost, GpuServer

pytestmark = pytest.mark.gpu

MODEL = "fc_model_pt"


@pytest.fixture
def cupy(gpu_host: GpuHost) -> Any:
    return pytest.importorskip("cupy", reason="CuPy is not installed: it makes the test's regions")


class Region:
    """`nbytes` of device memory on GPU 0 (a cudaMalloc of its own: an IPC handle names the whole
    allocation, so a pool's sub-allocation would not do)."""

    def __init__(self, cupy: Any, name: str, nbytes: int) -> None:
        self.name, self.nbytes = name, nbytes
        self.memory = cupy.cuda.Memory(nbytes)
        self.pointer = cupy.cuda.MemoryPointer(self.memory, 0)
        handle = cupy.cuda.runtime.ipcGetMemHandle(self.memory.ptr)
        self.raw_handle = base64.b64encode(bytes(handle)).decode()

    def write(self, array: helpers.Array) -> None:
        array = np.ascontiguousarray(array)
        self.pointer.copy_from_host(array.ctypes.data, array.nbytes)

    def read(self, dtype: Any, shape: tuple[int, ...]) -> helpers.Array:
        out = np.empty(shape, dtype=dtype)
        self.pointer.copy_to_host(out.ctypes.data, out.nbytes)
        return out


@pytest.fixture(params=["http", "grpc"])
def client(request: pytest.FixtureRequest, gpu_server: GpuServer) -> Iterator[Any]:
    handle = gpu_server.handle
    if request.param == "http":
        c: Any = httpclient.InferenceServerClient(handle.http_url)
    else:
        c = grpcclient.InferenceServerClient(handle.grpc_url)
    yield c
    c.unregister_cuda_shared_memory()
    c.close()


def test_cuda_regions_carry_inputs_and_outputs(
    gpu_server: GpuServer, cupy: Any, client: Any
) -> None:
    lib = httpclient if isinstance(client, httpclient.InferenceServerClient) else grpcclient
    cfg = helpers.config(gpu_server.repo, MODEL)
    inputs = helpers.random_inputs(cfg, 4, seed=7, variable=6, int_high=5000)
    want = helpers.torch_reference(
        gpu_server.repo / MODEL / "1" / "model.pt", cfg, inputs, "cuda:0"
    )
    ((in_name, array),) = inputs.items()
    regions = {in_name: Region(cupy, "in", array.nbytes)}
    regions[in_name].write(array)
    for name, ref in want.items():
        regions[name] = Region(cupy, f"out_{name}", ref.nbytes)
    try:
        for region in regions.values():
            client.register_cuda_shared_memory(region.name, region.raw_handle, 0, region.nbytes)
        status = client.get_cuda_shared_memory_status()
        listed = status if isinstance(status, list) else _grpc_regions(status)
        assert {r["name"]: int(r["byte_size"]) for r in listed} == {
            r.name: r.nbytes for r in regions.values()
        }
        inp = lib.InferInput(in_name, list(array.shape), helpers.v2_datatype(cfg, in_name))
        inp.set_shared_memory("in", array.nbytes)
        outputs = []
        for name, ref in want.items():
            out = lib.InferRequestedOutput(name)
            out.set_shared_memory(f"out_{name}", ref.nbytes)
            outputs.append(out)
        result = client.infer(MODEL, [inp], outputs=outputs)
        for name, ref in want.items():
            meta = result.get_output(name)
            shape = meta["shape"] if isinstance(meta, dict) else list(meta.shape)
            assert [int(d) for d in shape] == list(ref.shape), name
            got = regions[name].read(ref.dtype, ref.shape)
            helpers.assert_close(got, ref, rel=1e-4, what=f"{MODEL} {name} from its CUDA region")
    finally:
        # Before the device memory is freed: the server holds it open until then.
        client.unregister_cuda_shared_memory()


def _grpc_regions(status: Any) -> list[dict[str, Any]]:
    return [
        {"name": name, "byte_size": region.byte_size} for name, region in status.regions.items()
    ]


def test_perfkit_run_shared_memory_cuda(
    gpu_host: GpuHost, gpu_server: GpuServer, tmp_path: Path
) -> None:
    pytest.importorskip(
        "cuda.bindings.runtime",
        reason="cuda-python is not installed: tritonclient's CUDA shared memory needs it",
    )
    report = tmp_path / "pa.csv"
    args = [
        *("-m", "resnet50_pt", "-u", gpu_server.handle.grpc_url, "-i", "grpc"),
        *("--shared-memory", "cuda", "--concurrency-range", "4"),
        *("-p", "1000", "-s", "1000", "-r", "3", "-f", str(report)),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "perfkit", "run", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=helpers.real_nvml_env(),
    )
    assert proc.returncode == 0, (
        f"perfkit run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    )
    (row,) = list(csv.DictReader(report.read_text().splitlines()))
    assert float(row["Inferences/Second"]) > 0
    client = httpclient.InferenceServerClient(gpu_server.handle.http_url)
    try:
        assert client.get_cuda_shared_memory_status() == [], "perfkit left CUDA regions registered"
    finally:
        client.close()
