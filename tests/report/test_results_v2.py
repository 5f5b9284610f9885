"""Results (issue 15): unstable levels marked in the printed summary and in perfkit's own CSV and
JSON (perf_analyzer's -f CSV keeps its exact columns), floats in the tidy CSV at their measured
precision, and `RunResult.to_pandas()` / `TuneResult.to_pandas()` giving the tidy table."""

from __future__ import annotations

import csv
import json

import pandas as pd

from perfkit.report import pa_csv, pa_stdout, schema
from perfkit.report.tidy_csv import measured_precision
from tests.report.builders import make_run, make_tune, replace


def _unstable_run():  # type: ignore[no-untyped-def]
    run = make_run(levels=(1, 2))
    last = replace(run.measurements[1], stable=False, throughput_infer_per_s=293.89414500000004)
    return replace(run, measurements=(run.measurements[0], last), status="unstable")


def test_measured_precision_by_unit():
    assert measured_precision("throughput_infer_per_s", 293.89414500000004) == 293.9
    assert measured_precision("p99_latency_us", 1234.5678) == 1235.0
    assert measured_precision("duration_s", 3.0000000004) == 3.0
    assert measured_precision("client_cpu_pct", 35.04999) == 35.0
    assert measured_precision("nv_gpu_utilization__GPU-aaaa", 0.4499999999) == 0.45
    assert measured_precision("nv_gpu_memory_used_bytes__GPU-aaaa", 1.5e9) == 1.5e9
    assert measured_precision("concurrency", 4) == 4
    assert measured_precision("stable", False) is False


def test_tidy_csv_rounded_and_unstable_flagged(tmp_path):
    run = _unstable_run()
    schema.write_run(run, tmp_path)
    text = (tmp_path / schema.RESULTS_CSV).read_text()
    assert "293.89414500000004" not in text
    rows = list(csv.DictReader(text.splitlines()))
    assert [r["stable"] for r in rows] == ["True", "False"]
    assert rows[1]["throughput_infer_per_s"] == "293.9"
    for row in rows:
        for col, cell in row.items():
            if col.endswith("_latency_us") and cell:
                assert float(cell).is_integer(), (col, cell)
    doc = json.loads((tmp_path / schema.RESULTS_JSON).read_text())
    assert [m["stable"] for m in doc["measurements"]] == [True, False]
    assert doc["status"] == "unstable"


def test_pa_csv_keeps_perf_analyzers_columns(tmp_path):
    stable = make_run(levels=(1, 2))
    out_a, out_b = tmp_path / "a.csv", tmp_path / "b.csv"
    pa_csv.write(out_a, stable.measurements)
    pa_csv.write(out_b, _unstable_run().measurements)
    head_a = out_a.read_text().splitlines()[0]
    head_b = out_b.read_text().splitlines()[0]
    assert head_a == head_b
    assert "stable" not in head_b.lower()


def test_printed_summary_marks_unstable_levels():
    text = pa_stdout.summary(_unstable_run())
    assert "Request concurrency: 1\n" in text
    assert "Request concurrency: 2 (UNSTABLE" in text
    table = text.split("Inferences/Second vs. Client")[1].splitlines()
    assert table[1].startswith("Concurrency: 1")
    assert not table[1].endswith("(unstable)")
    assert table[2].startswith("Concurrency: 2")
    assert table[2].endswith("(unstable)")


def test_run_to_pandas_is_the_tidy_table(tmp_path):
    run = _unstable_run()
    df = run.to_pandas()
    assert isinstance(df, pd.DataFrame)
    assert len(df) == 2
    assert list(df["stable"]) == [True, False]
    assert df["throughput_infer_per_s"].iloc[1] == 293.9
    schema.write_run(run, tmp_path)
    from_csv = pd.read_csv(tmp_path / schema.RESULTS_CSV)
    assert list(df.columns) == list(from_csv.columns)
    assert df["p99_latency_us"].tolist() == from_csv["p99_latency_us"].tolist()


def test_tune_to_pandas_one_row_per_trial():
    tune = make_tune()
    df = tune.to_pandas()
    assert list(df["trial"]) == [t.number for t in tune.trials]
    assert df.loc[df["is_default"], "trial"].tolist() == [0]
    assert "param_instance_count" in df.columns
    assert "objective_throughput_infer_per_s" in df.columns
