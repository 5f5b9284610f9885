"""The results schema: round trips, tidy CSVs, old versions upgraded, future ones refused."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from perfkit.errors import ConfigError
from perfkit.report import schema
from perfkit.results import Measurement, RunResult, TuneResult
from tests.report.builders import make_run, make_tune, replace

DATA = Path(__file__).parent / "data"


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_run_round_trip(tmp_path):
    run = make_run(mode="request_rate")
    paths = schema.write_run(run, tmp_path)
    assert [p.name for p in paths] == ["results.json", "results.csv"]
    doc = json.loads(paths[0].read_text())
    assert doc["schema"] == "perfkit.run"
    assert doc["schema_version"] == schema.SCHEMA_VERSION == 1
    # Float-keyed percentiles survive the JSON string keys.
    assert schema.load_result(paths[0]) == run
    assert schema.load_result(tmp_path) == run  # the directory form


def test_tune_round_trip(tmp_path):
    tune = make_tune()
    paths = schema.write_tune(tune, tmp_path)
    assert [p.name for p in paths] == ["results.json", "trials.csv"]
    loaded = schema.load_result(tmp_path)
    assert isinstance(loaded, TuneResult)
    assert loaded == tune
    assert schema.tune_to_dict(tune)["schema"] == "perfkit.tune"


def test_non_finite_floats_are_strict_json(tmp_path):
    run = make_run()
    m = replace(run.measurements[0], client_cpu_pct=math.nan)
    run = replace(run, measurements=(m, *run.measurements[1:]))
    schema.write_run(run, tmp_path)
    text = (tmp_path / "results.json").read_text()
    assert "NaN" not in text
    loaded = schema.load_result(tmp_path)
    assert isinstance(loaded, RunResult)
    assert math.isnan(loaded.measurements[0].client_cpu_pct)


def test_run_csv_is_tidy_in_load_order(tmp_path):
    run = make_run(levels=(4, 1, 8))  # load order, not sorted, not by throughput
    schema.write_run(run, tmp_path)
    rows = _read_csv(tmp_path / "results.csv")
    assert [r["concurrency"] for r in rows] == ["4", "1", "8"]
    header = list(rows[0])
    for col in (
        "model",
        "config_hash",
        "throughput_infer_per_s",
        "p99_latency_us",
        "p99.9_latency_us",
        "server_queue_us",
        "server_compute_infer_us",
        "network_server_send_recv_us",
        "nv_gpu_utilization__GPU-aaaa",
        "request_rate_rps",
    ):
        assert col in header, col
    assert rows[0]["request_rate_rps"] == ""
    assert float(rows[0]["p99_latency_us"]) == run.measurements[0].latency.p99_us
    assert float(rows[2]["nv_gpu_utilization__GPU-aaaa"]) == pytest.approx(0.8)
    # One value per column: no packed "uuid:value;" cells.
    assert not any(";" in v for r in rows for v in r.values())


def test_trials_csv_one_row_per_trial(tmp_path):
    tune = make_tune()
    schema.write_tune(tune, tmp_path)
    rows = _read_csv(tmp_path / "trials.csv")
    assert [int(r["trial"]) for r in rows] == [t.number for t in tune.trials]
    by_state = {r["trial"]: r for r in rows}
    assert by_state["2"]["state"] == "failed"
    assert by_state["2"]["throughput_infer_per_s"] == ""
    assert by_state["5"]["is_best"] == "True"
    assert json.loads(by_state["1"]["param_preferred_batch_size"]) == [4, 8]
    assert "objective_p99_latency_us" in rows[0]


def test_v0_results_are_upgraded():
    loaded = schema.load_result(DATA / "run-v0.json")
    assert isinstance(loaded, RunResult)
    assert loaded.model == "mlp"
    assert [m.level for m in loaded.measurements] == [1.0, 2.0]
    first = loaded.measurements[0]
    assert first.mode == "concurrency"
    assert first.throughput_infer_per_s == 400.0
    assert first.latency.p99_us == pytest.approx(4200.0)  # ms -> µs
    assert first.server is not None
    assert first.server.compute_infer_us == pytest.approx(1800.0)
    assert loaded.measurements[1].server is None
    assert loaded.perfkit_version == "0.0.3"
    assert any("v0" in msg for msg in loaded.messages)


def test_future_version_is_refused_with_what_to_do():
    with pytest.raises(ConfigError) as info:
        schema.load_result(DATA / "run-v99.json")
    msg = str(info.value)
    assert "run-v99.json" in msg
    assert "version 99" in msg
    assert "versions 0 to 1" in msg
    assert "Upgrade perfkit" in msg


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"schema": "someone.else", "schema_version": 1}', "unknown results schema"),
        ('{"hello": 1}', "not a perfkit results file"),
        ("{not json", "not valid JSON"),
        ('{"schema": "perfkit.run", "schema_version": 1, "model": "m"}', "missing key"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_bad_files_are_refused(tmp_path, content, needle):
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=needle):
        schema.load_result(path)


def test_directory_without_results(tmp_path):
    with pytest.raises(ConfigError, match=r"no results\.json"):
        schema.load_result(tmp_path)
    with pytest.raises(ConfigError, match="no such results file"):
        schema.load_result(tmp_path / "missing.json")


def test_wrong_type_names_the_key(tmp_path):
    doc = schema.run_to_dict(make_run())
    doc["measurements"][1]["throughput_infer_per_s"] = "fast"
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"measurements\[1\]\.throughput_infer_per_s"):
        schema.load_result(path)


def test_encode_decode_value_for_parts():
    m = make_run(mode="request_rate").measurements[0]
    assert schema.decode_value(Measurement, schema.encode_value(m)) == m
    with pytest.raises(ConfigError, match=r"\$\.latency: missing key"):
        schema.decode_value(Measurement, {**schema.encode_value(m), "latency": {}})
