"""Instance groups placed as Triton places them (issue #11, acceptance 2).

The rules are tested through the pure placement functions (two GPUs, a GPU-capable backend: no
GPU needed); the server tests show what this GPU-less host does end to end: KIND_GPU refused with
a message naming the model, the group and what is missing while the other models serve (at start
and through the load API), KIND_AUTO resolved to KIND_CPU in the config the server reports, and,
with the FAKE NVML's two GPUs, the missing CUDA provider named instead of a missing GPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from perfkit_server.backends import probe_host
from perfkit_server.load_limits import LoadLimits, check_load
from perfkit_server.placement import (
    Group,
    Host,
    Slot,
    apply_groups,
    placed_groups,
    resolve_groups,
    slots,
)
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from tests.server import models
from tests.server.helpers import fp32_input

K = mc.ModelInstanceGroup
TWO_GPUS = Host(gpus=(0, 1))
NO_GPU = Host(gpus=(), no_gpu="no GPU is visible (NVML found none)")
NO_CUDA = "backend 'onnxruntime' has no CUDA execution provider"


def _config(*groups: dict[str, Any], name: str = "m") -> Any:
    config = mc.ModelConfig(name=name)
    for group in groups:
        config.instance_group.add(**group)
    return config


def _place(config: Any, host: Host, backend: str = "onnxruntime") -> list[tuple[str, int, str]]:
    return [(s.kind, s.device_id, s.group) for s in slots(resolve_groups(config, backend, host))]


def _refusal(config: Any, host: Host, backend: str = "onnxruntime") -> str:
    with pytest.raises(ValueError, match=r"instance group '\S+' \(instance_group\[\d\]\)") as info:
        resolve_groups(config, backend, host)
    return str(info.value)


# -- the pure rules ----------------------------------------------------------------------------


def test_kind_gpu_count_on_each_listed_gpu():
    config = _config({"kind": K.KIND_GPU, "count": 2, "gpus": [1]})
    assert _place(config, TWO_GPUS) == [("KIND_GPU", 1, "m_0")] * 2


def test_kind_gpu_without_gpus_runs_count_on_every_visible_gpu_count_major():
    config = _config({"kind": K.KIND_GPU, "count": 2, "name": "g"})
    assert _place(config, TWO_GPUS) == [
        ("KIND_GPU", 0, "g"),
        ("KIND_GPU", 1, "g"),
        ("KIND_GPU", 0, "g"),
        ("KIND_GPU", 1, "g"),
    ]
    [group] = resolve_groups(config, "onnxruntime", TWO_GPUS)
    assert group == Group(index=0, name="g", kind="KIND_GPU", count=2, gpus=(0, 1))


def test_groups_mix_and_keep_their_order():
    config = _config(
        {"kind": K.KIND_CPU, "count": 1},
        {"kind": K.KIND_GPU, "count": 1, "gpus": [1, 0]},
    )
    assert _place(config, TWO_GPUS) == [
        ("KIND_CPU", 0, "m_0"),
        ("KIND_GPU", 1, "m_1"),
        ("KIND_GPU", 0, "m_1"),
    ]
    assert [s.group_index for s in slots(resolve_groups(config, "onnxruntime", TWO_GPUS))] == [
        0,
        1,
        1,
    ]


def test_no_instance_group_is_one_kind_auto_group_named_after_the_model():
    assert _place(_config(), NO_GPU) == [("KIND_CPU", 0, "m")]
    assert _place(_config(), TWO_GPUS) == [("KIND_GPU", 0, "m"), ("KIND_GPU", 1, "m")]


def test_count_under_one_is_one():
    assert _place(_config({"kind": K.KIND_CPU, "count": 0}), NO_GPU) == [("KIND_CPU", 0, "m_0")]


@pytest.mark.parametrize(
    ("host", "gpus", "expected"),
    [
        (NO_GPU, [], "KIND_CPU"),
        (TWO_GPUS, [], "KIND_GPU"),
        (TWO_GPUS, [1], "KIND_GPU"),
        (TWO_GPUS, [1, 5], "KIND_CPU"),  # a listed GPU is not visible (and then gpus refuse it)
        (Host(gpus=(0, 1), backend_gpu=NO_CUDA), [], "KIND_CPU"),
    ],
)
def test_kind_auto_is_gpu_only_with_a_visible_gpu_and_a_gpu_capable_backend(host, gpus, expected):
    config = _config({"kind": K.KIND_AUTO, "count": 1, "gpus": gpus})
    if expected == "KIND_CPU" and gpus:
        message = _refusal(config, host)
        assert "KIND_AUTO resolved to KIND_CPU" in message
        assert "gpu" in message
        return
    [group] = resolve_groups(config, "onnxruntime", host)
    assert group.kind == expected
    assert group.gpus == ((tuple(gpus) or host.gpus) if expected == "KIND_GPU" else ())


def test_kind_gpu_without_a_visible_gpu_names_model_group_and_what_is_missing():
    config = _config({"kind": K.KIND_GPU, "count": 1, "name": "fc_model_pt_0"}, name="fc_model_pt")
    host = Host(gpus=(), no_gpu="no GPU is visible (NVML found none)", backend_gpu=NO_CUDA)
    message = _refusal(config, host)
    assert "instance group 'fc_model_pt_0' (instance_group[0]) of model 'fc_model_pt'" in message
    assert "KIND_GPU" in message
    assert "no GPU is visible (NVML found none)" in message
    assert NO_CUDA in message
    assert "KIND_CPU" in message  # what to do


def test_kind_gpu_with_gpus_but_no_gpu_capable_backend_names_the_backend_only():
    config = _config({"kind": K.KIND_GPU, "count": 1})
    message = _refusal(config, Host(gpus=(0, 1), backend_gpu=NO_CUDA))
    assert NO_CUDA in message
    assert "no GPU is visible" not in message


def test_kind_gpu_naming_an_invisible_gpu_is_refused():
    config = _config({"kind": K.KIND_CPU, "count": 1}, {"kind": K.KIND_GPU, "gpus": [0, 5]})
    message = _refusal(config, TWO_GPUS)
    assert "instance group 'm_1' (instance_group[1]) of model 'm'" in message
    assert "gpu id 5 is not visible" in message
    assert "visible GPUs: 0, 1" in message


@pytest.mark.parametrize("kind", [K.KIND_CPU, K.KIND_MODEL])
def test_cpu_and_model_groups_may_not_list_gpus(kind):
    message = _refusal(_config({"kind": kind, "gpus": [0]}), TWO_GPUS)
    assert f"has kind {K.Kind.Name(kind)}" in message
    assert "only a KIND_GPU group may list GPUs" in message


def test_kind_model_runs_on_the_cpu_device():
    assert (
        _place(_config({"kind": K.KIND_MODEL, "count": 2}), TWO_GPUS)
        == [("KIND_MODEL", 0, "m_0")] * 2
    )


def test_a_gpu_only_backend_refuses_the_cpu():
    message = _refusal(_config({"kind": K.KIND_CPU}), Host(gpus=(), backend_cpu=False), "tensorrt")
    assert "backend 'tensorrt' runs only on a GPU (KIND_GPU)" in message
    host = Host(gpus=(), no_gpu="no GPU is visible (x)", backend_cpu=False, backend_gpu="no trt")
    message = _refusal(_config(), host, "tensorrt")
    assert "KIND_AUTO resolved to KIND_CPU: no GPU is visible (x)" in message
    assert "no trt" in message


@pytest.mark.parametrize(
    ("group", "words"),
    [
        ({"passive": True}, "passive"),
        ({"profile": ["0"]}, "only supported for TensorRT"),
        ({"secondary_devices": [{"device_id": 0}]}, "secondary_devices"),
    ],
)
def test_fields_this_server_cannot_honour_are_refused(group, words):
    assert words in _refusal(_config({"kind": K.KIND_CPU, **group}), NO_GPU)


def test_apply_groups_writes_what_triton_reports_and_reads_back():
    config = _config({"kind": K.KIND_GPU, "count": 0}, {"kind": K.KIND_AUTO, "count": 3})
    groups = resolve_groups(config, "onnxruntime", TWO_GPUS)
    apply_groups(config, groups)
    assert [
        (g.name, K.Kind.Name(g.kind), g.count, list(g.gpus)) for g in config.instance_group
    ] == [
        ("m_0", "KIND_GPU", 1, [0, 1]),
        ("m_1", "KIND_GPU", 3, [0, 1]),
    ]
    assert placed_groups(config) == groups
    empty = _config()
    apply_groups(empty, resolve_groups(empty, "onnxruntime", NO_GPU))
    assert [(g.name, K.Kind.Name(g.kind)) for g in empty.instance_group] == [("m", "KIND_CPU")]


def test_instance_cap_counts_instances_as_placed():
    config = _config({"kind": K.KIND_GPU, "count": 40})
    limits = LoadLimits(
        max_instances_per_model=64,
        max_threads_per_instance=8,
        max_warmup_count=10,
        max_warmup_bytes=1 << 20,
    )
    groups = resolve_groups(config, "onnxruntime", TWO_GPUS)
    assert len(slots(groups)) == 80
    with pytest.raises(ValueError, match="80 instances") as info:
        check_load(config, "onnxruntime", limits, "cfg", groups)
    assert "--max-instances-per-model=80" in str(info.value)
    one_gpu = resolve_groups(_config({"kind": K.KIND_GPU, "count": 40, "gpus": [1]}), "x", TWO_GPUS)
    check_load(config, "onnxruntime", limits, "cfg", one_gpu)
    assert slots(one_gpu)[0] == Slot("KIND_GPU", 1, "m_0", 0)


def test_probe_host_reads_visible_gpus_once_and_asks_the_backend_only_when_needed(
    fake_nvml, monkeypatch
):
    gpu = _config({"kind": K.KIND_GPU})
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with fake_nvml.installed():
        host = probe_host(gpu, "onnxruntime")
        assert host.gpus == (0, 1)
        assert host.backend_gpu is not None
        assert NO_CUDA in host.backend_gpu
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
        assert probe_host(gpu, "onnxruntime").gpus == (0,)  # CUDA renumbers what it shows
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        host = probe_host(gpu, "perfkit_identity")
        assert host.gpus == ()
        assert host.no_gpu == "no GPU is visible (NVML found none with CUDA_VISIBLE_DEVICES='')"
        assert host.backend_gpu == "backend 'perfkit_identity' runs on the CPU only"
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
        # A KIND_CPU model's backend is not asked about GPUs (no torch/tensorrt import for it).
        cpu = probe_host(_config({"kind": K.KIND_CPU}), "pytorch")
        assert (cpu.gpus, cpu.backend_gpu) == ((0, 1), None)
    tensorrt = probe_host(_config({"kind": K.KIND_CPU}), "tensorrt")
    assert not tensorrt.backend_cpu


# -- a real server on this GPU-less host --------------------------------------------------------


def _gpu_model(repo: Path, name: str, extra: str = "") -> None:
    models.add_sub(repo, name, config_extra=f"instance_group [ {{ kind: KIND_GPU {extra} }} ]")


def _index(url: str) -> dict[str, dict[str, str]]:
    client = httpclient.InferenceServerClient(url)
    return {e["name"]: e for e in client.get_model_repository_index()}


def _serves(url: str, name: str = "add_sub") -> None:
    client = httpclient.InferenceServerClient(url)
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    result = client.infer(
        name, [fp32_input(httpclient, "INPUT0", a), fp32_input(httpclient, "INPUT1", a)]
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * a)


def test_startup_refuses_kind_gpu_and_serves_the_others(perfkit_server, tmp_path):
    models.add_sub(tmp_path, "add_sub", config_extra="instance_group [ { kind: KIND_CPU } ]")
    _gpu_model(tmp_path, "on_gpu")
    models.add_sub(tmp_path, "auto")  # no instance_group: KIND_AUTO
    models.add_sub(
        tmp_path, "auto2", config_extra="instance_group [ { kind: KIND_AUTO count: 2 } ]"
    )
    server = perfkit_server(tmp_path)
    _serves(server.http_url)
    _serves(server.http_url, "auto")
    client = httpclient.InferenceServerClient(server.http_url)
    assert not client.is_model_ready("on_gpu")
    entry = _index(server.http_url)["on_gpu"]
    assert entry["state"] == "UNAVAILABLE"
    reason = entry["reason"]
    assert "instance group 'on_gpu_0' (instance_group[0]) of model 'on_gpu'" in reason
    assert "has kind KIND_GPU but no GPU is visible" in reason
    assert "failed to load model 'on_gpu'" in server.log()
    # KIND_AUTO resolved to KIND_CPU in the config the server reports, over HTTP and gRPC.
    [group] = client.get_model_config("auto")["instance_group"]
    assert (group["name"], group["kind"], group["count"], group["gpus"]) == (
        "auto",
        "KIND_CPU",
        1,
        [],
    )
    [group] = client.get_model_config("auto2")["instance_group"]
    assert (group["name"], group["kind"], group["count"]) == ("auto2_0", "KIND_CPU", 2)
    config = grpcclient.InferenceServerClient(server.grpc_url).get_model_config("auto").config
    assert config.instance_group[0].kind == K.KIND_CPU


def test_load_api_refuses_kind_gpu_and_serves_the_others(perfkit_server, tmp_path):
    models.add_sub(tmp_path, "add_sub")
    server = perfkit_server(tmp_path, "--model-control-mode=explicit", "--load-model=add_sub")
    override = {
        "name": "add_sub",
        "backend": "onnxruntime",
        "max_batch_size": 8,
        "input": [
            {"name": n, "data_type": "TYPE_FP32", "dims": [16]} for n in ("INPUT0", "INPUT1")
        ],
        "output": [
            {"name": n, "data_type": "TYPE_FP32", "dims": [16]} for n in ("OUTPUT0", "OUTPUT1")
        ],
        "instance_group": [{"name": "big", "kind": "KIND_GPU", "count": 2}],
    }
    for client in (
        httpclient.InferenceServerClient(server.http_url),
        grpcclient.InferenceServerClient(server.grpc_url),
    ):
        with pytest.raises(InferenceServerException) as info:
            client.load_model("add_sub", config=json.dumps(override))
        message = str(info.value.message())
        assert "instance group 'big' (instance_group[0]) of model 'add_sub'" in message
        assert "no GPU is visible" in message
        # A failed reload leaves the served version in place.
        assert client.is_model_ready("add_sub")
    _serves(server.http_url)
    assert server.process.poll() is None


def test_fake_gpus_name_the_missing_cuda_provider(perfkit_server, tmp_path, fake_nvml):
    models.add_sub(tmp_path, "add_sub", config_extra="instance_group [ { kind: KIND_CPU } ]")
    _gpu_model(tmp_path, "ort_gpu")
    _gpu_model(tmp_path, "ort_gpu5", "gpus: [ 5 ]")
    models.add_sub(tmp_path, "auto")
    models.slow_identity(tmp_path, "ident_gpu", delay_us=0)
    config = tmp_path / "ident_gpu" / "config.pbtxt"
    config.write_text(config.read_text().replace("KIND_CPU", "KIND_GPU"))
    server = perfkit_server(tmp_path, env=fake_nvml.env())
    _serves(server.http_url)
    index = _index(server.http_url)
    ort_gpu = index["ort_gpu"]["reason"]
    assert "instance group 'ort_gpu_0' (instance_group[0]) of model 'ort_gpu'" in ort_gpu
    assert NO_CUDA in ort_gpu
    assert "pip install 'perfkit[gpu]'" in ort_gpu
    assert "no GPU is visible" not in ort_gpu
    ident = index["ident_gpu"]["reason"]
    assert "backend 'perfkit_identity' runs on the CPU only" in ident
    assert "no GPU is visible" not in ident
    gpu5 = index["ort_gpu5"]["reason"]
    assert "gpu id 5 is not visible (visible GPUs: 0, 1" in gpu5
    # Two GPUs, but onnxruntime without CUDA: KIND_AUTO is KIND_CPU.
    client = httpclient.InferenceServerClient(server.http_url)
    [group] = client.get_model_config("auto")["instance_group"]
    assert (group["kind"], group["gpus"]) == ("KIND_CPU", [])
    _serves(server.http_url, "auto")
