"""The `gpu` tests: they need a real NVIDIA GPU, torch built with CUDA and NVML (nvidia-ml-py).

Every module here sets `pytestmark = pytest.mark.gpu`, so `make test` (-m "not gpu") leaves them
out and `make gpu-check` (pytest -m gpu) runs them. Each test asks, through its fixtures, for the
session's `gpu_host`: without a usable GPU the test is skipped with the reason, except under
`make gpu-check` (PERFKIT_GPU_CHECK=1), where the missing GPU fails it instead: a GPU host whose
GPU tests all skipped must not pass the device check.

The servers here run with the REAL NVML: the FAKE one (tests/fakes/nvml) is kept out of their
environment, and `gpu_host` fails if the pynvml this process imports is the fake.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.server import ServerHandle, start_server
from tests.gpu import helpers

REQUIRED = os.environ.get("PERFKIT_GPU_CHECK") == "1"


@dataclass(frozen=True)
class GpuHost:
    """What the test process sees: torch's CUDA devices and NVML's visible GPUs (same order)."""

    torch: Any
    uuids: tuple[str, ...]
    names: tuple[str, ...]
    memory_total: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.uuids)


def _find_gpus() -> GpuHost | str:
    """The GPUs, or why there are none usable (a sentence)."""
    try:
        import torch
    except ImportError as exc:
        return f"torch is not installed ({exc}); install torch built with CUDA (README, GPUs)"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build; install torch built with CUDA"
    if not torch.cuda.is_available():
        return (
            f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: no NVIDIA driver, "
            f"no device, or CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r} hides them"
        )
    try:
        import pynvml
    except ImportError:
        return "nvidia-ml-py is not installed (`import pynvml` fails)"
    if getattr(pynvml, "FAKE", False):
        return (
            f"`import pynvml` gives the FAKE NVML ({pynvml.__file__}): PYTHONPATH leaks tests/fakes"
        )
    from perfkit.nvml import Nvml

    nvml = Nvml.open()
    if nvml is None:
        return "NVML does not initialize (nvmlInit failed: is the NVIDIA driver loaded?)"
    try:
        gpus, readings = nvml.gpus(), nvml.read()
    finally:
        nvml.close()
    if len(gpus) != torch.cuda.device_count():
        return (
            f"NVML shows {len(gpus)} visible GPU(s) and torch {torch.cuda.device_count()}: "
            "they must agree (CUDA_VISIBLE_DEVICES, MIG?)"
        )
    return GpuHost(
        torch=torch,
        uuids=tuple(g.uuid for g in gpus),
        names=tuple(g.name for g in gpus),
        memory_total=tuple(r.memory_total_bytes or 0 for r in readings),
    )


@pytest.fixture(scope="session")
def _gpu_probe() -> GpuHost | str:
    return _find_gpus()


@pytest.fixture
def gpu_host(_gpu_probe: GpuHost | str) -> GpuHost:
    """The GPUs; skips the test without one (fails it under `make gpu-check`)."""
    if isinstance(_gpu_probe, str):
        if REQUIRED:
            pytest.fail(f"make gpu-check needs a GPU: {_gpu_probe}", pytrace=False)
        pytest.skip(f"no usable NVIDIA GPU: {_gpu_probe}")
    return _gpu_probe


@dataclass
class GpuServer:
    """The session's server and its repository."""

    handle: ServerHandle
    repo: Path


@pytest.fixture(scope="session")
def _gpu_server(
    _gpu_probe: GpuHost | str, tmp_path_factory: pytest.TempPathFactory, zoo_cache_dir: Path
) -> Iterator[GpuServer | None]:
    if isinstance(_gpu_probe, str):  # nothing is built or started without a GPU
        yield None
        return
    repo = tmp_path_factory.mktemp("gpu-repo")
    for name in ("resnet50_pt", "fc_model_pt"):
        helpers.build_zoo(name, repo, zoo_cache_dir)
        helpers.set_instance_groups(repo, name, [{"kind": "KIND_GPU", "count": 1, "gpus": [0]}])
        # Copies the placement tests reload with their own instance groups.
        helpers.copy_model(repo, name, f"{name}_place")
    # ONNX Runtime on the GPU (loaded by its tests only when onnxruntime-gpu is there).
    helpers.build_zoo("mlp", repo, zoo_cache_dir)
    helpers.set_instance_groups(repo, "mlp", [{"kind": "KIND_GPU", "count": 1, "gpus": [0]}])
    handle = start_server(
        repo,
        "--model-control-mode=explicit",
        "--load-model=resnet50_pt",
        "--load-model=fc_model_pt",
        "--metrics-interval-ms=200",
        "--allow-client-shm=true",
        log_path=tmp_path_factory.mktemp("gpu-server-logs") / "server.log",
        timeout=180.0,
        env=helpers.real_nvml_env(),
    )
    try:
        yield GpuServer(handle, repo)
    finally:
        handle.stop()


@pytest.fixture
def gpu_server(
    gpu_host: GpuHost, _gpu_server: GpuServer | None, request: pytest.FixtureRequest
) -> Iterator[GpuServer]:
    """One perfkit_server for the session (explicit mode, real NVML, GPU metrics polled every
    100 ms, client shared memory allowed) with resnet50_pt and fc_model_pt loaded as KIND_GPU x1
    on GPU 0; in its repository also `resnet50_pt_place` / `fc_model_pt_place` to load with other
    instance groups and the ONNX `mlp` as KIND_GPU x1 on GPU 0 (not loaded). Its log is written to
    stderr when a test using it fails."""
    assert _gpu_server is not None
    handle = _gpu_server.handle
    if handle.process.poll() is not None:
        pytest.fail(f"the session's perfkit_server died:\n{handle.log()}", pytrace=False)
    yield _gpu_server
    rep = getattr(request.node, "_perfkit_rep_call", None)
    if rep is not None and rep.failed:
        sys.stderr.write(f"----- perfkit_server log ({handle.log_path}) -----\n{handle.log()}\n")
