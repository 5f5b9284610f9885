"""Pure parts of the load generator: ranges, schedules, exact statistics, stability, inputs, CSV."""

from __future__ import annotations

import asyncio
import itertools
import json

import numpy as np
import pytest

from perfkit.errors import ConfigError, ModelError
from perfkit.load import eventloop, schedule
from perfkit.load.inputs import prepare
from perfkit.load.spec import InputSpec, MeasureSpec, expand_range, parse_range
from perfkit.load.stats import RawWindow, is_stable, merge, nearest_rank, summarize, window_stat
from perfkit.report import pa_csv
from perfkit.results import WindowStat


def test_parse_and_expand_range():
    assert parse_range("1:4", kind="int", flag="--concurrency-range") == (1, 4, 1)
    assert expand_range(*parse_range("2:8:3", kind="int", flag="x")) == (2, 5, 8)
    assert expand_range(*parse_range("5", kind="int", flag="x")) == (5,)
    assert expand_range(*parse_range("10:20:5.5", kind="float", flag="x")) == (10, 15.5)
    for bad in ("", "a:b", "1:2:3:4", "0:4", "4:1", "1::2", "1:4:0"):
        with pytest.raises(ConfigError, match="x"):
            parse_range(bad, kind="int", flag="x")


def test_nearest_rank_is_perf_analyzers():
    vals = np.arange(1, 101, dtype=np.int64)  # 1..100
    assert nearest_rank(vals, 50) == 51  # int(0.5*99+0.5) = 50 -> value 51
    assert nearest_rank(vals, 99) == 99
    s = summarize(vals * 1000, extra=[99.9])
    assert s.count == 100
    assert s.p50_us == 51
    assert s.max_us == 100
    assert s.extra_percentiles_us == {99.9: 100.0}
    assert s.avg_us == pytest.approx(50.5)


def _ws(i, thr, lat, n=10):
    return WindowStat(
        index=i,
        start_ns=0,
        duration_ns=1,
        request_count=n,
        error_count=0,
        throughput_infer_per_s=thr,
        latency_avg_us=lat,
        latency_stability_us=lat,
    )


def test_stability_rule_last_three_windows():
    assert not is_stable([_ws(0, 100, 10), _ws(1, 100, 10)], pct=10)
    assert is_stable([_ws(0, 50, 10), _ws(1, 100, 10), _ws(2, 105, 10.5), _ws(3, 109, 10)], pct=10)
    assert not is_stable([_ws(0, 100, 10), _ws(1, 100, 10), _ws(2, 100, 11.5)], pct=10)
    assert not is_stable([_ws(0, 100, 10), _ws(1, 100, 10), _ws(2, 100, 10, n=0)], pct=10)


def test_merge_concatenates_exactly():
    a = RawWindow(
        index=0, start_ns=0, end_ns=10, sent_ns=np.array([0, 1]), done_ns=np.array([5, 6])
    )
    b = RawWindow(index=1, start_ns=10, end_ns=20, sent_ns=np.array([11]), done_ns=np.array([19]))
    m = merge([a, b])
    assert m.count == 3
    assert m.start_ns == 0
    assert m.end_ns == 20
    assert list(m.latency_ns()) == [5, 5, 8]
    st = window_stat(a, batch_size=2, percentile=None)
    assert st.throughput_infer_per_s == pytest.approx(2 * 2 * 1e9 / 10)


def test_schedules():
    assert list(itertools.islice(schedule.constant(4.0), 4)) == [
        0,
        250_000_000,
        500_000_000,
        750_000_000,
    ]
    offs = np.array(list(itertools.islice(schedule.poisson(1000.0, seed=1), 20000)))
    assert np.all(np.diff(offs) >= 0)
    assert np.diff(offs).mean() == pytest.approx(1e6, rel=0.05)
    assert list(itertools.islice(schedule.from_intervals([10, 30]), 5)) == [
        0,
        10_000,
        40_000,
        50_000,
        80_000,
    ]


