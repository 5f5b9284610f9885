"""`perfkit report`: results files and output directories in, one HTML file out."""

from __future__ import annotations

import subprocess
import sys

import pytest

from perfkit.report import schema
from perfkit.results import RunResult
from tests.report.builders import make_run, make_tune, perfkit_main


def test_report_of_run_dirs_and_tune_dir(tmp_path, monkeypatch, capsys):
    schema.write_run(make_run(), tmp_path / "baseline")
    schema.write_run(make_run(scale=0.9), tmp_path / "current")
    # A tune's --output keeps its results under results/.
    schema.write_tune(make_tune(), tmp_path / "tune-out" / "results")
    out = tmp_path / "site" / "report.html"
    code, output = perfkit_main(
        monkeypatch,
        capsys,
        "report",
        tmp_path / "baseline",
        tmp_path / "current" / "results.json",
        tmp_path / "tune-out",
        "-o",
        out,
    )
    assert code == 0, output
    page = out.read_text()
    assert "Stability windows: baseline" in page
    assert "Stability windows: current" in page
    assert "tune-out:" in page  # the tune's label comes from its output directory
    assert "better than the default configuration" in page
    assert "Wrote" in output
    assert "mlp_config_4 (best)" in output  # the console table of the tune


def test_report_labels_must_match(tmp_path, monkeypatch, capsys):
    schema.write_run(make_run(), tmp_path / "a")
    code, output = perfkit_main(
        monkeypatch,
        capsys,
        "report",
        tmp_path / "a",
        "--label",
        "x",
        "--label",
        "y",
        "-o",
        tmp_path / "r.html",
    )
    assert code == 3
    assert "--label was given 2 time(s) for 1 result(s)" in output


def test_report_refuses_a_future_schema(tmp_path, monkeypatch, capsys):
    path = tmp_path / "results.json"
    path.write_text('{"schema": "perfkit.run", "schema_version": 7}')
    code, output = perfkit_main(monkeypatch, capsys, "report", path, "-o", tmp_path / "r.html")
    assert code == 3
    assert "version 7 is newer" in " ".join(output.split())
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("command", ["report", "compare"])
def test_help(monkeypatch, capsys, command):
    code, output = perfkit_main(monkeypatch, capsys, command, "--help")
    assert code == 0
    assert "Usage" in output


def test_real_run_then_report_and_compare(tmp_path, monkeypatch, capsys):
    """End to end: `perfkit run` against the embedded server writes results that `perfkit report`
    and `perfkit compare` read."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "perfkit",
            "run",
            "-m",
            "identity",
            "--concurrency-range",
            "1:2",
            "--request-count",
            "200",
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    loaded = schema.load_result(out)
    assert isinstance(loaded, RunResult)
    assert [m.level for m in loaded.measurements] == [1.0, 2.0]
    code, output = perfkit_main(monkeypatch, capsys, "report", out, "-o", tmp_path / "r.html")
    assert code == 0, output
    # --request-count 200: one window per level, so latency over time and no stability panel.
    page = (tmp_path / "r.html").read_text()
    assert "Latency over time: run" in page
    # --output-dir keeps profile_export.json: the histograms are the requests' own.
    assert "per-request latencies" in page
    code, output = perfkit_main(
        monkeypatch, capsys, "compare", out, out, "--junit", tmp_path / "j.xml"
    )
    assert code == 0, output
    assert 'failures="0"' in (tmp_path / "j.xml").read_text()
