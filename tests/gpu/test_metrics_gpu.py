"""Triton's GPU metrics from the real NVML: /metrics carries nv_gpu_* for each visible GPU under
its real UUID, utilization rises above 0 under load, and `perfkit run --collect-metrics` fills
perf_analyzer's GPU columns from them."""

from __future__ import annotations

import csv
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.gpu import helpers
from tests.gpu.conftest import GpuHost, GpuServer

pytestmark = pytest.mark.gpu

GPU_FAMILIES = (
    "nv_gpu_utilization",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_power_usage",
    "nv_gpu_power_limit",
    "nv_energy_consumption",
)


def test_nv_gpu_metrics_name_the_real_gpus(gpu_host: GpuHost, gpu_server: GpuServer) -> None:
    metrics = helpers.scrape(gpu_server.handle.metrics_url)
    for family in GPU_FAMILIES:
        assert family in metrics, f"/metrics has no {family}"
        assert set(helpers.by_uuid(metrics[family])) == set(gpu_host.uuids), family
    total = helpers.by_uuid(metrics["nv_gpu_memory_total_bytes"])
    assert [total[u] for u in gpu_host.uuids] == [float(m) for m in gpu_host.memory_total]
    used = helpers.by_uuid(metrics["nv_gpu_memory_used_bytes"])
    assert 0 < used[gpu_host.uuids[0]] <= total[gpu_host.uuids[0]]  # resnet50_pt is loaded there
    assert all(v > 0 for v in helpers.by_uuid(metrics["nv_gpu_power_limit"]).values())
    assert all(v > 0 for v in helpers.by_uuid(metrics["nv_gpu_power_usage"]).values())
    for family in ("nv_cpu_utilization", "nv_cpu_memory_total_bytes", "nv_cpu_memory_used_bytes"):
        assert family in metrics, f"/metrics has no {family}"


@pytest.fixture
def resnet50_load(gpu_server: GpuServer) -> Iterator[threading.Event]:
    """resnet50_pt inferences (batch 16) back to back from a thread until the test ends; the
    event is set once the first one has answered."""
    stop, answered = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    cfg = helpers.config(gpu_server.repo, "resnet50_pt")
    data = helpers.random_inputs(cfg, 16)
    ((name, array),) = data.items()

    def run() -> None:
        client = grpcclient.InferenceServerClient(gpu_server.handle.grpc_url)
        try:
            inp = grpcclient.InferInput(name, list(array.shape), helpers.v2_datatype(cfg, name))
            inp.set_data_from_numpy(np.ascontiguousarray(array))
            while not stop.is_set():
                client.infer("resnet50_pt", [inp])
                answered.set()
        except BaseException as exc:
            errors.append(exc)
            answered.set()
        finally:
            client.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield answered
    stop.set()
    thread.join(60)
    assert not errors, f"the load thread failed: {errors[0]!r}"


def test_gpu_utilization_rises_under_load(
    gpu_host: GpuHost, gpu_server: GpuServer, resnet50_load: threading.Event
) -> None:
    """NVML samples utilization over its own period (up to a second) and the server polls every
    100 ms: the condition is polled for, bounded at 30 s."""
    assert resnet50_load.wait(60), "no resnet50_pt inference answered in 60 s"
    uuid = gpu_host.uuids[0]
    deadline = time.monotonic() + 30.0
    seen: list[float] = []
    while time.monotonic() < deadline:
        metrics = helpers.scrape(gpu_server.handle.metrics_url)
        seen.append(helpers.by_uuid(metrics["nv_gpu_utilization"])[uuid])
        if seen[-1] > 0:
            break
        time.sleep(0.1)  # polling a condition (the next NVML sample), not ordering events
    assert seen[-1] > 0, f"nv_gpu_utilization of {uuid} stayed 0 under load: {seen[-10:]}"
    assert seen[-1] <= 1.0  # Triton's fraction, not a percentage


def test_perfkit_run_collect_metrics_fills_the_gpu_columns(
    gpu_host: GpuHost, gpu_server: GpuServer, tmp_path: Path
) -> None:
    report = tmp_path / "pa.csv"
    args = [
        *("-m", "resnet50_pt", "-u", gpu_server.handle.grpc_url, "-i", "grpc"),
        *("--concurrency-range", "8", "-p", "1500", "-s", "1000", "-r", "3"),
        *("--collect-metrics", "--metrics-url", f"{gpu_server.handle.metrics_url}/metrics"),
        *("--metrics-interval", "200", "--verbose-csv", "-f", str(report)),
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
    cells = {
        column: _cell(row[column])
        for column in (
            "Avg GPU Utilization",
            "Avg GPU Power Usage",
            "Max GPU Memory Usage",
            "Total GPU Memory",
        )
    }
    for column, values in cells.items():
        assert set(values) == set(gpu_host.uuids), f"{column}: {row[column]!r}"
    uuid = gpu_host.uuids[0]
    assert 0 < cells["Avg GPU Utilization"][uuid] <= 1.0
    assert cells["Avg GPU Power Usage"][uuid] > 0
    assert 0 < cells["Max GPU Memory Usage"][uuid] <= cells["Total GPU Memory"][uuid]
    # 6 significant digits, as perf_analyzer prints doubles
    assert cells["Total GPU Memory"][uuid] == pytest.approx(gpu_host.memory_total[0], rel=1e-5)


def _cell(text: str) -> dict[str, float]:
    """perf_analyzer's `GPU-uuid:value;GPU-uuid:value;` cell."""
    out: dict[str, float] = {}
    for part in filter(None, text.split(";")):
        uuid, _, value = part.rpartition(":")
        out[uuid] = float(value)
    return out
