"""--collect-metrics with GPUs (the FAKE NVML: NVML is the boundary): perf_analyzer's GPU cells
from the server's nv_gpu_* families, and perfkit's own NVML reading when a server on this host
exports none."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from perfkit.load import run_sweep
from perfkit.load.metrics_scrape import is_local
from perfkit.load.spec import ConcurrencyLoad, MeasureSpec, MetricsSpec, SweepSpec, TargetSpec
from tests.fixtures.server import ServerHandle
from tests.load.helpers import identity_config, write_model

# A level of three 250 ms windows: a few scrapes at 100 ms, whatever the request count.
MEASURE = MeasureSpec(interval_ms=250, min_window_ms=250, stability_pct=1000.0, max_trials=4)
CELL = re.compile(r"^GPU-fake-0:([0-9.e+]+);GPU-fake-1:([0-9.e+]+);$")


@pytest.fixture
def repo(tmp_path):
    write_model(tmp_path, "fast", identity_config("fast"))
    return tmp_path


def test_verbose_csv_gpu_cells_from_the_servers_metrics(perfkit_server, fake_nvml, repo, tmp_path):
    server = perfkit_server(repo, "--metrics-interval-ms=100", env=fake_nvml.env())
    out = tmp_path / "pa.csv"
    p = subprocess.run(
        [sys.executable, "-m", "perfkit", "run", "--no-live", "-m", "fast", "-u", server.http_url,
         "-p", "250", "-s", "1000", "-r", "4", "--collect-metrics",
         "--metrics-url", server.metrics_url + "/metrics", "--metrics-interval", "100",
         "--verbose-csv", "-f", str(out)],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, COLUMNS="200"),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    head, row = out.read_text().splitlines()
    assert head.endswith(
        ",Avg GPU Utilization,Avg GPU Power Usage,Max GPU Memory Usage,Total GPU Memory"
    )
    cells = [CELL.match(c) for c in row.split(",")[-4:]]
    assert None not in cells, row
    util, power, used, total = (c for c in cells if c is not None)
    # perf_analyzer's aggregation in Triton's units: mean utilization (fraction) and power (W),
    # peak memory used and total memory (bytes).
    assert 0.2 <= float(util[1]) <= 0.6
    assert 0.3 <= float(util[2]) <= 0.7
    assert 150 <= float(power[1]) <= 350
    assert float(used[1]) in (
        pytest.approx(2 * 2**30, rel=1e-5),
        pytest.approx(3 * 2**30, rel=1e-5),
    )
    assert float(total[1]) == pytest.approx(80 * 2**30, rel=1e-5)  # "8.58993e+10"
    assert "GPU metrics: from the server's nv_gpu_*" in p.stderr
    # and the GPU block of perf_analyzer's summary
    assert "Avg GPU Utilization:" in p.stdout
    assert "GPU-fake-1 :" in p.stdout


def spec(server: ServerHandle, interval_ms: int = 100) -> SweepSpec:
    return SweepSpec(
        target=TargetSpec(url=server.http_url, protocol="http", model="fast"),
        measure=MEASURE,
        load=ConcurrencyLoad(levels=(1, 2)),
        metrics=MetricsSpec(url=server.metrics_url + "/metrics", interval_ms=interval_ms),
    )


def test_nvml_read_directly_when_a_local_server_exports_no_gpu_metrics(
    perfkit_server, fake_nvml, repo
):
    server = perfkit_server(repo)  # no FAKE NVML there: its /metrics has no nv_gpu_*
    with fake_nvml.installed():
        result = run_sweep(spec(server))
    assert result.status == "ok", result.messages
    assert any("read from NVML on this host (2 GPU(s))" in m for m in result.messages)
    for m in result.measurements:
        assert set(m.metrics["gpu_utilization"]) == {"GPU-fake-0", "GPU-fake-1"}
        assert 0.2 <= m.metrics["gpu_utilization"]["GPU-fake-0"] <= 0.6
        assert 150.0 <= m.metrics["gpu_power_usage"]["GPU-fake-1"] <= 400.0
        assert m.metrics["gpu_memory_total_bytes"]["GPU-fake-0"] == 80 * 2**30
        # the server's own host CPU numbers are kept alongside
        assert 0.0 <= m.metrics["cpu_utilization"][""] <= 1.0
        assert m.metrics["cpu_memory_used_bytes"][""] > 0


def test_no_gpu_anywhere_empty_gpu_metrics_no_error(perfkit_server, repo):
    server = perfkit_server(repo)
    result = run_sweep(spec(server))
    assert result.status == "ok", result.messages
    assert any("GPU metrics: none" in m for m in result.messages)
    for m in result.measurements:
        assert not any(m.metrics[k] for k in m.metrics if k.startswith("gpu_"))


def test_only_a_server_on_this_host_is_read_through_nvml():
    assert is_local("localhost:8002/metrics")
    assert is_local("http://127.0.0.1:8002/metrics")
    assert is_local("[::1]:8002/metrics")
    assert not is_local("gpu-box:8002/metrics")
    assert not is_local("http://10.0.0.7:8002/metrics")