def test_read_intervals(tmp_path):
    f = tmp_path / "iv.txt"
    f.write_text("100\n200\n\n")
    assert schedule.read_intervals(str(f)) == [100, 200]
    f.write_text("100\nabc\n")
    with pytest.raises(ConfigError, match=r"iv.txt:2"):
        schedule.read_intervals(str(f))
    with pytest.raises(ConfigError, match="cannot read"):
        schedule.read_intervals(str(tmp_path / "missing.txt"))


def test_measure_spec_validates():
    with pytest.raises(ConfigError, match="max_trials"):
        MeasureSpec(max_trials=2)
    with pytest.raises(ConfigError, match="percentile"):
        MeasureSpec(percentile=100)


MD = {"name": "m", "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, -1, 4]}],
      "outputs": [{"name": "Y", "datatype": "FP32", "shape": [-1, 4]}]}  # fmt: skip


def test_inputs_shapes_and_errors(tmp_path):
    p = prepare(MD, {"max_batch_size": 8}, InputSpec(batch_size=3, shapes={"X": (5, 4)}))
    assert p.sets[0]["X"].shape == (3, 5, 4)
    assert p.outputs == ("Y",)
    with pytest.raises(ModelError, match=r"--shape X:N,4"):
        prepare(MD, {"max_batch_size": 8}, InputSpec())
    with pytest.raises(ModelError, match="does not fit"):
        prepare(MD, {"max_batch_size": 8}, InputSpec(shapes={"X": (5, 3)}))
    with pytest.raises(ModelError, match="no such input"):
        prepare(MD, {"max_batch_size": 8}, InputSpec(shapes={"X": (5, 4), "Z": (1,)}))
    with pytest.raises(ModelError, match="max_batch_size"):
        prepare(MD, {"max_batch_size": 2}, InputSpec(batch_size=4, shapes={"X": (5, 4)}))
    z = prepare(MD, {"max_batch_size": 8}, InputSpec(source="zero", shapes={"X": (1, 4)}))
    assert not z.sets[0]["X"].any()


def test_inputs_from_json(tmp_path):
    f = tmp_path / "d.json"
    f.write_text(
        json.dumps(
            {"data": [{"X": [1, 2, 3, 4]}, {"X": {"content": list(range(8)), "shape": [2, 4]}}]}
        )
    )
    with pytest.raises(ModelError, match="give 'shape'"):
        prepare(MD, {"max_batch_size": 8}, InputSpec(source=str(f)))
    p = prepare(MD, {"max_batch_size": 8}, InputSpec(source=str(f), shapes={"X": (1, 4)}))
    assert [s["X"].shape for s in p.sets] == [(1, 1, 4), (1, 2, 4)]
    f.write_text(json.dumps({"data": [{"Q": [1]}]}))
    with pytest.raises(ConfigError, match="Q, which the model does not take"):
        prepare(MD, {"max_batch_size": 8}, InputSpec(source=str(f)))
    f.write_text(json.dumps({"data": [{"X": [1, 2, 3]}]}))
    with pytest.raises(ConfigError, match="has 3 values"):
        prepare(MD, {"max_batch_size": 8}, InputSpec(source=str(f), shapes={"X": (1, 4)}))
    f.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        prepare(MD, {"max_batch_size": 8}, InputSpec(source=str(f)))


# peers.md section 2.1, verbatim.
PA_DEFAULT = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,"
    "Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,"
    "p50 latency,p90 latency,p95 latency,p99 latency"
)
PA_VERBOSE_METRICS = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,"
    "Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,"
    "p50 latency,p90 latency,p95 latency,p99 latency,Avg latency,request/response,response wait,"
    "Avg GPU Utilization,Avg GPU Power Usage,Max GPU Memory Usage,Total GPU Memory"
)


