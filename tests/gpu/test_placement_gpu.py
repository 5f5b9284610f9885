"""Instance groups placed as Triton places them, on the real GPUs: KIND_GPU puts `count` instances
on each listed GPU (every visible GPU without `gpus`), KIND_AUTO is GPU for the pytorch backend
when a GPU is visible and CPU when CUDA_VISIBLE_DEVICES hides them all, a GPU that is not there
fails that model's load only."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from perfkit.nvml import Nvml
from tests.fixtures.server import ServerHandle
from tests.gpu import helpers
from tests.gpu.conftest import GpuHost, GpuServer

pytestmark = pytest.mark.gpu


@pytest.fixture
def client(gpu_server: GpuServer) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(gpu_server.handle.http_url, network_timeout=120.0)
    yield c
    for name in ("fc_model_pt_place", "resnet50_pt_place"):
        try:
            c.unload_model(name)
        except InferenceServerException:
            pass
    c.close()


def _load(client: httpclient.InferenceServerClient, repo: Any, name: str, groups: Any) -> Any:
    client.load_model(name, config=helpers.override_json(repo, name, groups))
    assert client.is_model_ready(name)
    return client.get_model_config(name)["instance_group"]


def _placed(groups: list[dict[str, Any]]) -> list[tuple[str, int, list[int]]]:
    return [(g["kind"], int(g.get("count", 1)), list(g.get("gpus", []))) for g in groups]


def test_kind_gpu_without_gpus_is_on_every_visible_gpu(
    gpu_host: GpuHost, gpu_server: GpuServer, client: httpclient.InferenceServerClient
) -> None:
    groups = _load(client, gpu_server.repo, "fc_model_pt_place", [{"kind": "KIND_GPU", "count": 2}])
    assert _placed(groups) == [("KIND_GPU", 2, list(range(gpu_host.count)))]


def test_kind_gpu_with_gpus_counts_per_listed_gpu(
    gpu_host: GpuHost, gpu_server: GpuServer, client: httpclient.InferenceServerClient
) -> None:
    last = gpu_host.count - 1
    groups = _load(
        client,
        gpu_server.repo,
        "fc_model_pt_place",
        [{"kind": "KIND_GPU", "count": 2, "gpus": [last]}, {"kind": "KIND_CPU", "count": 1}],
    )
    assert _placed(groups) == [("KIND_GPU", 2, [last]), ("KIND_CPU", 1, [])]


@pytest.mark.parametrize("groups", [[{"kind": "KIND_AUTO", "count": 1}], None])
def test_kind_auto_resolves_to_gpu_for_pytorch(
    gpu_host: GpuHost, gpu_server: GpuServer, client: httpclient.InferenceServerClient, groups: Any
) -> None:
    """KIND_AUTO, or no instance_group at all (Triton's default group), with a GPU visible."""
    placed = _placed(_load(client, gpu_server.repo, "fc_model_pt_place", groups))
    assert placed == [("KIND_GPU", 1, list(range(gpu_host.count)))]


def test_a_gpu_that_is_not_there_fails_that_load_only(
    gpu_host: GpuHost, gpu_server: GpuServer, client: httpclient.InferenceServerClient
) -> None:
    missing = gpu_host.count  # CUDA ids run 0..count-1
    override = helpers.override_json(
        gpu_server.repo, "fc_model_pt_place", [{"kind": "KIND_GPU", "gpus": [missing]}]
    )
    with pytest.raises(InferenceServerException) as info:
        client.load_model("fc_model_pt_place", config=override)
    message = str(info.value)
    assert "fc_model_pt_place" in message
    assert str(missing) in message
    assert "GPU" in message
    assert client.is_model_ready("resnet50_pt")
    assert client.is_model_ready("fc_model_pt")


def test_kind_gpu_instances_hold_gpu_memory(
    gpu_host: GpuHost, gpu_server: GpuServer, client: httpclient.InferenceServerClient
) -> None:
    """Two resnet50 instances on GPU 0 hold at least one copy of its 25.5 M FP32 weights there
    (NVML's used memory of GPU 0 rises by 80 MB or more): the instances do run on the GPU."""
    weights = 25_500_000 * 4
    before = _used(0)
    _load(
        client,
        gpu_server.repo,
        "resnet50_pt_place",
        [{"kind": "KIND_GPU", "count": 2, "gpus": [0]}],
    )
    after = _used(0)
    assert after - before >= 0.8 * weights, (
        f"GPU 0 memory used rose by {(after - before) / 1e6:.0f} MB loading 2 resnet50 instances "
        f"(expected >= {0.8 * weights / 1e6:.0f} MB)"
    )


def _used(device_id: int) -> int:
    nvml = Nvml.open()
    assert nvml is not None
    try:
        reading = nvml.read()[device_id]
    finally:
        nvml.close()
    assert reading.memory_used_bytes is not None
    return reading.memory_used_bytes


@pytest.fixture
def hidden_gpu_server(
    gpu_host: GpuHost, gpu_server: GpuServer, perfkit_server: Callable[..., ServerHandle]
) -> ServerHandle:
    """A second server on the same repository with every GPU hidden (CUDA_VISIBLE_DEVICES="")."""
    env = dict(helpers.real_nvml_env(), CUDA_VISIBLE_DEVICES="")
    return perfkit_server(gpu_server.repo, "--model-control-mode=explicit", timeout=120.0, env=env)


def test_hidden_gpus_kind_auto_is_cpu_and_kind_gpu_fails(
    gpu_server: GpuServer, hidden_gpu_server: ServerHandle
) -> None:
    client = httpclient.InferenceServerClient(hidden_gpu_server.http_url, network_timeout=120.0)
    try:
        auto = _load(client, gpu_server.repo, "fc_model_pt_place", [{"kind": "KIND_AUTO"}])
        assert _placed(auto) == [("KIND_CPU", 1, [])]
        with pytest.raises(InferenceServerException) as info:
            client.load_model("fc_model_pt")  # its config.pbtxt says KIND_GPU
        assert "fc_model_pt" in str(info.value)
        assert "GPU" in str(info.value)
        assert client.is_model_ready("fc_model_pt_place")
    finally:
        client.close()
