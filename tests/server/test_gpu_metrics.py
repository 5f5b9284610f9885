"""/metrics exports Triton's polled GPU metrics (through the FAKE NVML: NVML is the boundary) and
its CPU metrics (this host's real /proc), as tritonserver names, labels and scales them."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from perfkit_server.system_metrics import cpu_utilization, read_memory
from prometheus_client.parser import text_string_to_metric_families

from tests.server import models

GPU_FAMILIES = (
    "nv_gpu_utilization",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_power_usage",
    "nv_gpu_power_limit",
    "nv_energy_consumption",
)
GiB = 1 << 30


def page(url: str) -> str:
    with urllib.request.urlopen(f"http://{url}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def families(text: str) -> dict[str, dict[str, float]]:
    """Family -> {gpu_uuid (or "") -> value} (the parser names a counter's samples `_total`)."""
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(family.name, {})[sample.labels.get("gpu_uuid", "")] = sample.value
    return out


def test_gpu_metrics_from_nvml(perfkit_server, fake_nvml, tmp_path):
    models.add_sub(tmp_path)
    server = perfkit_server(tmp_path, "--metrics-interval-ms=100", env=fake_nvml.env())
    text = page(server.metrics_url)
    first = families(text)
    uuids = {"GPU-fake-0", "GPU-fake-1"}
    for name in GPU_FAMILIES:
        assert set(first[name]) == uuids, name
    # Triton's HELP texts and types; the counter keeps its name (no _total).
    assert "# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)\n" in text
    assert "# HELP nv_gpu_power_limit GPU power management limit in watts\n" in text
    assert "# TYPE nv_energy_consumption counter\n" in text
    assert (
        "# HELP nv_energy_consumption GPU energy consumption in joules since the Triton Server "
        "started\n" in text
    )
    assert "nv_energy_consumption_total" not in text
    # Triton's units: fraction, bytes, watts.
    assert first["nv_gpu_utilization"]["GPU-fake-0"] in (0.2, 0.6)
    assert first["nv_gpu_utilization"]["GPU-fake-1"] in (0.3, 0.7)
    assert first["nv_gpu_memory_total_bytes"]["GPU-fake-1"] == 80 * GiB
    assert first["nv_gpu_memory_used_bytes"]["GPU-fake-0"] in (2 * GiB, 3 * GiB)
    assert first["nv_gpu_power_usage"]["GPU-fake-0"] in (150.0, 350.0)
    assert first["nv_gpu_power_limit"]["GPU-fake-0"] == 700.0

    # Polled on a timer: a later scrape sees new readings (bounded wait on the condition).
    deadline = time.monotonic() + 20
    while True:
        later = families(page(server.metrics_url))
        if (
            later["nv_gpu_utilization"] != first["nv_gpu_utilization"]
            and later["nv_energy_consumption"]["GPU-fake-0"]
            > first["nv_energy_consumption"]["GPU-fake-0"]
        ):
            break
        assert time.monotonic() < deadline, "GPU metrics never changed between polls"
    # energy counts from the server's start: joules of the fake's 1 s per power read
    assert later["nv_energy_consumption"]["GPU-fake-0"] >= 150.0


def test_cpu_metrics_are_the_hosts(perfkit_server, tmp_path):
    models.add_sub(tmp_path)
    server = perfkit_server(tmp_path, "--metrics-interval-ms=100")
    text = page(server.metrics_url)
    got = families(text)
    assert "# HELP nv_cpu_utilization CPU utilization rate [0.0 - 1.0]\n" in text
    assert 0.0 <= got["nv_cpu_utilization"][""] <= 1.0
    memory = read_memory(Path("/proc"))
    assert memory is not None
    assert got["nv_cpu_memory_total_bytes"][""] == memory[0]  # MemTotal, which does not move
    assert 0 < got["nv_cpu_memory_used_bytes"][""] <= memory[0]


def test_no_nvml_no_gpu_families(perfkit_server, tmp_path):
    models.add_sub(tmp_path)
    server = perfkit_server(tmp_path)
    text = page(server.metrics_url)
    assert "nv_gpu_" not in text
    assert "nv_energy_consumption" not in text
    assert "nv_cpu_utilization" in text
    assert "nv_inference_count" in text
    assert "Traceback" not in server.log()


def test_flags_turn_gpu_and_cpu_metrics_off(perfkit_server, fake_nvml, tmp_path):
    models.add_sub(tmp_path)
    server = perfkit_server(tmp_path, "--allow-gpu-metrics=false", env=fake_nvml.env())
    text = page(server.metrics_url)
    assert "nv_gpu_" not in text
    assert "nv_energy_consumption" not in text
    assert "nv_cpu_utilization" in text
    server = perfkit_server(
        tmp_path, "--allow-cpu-metrics=false", "--allow-gpu-metrics=true", env=fake_nvml.env()
    )
    text = page(server.metrics_url)
    assert "nv_cpu_" not in text
    assert "nv_gpu_utilization{" in text


def test_cpu_utilization_as_triton_computes_it():
    # user nice system idle iowait irq softirq steal
    old = (100, 0, 50, 800, 50, 0, 0, 0)
    new = (160, 10, 70, 860, 60, 5, 5, 0)
    busy, idle = 60 + 10 + 20 + 5 + 5, 60 + 10
    assert cpu_utilization(new, old) == busy / (busy + idle)
    assert cpu_utilization(old, old) == 0.0
    assert cpu_utilization(old, new) == 0.0  # counters that went backwards count 0


def test_bad_metrics_interval_is_refused(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "perfkit_server",
            "--model-repository",
            str(tmp_path),
            "--metrics-interval-ms=0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "--metrics-interval-ms must be >= 1" in proc.stderr
