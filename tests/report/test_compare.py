"""`perfkit compare`: pass, throughput regression, latency regression (exit codes, Markdown, JUnit),
and the results it refuses to compare."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from perfkit.errors import ConfigError
from perfkit.report import compare, schema
from perfkit.results import RunResult, TuneResult
from tests.report.builders import make_run, make_tune, perfkit_main, replace


def _write(tmp_path: Path, name: str, result: RunResult | TuneResult) -> Path:
    out = tmp_path / name
    if isinstance(result, RunResult):
        schema.write_run(result, out)
    else:
        schema.write_tune(result, out)
    return out


def _gates(tmp_path: Path) -> list[str]:
    return [
        "--max-throughput-drop",
        "5%",
        "--max-latency-increase",
        "p99:10%",
        "--max-latency-increase",
        "avg:10%",
        "--markdown",
        str(tmp_path / "summary.md"),
        "--junit",
        str(tmp_path / "junit.xml"),
    ]


def _junit(tmp_path: Path) -> ET.Element:
    return ET.parse(tmp_path / "junit.xml").getroot()


def test_pass(tmp_path, monkeypatch, capsys):
    base = _write(tmp_path, "base", make_run())
    # 1% slower and 5% higher latency: inside both gates, with the windows' spread (±2%) too
    # (3% slower would be inconclusive against a 5% gate: see test_compare_stats).
    cur = _write(tmp_path, "cur", make_run(scale=0.99, latency_scale=1.05))
    code, output = perfkit_main(monkeypatch, capsys, "compare", base, cur, *_gates(tmp_path))
    assert code == 0, output
    assert "no regression in 12 check(s)" in output
    md = (tmp_path / "summary.md").read_text()
    assert md.startswith("## perfkit compare: ✅ no regression")
    assert "| concurrency 8 | 1 | throughput (infer/s) | 1,777.8 | 1,760.0 | -1.0% |" in md
    assert "regression**" not in md
    root = _junit(tmp_path)
    assert root.get("tests") == "12"
    assert root.get("failures") == "0"
    cases = root.findall(".//testcase")
    assert len(cases) == 4 * 3  # levels x gates
    assert not root.findall(".//failure")
    assert {c.get("name") for c in cases} == {
        "throughput drop ≤ 5%",
        "p99 latency increase ≤ 10%",
        "avg latency increase ≤ 10%",
    }


def test_throughput_regression(tmp_path, monkeypatch, capsys):
    base = _write(tmp_path, "base", make_run())
    slower = make_run()
    # Only concurrency 4 drops, by 12% (8% would be inconclusive against 5% with the windows' ±2%).
    ms = list(slower.measurements)
    ms[2] = replace(ms[2], throughput_infer_per_s=ms[2].throughput_infer_per_s * 0.88)
    cur = _write(tmp_path, "cur", replace(slower, measurements=tuple(ms)))
    code, output = perfkit_main(monkeypatch, capsys, "compare", base, cur, *_gates(tmp_path))
    assert code == 1, output
    assert "REGRESSION" in output
    assert "1 regression(s): throughput at concurrency 4, batch 1 (-12.0%" in output
    md = (tmp_path / "summary.md").read_text()
    assert md.startswith("## perfkit compare: ❌ 1 regression\n")
    row = next(
        line for line in md.splitlines() if line.startswith("| concurrency 4 | 1 | throughput")
    )
    assert "-12.0%" in row
    assert "❌ **regression**" in row
    root = _junit(tmp_path)
    assert root.get("failures") == "1"
    failures = root.findall(".//testcase/failure/..")
    assert [f.get("classname") for f in failures] == ["perfkit.compare.mlp.concurrency_4.batch_1"]
    assert failures[0].get("name") == "throughput drop ≤ 5%"
    failure = failures[0].find("failure")
    assert failure is not None
    assert "-12.0%" in (failure.get("message") or "")


def test_latency_regression(tmp_path, monkeypatch, capsys):
    base = _write(tmp_path, "base", make_run())
    cur = _write(tmp_path, "cur", make_run(latency_scale=1.25))  # every latency +25 %
    code, output = perfkit_main(monkeypatch, capsys, "compare", base, cur, *_gates(tmp_path))
    assert code == 1, output
    md = (tmp_path / "summary.md").read_text()
    assert md.startswith("## perfkit compare: ❌ 8 regressions")
    assert md.count("❌ **regression**") == 8  # p99 and avg at each of 4 levels
    assert md.count("✅ ok") == 4  # throughput unchanged
    assert "| concurrency 1 | 1 | p99 latency (ms) | 2.100 | 2.625 | +25.0% |" in md
    root = _junit(tmp_path)
    assert root.get("failures") == "8"
    failed = {c.get("name") for c in root.findall(".//testcase") if c.find("failure") is not None}
    assert failed == {"p99 latency increase ≤ 10%", "avg latency increase ≤ 10%"}


def test_default_gates_and_cli_exit_code_end_to_end(tmp_path):
    """The installed entry point, in a subprocess: the exit code CI sees."""
    base = _write(tmp_path, "base", make_run())
    cur = _write(tmp_path, "cur", make_run(scale=0.9))
    proc = subprocess.run(
        [sys.executable, "-m", "perfkit", "compare", str(base), str(cur)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Error: 4 regression(s)" in " ".join(proc.stderr.split())


def test_mismatched_model_is_exit_3(tmp_path, monkeypatch, capsys):
    base = _write(tmp_path, "base", make_run())
    cur = _write(tmp_path, "cur", make_run(model="resnet50"))
    code, output = perfkit_main(monkeypatch, capsys, "compare", base, cur)
    assert code == 3
    assert "measured model 'mlp' but cur measured 'resnet50'" in " ".join(output.split())


def test_no_common_levels_is_exit_3(tmp_path, monkeypatch, capsys):
    base = _write(tmp_path, "base", make_run(levels=(1, 2)))
    cur = _write(tmp_path, "cur", make_run(levels=(4, 8)))
    code, output = perfkit_main(monkeypatch, capsys, "compare", base, cur)
    assert code == 3
    assert "no load level in common" in " ".join(output.split())


def test_tune_is_refused(tmp_path, monkeypatch, capsys):
    base = _write(tmp_path, "base", make_run())
    tune = _write(tmp_path, "tune", make_tune())
    code, output = perfkit_main(monkeypatch, capsys, "compare", base, tune)
    assert code == 3
    assert "is a tune result" in output


def test_partial_overlap_and_error_rate_gate():
    base = make_run(levels=(1, 2, 4))
    cur = make_run(levels=(2, 4, 8))
    ms = list(cur.measurements)
    ms[0] = replace(ms[0], error_count=30)  # 30 of 2030 requests = 1.48 %
    cur = replace(cur, measurements=tuple(ms))
    result = compare.compare_runs(base, cur, compare.Gates(max_error_rate_pct=1.0))
    assert result.matched == (("concurrency", 2.0, 1), ("concurrency", 4.0, 1))
    assert result.only_baseline == (("concurrency", 1.0, 1),)
    assert result.only_current == (("concurrency", 8.0, 1),)
    assert [c.passed for c in result.checks] == [False, True]
    assert result.checks[0].current == pytest.approx(100 * 30 / 2030)
    md = compare.to_markdown(result)
    assert "only in baseline, not compared: concurrency 1, batch 1" in md


def test_levels_match_on_mode_and_batch():
    base = make_run(levels=(2, 4))
    cur = make_run(levels=(2, 4), mode="request_rate")
    with pytest.raises(ConfigError, match="no load level in common"):
        compare.compare_runs(base, cur)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("p99:10%", ("p99", 10.0)),
        ("avg:2.5", ("avg", 2.5)),
        ("15%", ("p99", 15.0)),
        ("P95:0%", ("p95", 0.0)),
        ("p99.9:20%", ("p99.9", 20.0)),
    ],
)
def test_parse_latency_gate(text, expected):
    assert compare.parse_latency_gate(text) == expected


@pytest.mark.parametrize("text", ["p42x:10%", "p99:ten", "max:5%", "p99:-5%"])
def test_bad_gates_are_config_errors(text):
    with pytest.raises(ConfigError):
        compare.parse_latency_gate(text)


def test_bad_threshold_flag_is_exit_3(tmp_path, monkeypatch, capsys):
    base = _write(tmp_path, "base", make_run())
    code, output = perfkit_main(
        monkeypatch, capsys, "compare", base, base, "--max-throughput-drop", "lots"
    )
    assert code == 3
    assert "not a percentage" in output
