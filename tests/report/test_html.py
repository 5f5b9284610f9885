"""The HTML report: self-contained (static checks), and rendered in headless Chromium with
networking off: it renders, makes no network request, logs no console error."""

from __future__ import annotations

import functools
import os
import re
from datetime import UTC, datetime
from html import unescape
from pathlib import Path

import pytest

from perfkit.report import html, plots
from tests.report.builders import make_run, make_tune, replace

# Anything that would make a browser fetch: src/href/url() to anything but an in-page fragment,
# CSS imports, scripts, links, iframes, objects.
_FETCHING = re.compile(
    r"""\ssrc\s*=|<script|<link|<iframe|<object|<embed|@import|url\(\s*['"]?(?!#)"""
    r"""|(?<!xmlns)(?<!xmlns:xlink)\s(?:xlink:)?href\s*=\s*['"](?!#)""",
    re.IGNORECASE,
)

NOW = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)


@functools.cache
def _run_report() -> str:
    base = make_run()
    new = make_run(scale=0.9, latency_scale=1.2)
    open_loop = make_run(mode="request_rate")
    return html.build_report(
        [("baseline", base), ("current", new), ("open-loop", open_loop)], generated_at=NOW
    )


@functools.cache
def _tune_report() -> str:
    return html.build_report([("mlp-cpu", make_tune())], generated_at=NOW)


def test_report_is_self_contained():
    for page in (_run_report(), _tune_report()):
        assert page.startswith("<!DOCTYPE html>")
        assert "<style>" in page
        assert not _FETCHING.findall(page), _FETCHING.findall(page)[:5]
        # The only http(s) strings are the SVG namespace names, which are never fetched.
        urls = set(re.findall(r"https?://[^\s\"'<>)]+", page))
        assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}, urls


def test_run_report_content():
    page = _run_report()
    for text in (
        "Throughput vs load",
        "Latency percentiles vs load",
        "Throughput vs p99 latency",
        "Where a request",
        "Stability windows: baseline",
        "Open loop: corrected",
        "Throughput (infer/s)",
        "Latency (ms)",
        "Concurrency (requests in flight)",
        "Request rate (requests/s)",
        "AMD EPYC 7B13",
        "0123456789ab",
        "nv_gpu_utilization (GPU-aaaa)",
        "Late sends",
    ):
        assert text in page, text
    # Axis labels are text (not paths), so they are searchable and the file stays small.
    # Overlaid figures + per run its latency histogram, latency over time and stability windows.
    assert page.count("<svg") == 5 + 3 * 3
    assert len(page) < 2_000_000


def test_tune_report_content():
    tune = make_tune()
    page = html.build_report([("mlp-cpu", tune)], generated_at=NOW)
    for text in (
        "Trial history",
        "Pareto front",
        "Parameter importances",
        "Best against default",
        "+max_batch_size: 16",
        "-max_batch_size: 8",
        "is 50% better than the default configuration at maximizing throughput",
        "model load failed: bad instance kind",
    ):
        assert text in unescape(page), text
    single = replace(tune, objectives={"throughput_infer_per_s": "maximize"}, pareto_trials=(5,))
    assert plots.pareto_front([("x", single)]) is None


def test_summary_sentence_without_gain():
    tune = make_tune()
    no_gain = replace(tune, best_trial=0)
    assert "provides no gain over the default configuration" in html.summary_sentence(no_gain)
    nothing = replace(tune, best_trial=None)
    assert "no configuration satisfied" in html.summary_sentence(nothing)


@pytest.mark.chromium
@pytest.mark.parametrize("kind", ["run", "tune"])
def test_report_renders_in_chromium_without_network(chromium, tmp_path, kind):
    page = tmp_path / f"{kind}.html"
    page.write_text(_run_report() if kind == "run" else _tune_report(), encoding="utf-8")
    shot = tmp_path / f"{kind}.png"
    report = chromium.render(page, shot)
    assert report.requests == [report.url], "the page itself was the only request"
    assert report.foreign_requests == []
    assert report.errors == []
    assert report.failed_requests == []
    assert report.dom["scripts"] == 0
    assert report.dom["svgs"] == (14 if kind == "run" else 3)
    assert report.dom["h1"].startswith("perfkit report")
    assert report.dom["height"] > 2000  # laid out, not an empty page
    # The screenshot is a real PNG of the page, not blank.
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 50_000
    keep = os.environ.get("PERFKIT_SCREENSHOT_DIR")
    if keep:  # for a person to look at after the run
        Path(keep).mkdir(parents=True, exist_ok=True)
        (Path(keep) / shot.name).write_bytes(data)


@pytest.mark.chromium
def test_chromium_probe_sees_requests_and_errors(chromium, tmp_path):
    """Positive control: the same probe does report a fetch and a console error when a page makes
    them, so the empty lists above are evidence, not blindness."""
    page = tmp_path / "control.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>c</title></head><body>"
        '<img src="http://example.invalid/x.png">'
        "<script>console.error('boom')</script></body></html>"
    )
    report = chromium.render(page)
    assert "http://example.invalid/x.png" in report.foreign_requests
    assert any("boom" in e for e in report.errors)


def test_empty_results_still_make_a_page():
    run = replace(make_run(), measurements=(), status="interrupted")
    tune = replace(
        make_tune(),
        trials=(),
        objectives={},
        best_trial=None,
        default_trial=None,
        pareto_trials=(),
        param_importances={},
        best_config_pbtxt=None,
    )
    page = html.build_report([("r", run), ("t", tune)], generated_at=NOW)
    assert "interrupted" in page
    assert "<svg" not in page
    assert "no configuration satisfied" in page
