"""GPU metrics of a run (--collect-metrics) in the results and the HTML report: per GPU UUID
through results.json and results.csv, a GPU section with utilization, memory and power against
load when there are any, and no section (and no error) when there are none."""

from __future__ import annotations

import csv
from datetime import UTC, datetime

import pytest
from matplotlib.lines import Line2D

from perfkit.load.metrics_scrape import aggregate
from perfkit.report import html, plots
from perfkit.report.schema import level_gpus, load_result, write_run
from perfkit.results import RunResult
from tests.report.builders import make_run, replace

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
GiB = 1 << 30


def scraped(level: int, gpus: int = 2) -> dict[str, dict[str, float]]:
    """What MetricsScraper gives a level: perf_analyzer's aggregation of a few samples."""
    samples: list[dict[str, dict[str, float]]] = [
        {
            "nv_gpu_utilization": {f"GPU-fake-{i}": 0.1 * level + 0.05 * k for i in range(gpus)},
            "nv_gpu_power_usage": {f"GPU-fake-{i}": 100.0 + 20 * level for i in range(gpus)},
            "nv_gpu_memory_used_bytes": {f"GPU-fake-{i}": (2 + k) * GiB for i in range(gpus)},
            "nv_gpu_memory_total_bytes": {f"GPU-fake-{i}": 80 * GiB for i in range(gpus)},
            "nv_cpu_utilization": {"": 0.25},
            "nv_cpu_memory_used_bytes": {"": 4 * GiB},
        }
        for k in range(3)
    ]
    return aggregate(samples)


def gpu_run(gpus: int = 2) -> RunResult:
    run = make_run()
    return replace(
        run,
        measurements=tuple(
            replace(m, metrics=scraped(int(m.level), gpus)) for m in run.measurements
        ),
    )


def test_level_gpus_in_the_tuners_units():
    m = gpu_run().measurements[1]  # concurrency 2
    g0, g1 = level_gpus(m)
    assert (g0.uuid, g1.uuid) == ("GPU-fake-0", "GPU-fake-1")
    assert g0.utilization == pytest.approx(0.25)  # the mean of 0.2, 0.25, 0.3
    assert g0.memory_used_mb == 4 * GiB / 1e6  # the peak, Model Analyzer's MB
    assert g0.memory_total_mb == 80 * GiB / 1e6
    assert g0.power_w == 140.0
    # The shape Measurement.metrics keeps (pa_csv, pa_stdout and the tuner read it).
    assert m.metrics["gpu_utilization"]["GPU-fake-1"] == g1.utilization
    assert m.metrics["cpu_utilization"] == {"": 0.25}
    assert m.metrics["cpu_memory_used_bytes"] == {"": 4 * GiB}


def test_gpu_metrics_survive_results_json_and_csv(tmp_path):
    run = gpu_run()
    json_path, csv_path = write_run(run, tmp_path)
    back = load_result(json_path)
    assert isinstance(back, RunResult)
    assert [level_gpus(m) for m in back.measurements] == [level_gpus(m) for m in run.measurements]
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert (
        float(rows[0]["gpu_utilization__GPU-fake-1"])
        == run.measurements[0].metrics["gpu_utilization"]["GPU-fake-1"]
    )
    assert float(rows[-1]["gpu_memory_used_bytes__GPU-fake-0"]) == 4 * GiB
    assert float(rows[0]["cpu_utilization"]) == 0.25


def test_html_report_has_a_gpu_section_when_there_are_gpu_metrics():
    page = html.build_report([("gpu", gpu_run()), ("one-gpu", gpu_run(gpus=1))], generated_at=NOW)
    assert "<h3>GPU metrics</h3>" in page
    assert "<code>GPU-fake-1</code> (85,899 MB)" in page
    for text in ("GPU utilization", "GPU memory used", "GPU power", "gpu: GPU-fake-1"):
        assert text in page, text
    fig = plots.gpu_vs_load([("gpu", gpu_run())])
    assert fig is not None
    util, memory, power = fig.axes
    assert [len(ax.lines) for ax in fig.axes] == [2, 2, 2]  # one line per GPU
    assert ys(util.lines[0]) == pytest.approx([15.0, 25.0, 45.0, 85.0])  # %, the level's mean
    assert max(ys(memory.lines[0])) == 4 * GiB / 1e6
    assert ys(power.lines[1]) == [120.0, 140.0, 180.0, 260.0]


def ys(line: Line2D) -> list[float]:
    return [float(y) for y in line.get_ydata()]  # type: ignore[union-attr, arg-type]


def test_no_gpu_metrics_no_gpu_section():
    # A run with --collect-metrics on a host without a GPU: every GPU metric is empty.
    run = make_run()
    empty = aggregate([{"nv_cpu_utilization": {"": 0.5}}])
    run = replace(run, measurements=tuple(replace(m, metrics=empty) for m in run.measurements))
    assert plots.gpu_vs_load([("cpu", run)]) is None
    page = html.build_report([("cpu", run)], generated_at=NOW)
    assert "GPU metrics" not in page
    assert "Throughput vs load" in page
    # and without --collect-metrics at all
    bare = replace(run, measurements=tuple(replace(m, metrics={}) for m in run.measurements))
    assert plots.gpu_vs_load([("bare", bare)]) is None