@pytest.mark.parametrize("mode", ["concurrency", "request_rate"])
def test_csv_headers_are_perf_analyzers(mode):
    first = "Concurrency" if mode == "concurrency" else "Request Rate"
    default = PA_DEFAULT.replace("Concurrency", first, 1)
    verbose_m = PA_VERBOSE_METRICS.replace("Concurrency", first, 1)
    verbose = verbose_m.rsplit(",Avg GPU Utilization", 1)[0]
    assert ",".join(pa_csv.header(mode)) == default
    assert ",".join(pa_csv.header(mode, verbose=True)) == verbose
    assert ",".join(pa_csv.header(mode, verbose=True, collect_metrics=True)) == verbose_m
    p85 = ",".join(pa_csv.header(mode, percentile=85))
    assert "p50 latency,p85 latency,p90 latency" in p85
    assert "Avg latency" not in ",".join(pa_csv.header(mode, verbose=True, percentile=95))


def _m(level: float, thr: float, mode: str = "concurrency"):
    from perfkit.results import LatencySummary, Measurement, ServerBreakdown

    lat = LatencySummary(count=10, avg_us=1500.7, std_us=1.0, min_us=1.0, max_us=9.0,
                         p50_us=1400.9, p90_us=1800.2, p95_us=1900.0, p99_us=2500.5)  # fmt: skip
    srv = ServerBreakdown(inference_count=10, execution_count=5, success_count=10, failure_count=0,
                          avg_request_us=900.0, queue_us=100.4, compute_input_us=10.0,
                          compute_infer_us=700.9, compute_output_us=20.0, overhead_us=68.7,
                          network_server_send_recv_us=600.6)  # fmt: skip
    return Measurement(mode=mode, level=level, batch_size=1, stable=True, request_count=10,  # type: ignore[arg-type]
                       error_count=0, duration_ns=10**9, throughput_infer_per_s=thr, latency=lat,
                       client_send_us=12.9, client_recv_us=3.2, server=srv)  # fmt: skip


def test_csv_rows_integer_microseconds_sorted_by_throughput():
    text = pa_csv.render([_m(1, 1234.5678), _m(2, 999.0)], verbose=True)
    lines = text.splitlines()
    assert lines[1] == "2,999,12,600,100,10,700,20,3,1400,1800,1900,2500,1500,15,1485"
    assert lines[2].startswith("1,1234.57,")
    rr = pa_csv.render([_m(20.5, 100.0, "request_rate")]).splitlines()
    assert rr[0].startswith("Request Rate,")
    assert rr[1].startswith("20.5,100,")


def test_prometheus_gpu_metrics_parse_and_aggregate():
    from dataclasses import replace

    from perfkit.load.metrics_scrape import aggregate, parse_prometheus

    page = (
        "# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)\n"
        '#TYPE nv_gpu_utilization gauge\nnv_gpu_utilization{gpu_uuid="GPU-a"} 0.5\n'
        'nv_gpu_power_usage{gpu_uuid="GPU-a"} 100\n'
        'nv_gpu_memory_used_bytes{gpu_uuid="GPU-a"} 1000\n'
        'nv_gpu_memory_total_bytes{gpu_uuid="GPU-a"} 8000\n'
        'nv_inference_count{model="m",version="1"} 7\n'
    )
    second = page.replace(" 0.5", " 0.7").replace(" 1000", " 3000").replace(" 100\n", " 200\n")
    agg = aggregate([parse_prometheus(page), parse_prometheus(second)])
    assert agg["gpu_utilization"] == {"GPU-a": pytest.approx(0.6)}
    assert agg["gpu_power_usage"] == {"GPU-a": 150.0}
    assert agg["gpu_memory_used_bytes"] == {"GPU-a": 3000.0}
    assert agg["gpu_memory_total_bytes"] == {"GPU-a": 8000.0}
    assert aggregate([parse_prometheus("nv_inference_count 3\n")])["gpu_utilization"] == {}
    row = pa_csv.row(replace(_m(1, 10.0), metrics=agg), verbose=True, collect_metrics=True)
    assert row[-4:] == ["GPU-a:0.6;", "GPU-a:150;", "GPU-a:3000;", "GPU-a:8000;"]


@pytest.mark.parametrize(("setting", "module"), [("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_event_loop_choice(monkeypatch, setting, module):
    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__.split(".")[0]

    monkeypatch.setenv("PERFKIT_LOOP", setting)
    assert eventloop.run(loop_module()) == module
