"""perf_analyzer CSVs as baselines: `-f` with and without --verbose-csv, concurrency and request
rate, read as runs; `perfkit compare` says the comparison is by percentage only; `perfkit report`
reads them; a profile export's requests come back as latencies."""

from __future__ import annotations

import json

import pytest

from perfkit.errors import ConfigError
from perfkit.report import compare, pa_import, schema
from tests.report.builders import make_run, perfkit_main

PLAIN = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,"
    "Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,"
    "p50 latency,p90 latency,p95 latency,p99 latency\n"
    "4,1820,12,300,90,20,1500,10,18,1900,2600,2900,3600\n"
    "1,436.4,12,250,10,20,1500,10,18,1100,1500,1700,2100\n"
)
VERBOSE = (
    "Request Rate,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,"
    "Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,"
    "p50 latency,p90 latency,p95 latency,p99 latency,Avg latency,request/response,response wait\n"
    "200,199.8,12,250,10,20,1500,10,18,1100,1500,1700,2100,1180,30,1150\n"
)


def test_plain_csv_reads_as_a_run_in_load_order(tmp_path):
    p = tmp_path / "pa.csv"
    p.write_text(PLAIN)
    assert pa_import.is_pa_csv(p)
    run = pa_import.read_pa_csv(p)
    assert run.model == ""
    assert [(m.mode, m.level) for m in run.measurements] == [
        ("concurrency", 1.0),
        ("concurrency", 4.0),
    ]
    m = run.measurements[0]
    assert m.throughput_infer_per_s == 436.4
    assert (m.latency.p50_us, m.latency.p99_us) == (1100.0, 2100.0)
    assert m.windows == ()


def test_verbose_csv_request_rate(tmp_path):
    p = tmp_path / "v.csv"
    p.write_text(VERBOSE)
    m = pa_import.read_pa_csv(p).measurements[0]
    assert (m.mode, m.level, m.latency.avg_us) == ("request_rate", 200.0, 1180.0)


def test_bad_csv_names_the_row(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text(PLAIN.replace("436.4", "fast"))
    with pytest.raises(ConfigError, match=r"row 3.*Inferences/Second"):
        pa_import.read_pa_csv(p)


def test_compare_with_a_pa_baseline_is_by_percentage(tmp_path, monkeypatch, capsys):
    p = tmp_path / "baseline.csv"
    p.write_text(PLAIN.replace("436.4", "400").replace("1820", "1777.8"))
    schema.write_run(make_run(levels=(1, 4)), tmp_path / "cur")
    code, output = perfkit_main(monkeypatch, capsys, "compare", p, tmp_path / "cur")
    assert code in (0, 1), output
    assert compare.NO_WINDOWS_NOTE in " ".join(output.split())
    result = compare.compare_runs(pa_import.read_pa_csv(p), make_run(levels=(1, 4)))
    assert {c.method for c in result.checks} == {"percentage"}
    assert compare.NO_WINDOWS_NOTE in compare.to_markdown(result)


def test_report_reads_a_pa_csv(tmp_path, monkeypatch, capsys):
    p = tmp_path / "baseline.csv"
    p.write_text(PLAIN)
    schema.write_run(make_run(levels=(1, 4)), tmp_path / "cur")
    out = tmp_path / "r.html"
    code, output = perfkit_main(monkeypatch, capsys, "report", p, tmp_path / "cur", "-o", out)
    assert code == 0, output
    assert out.read_text().startswith("<!")


def test_profile_export_requests(tmp_path):
    doc = {
        "experiments": [
            {
                "experiment": {"mode": "concurrency", "value": 1},
                "requests": [
                    {"timestamp": 1_000_000, "response_timestamps": [3_000_000]},
                    {"timestamp": 3_000_000, "response_timestamps": [4_500_000]},
                ],
                "window_boundaries": [500_000, 5_000_000],
            }
        ]
    }
    (tmp_path / "profile_export.json").write_text(json.dumps(doc))
    (tmp_path / "results.json").write_text("{}")
    raws = pa_import.requests_next_to(tmp_path / "results.json")
    assert raws is not None
    lat, done, start = raws[0]
    assert lat.tolist() == [2000.0, 1500.0]
    assert done.tolist() == [0.003, 0.0045]
    assert start == 0.0005
