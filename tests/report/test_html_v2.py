"""The HTML report's figures and tables (issue 15): page-wide figures, integer concurrency ticks, log
latency axes over a wide range, no stability panel for one-window levels, a delta table for a
comparison, the default's parameters, human metric names, a staircase Pareto front with the
default and the budget, per-config curves, a latency histogram and latency over time per level.
Rendered in headless Chromium; screenshots kept for a person (PERFKIT_SCREENSHOT_DIR, or
/tmp/perfkit-screens)."""

from __future__ import annotations

import functools
import os
import re
import shutil
from datetime import UTC, datetime
from html import unescape
from pathlib import Path

import pytest

from perfkit.report import html, plots
from perfkit.report.html.tunes import _violation, config_params
from perfkit.report.plots.levels import quantile_bins
from perfkit.results import RunResult, TuneResult
from tests.report.builders import (
    BEST_PBTXT,
    DEFAULT_PBTXT,
    latency,
    make_run,
    make_tune,
    measurement,
    replace,
    windows,
)

NOW = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
SCREENS = Path(os.environ.get("PERFKIT_SCREENSHOT_DIR") or "/tmp/perfkit-screens")


def _sequential(run: RunResult, *, one_window: bool = False) -> RunResult:
    """The run's levels one after another in time (as a real run's windows are), optionally each
    measured in a single window."""
    out, t = [], 0
    for m in run.measurements:
        ws = windows(m.throughput_infer_per_s, m.latency.avg_us, 1 if one_window else 4)
        ws = tuple(
            replace(w, start_ns=w.start_ns + t, merged=True if one_window else w.merged) for w in ws
        )
        t = ws[-1].start_ns + ws[-1].duration_ns
        out.append(replace(m, windows=ws))
    return replace(run, measurements=tuple(out))


def _open_loop() -> RunResult:
    """Request rates from 50 to 3200/s: latency from 0.3 ms to seconds (the generator falls
    behind), the last level unstable."""
    ms = []
    for i, rate in enumerate((50, 200, 800, 3200)):
        p50 = 300.0 * 12**i  # 0.3 ms .. 0.5 s
        m = measurement(rate, min(rate, 900.0), p50, mode="request_rate", corrected=True)
        ms.append(replace(m, stable=i < 3))
    run = replace(make_run(mode="request_rate"), measurements=tuple(ms), status="unstable")
    return _sequential(run)


@functools.cache
def _run_page() -> str:
    return html.build_report([("open-loop", _open_loop())], generated_at=NOW)


@functools.cache
def _comparison_page() -> str:
    base = _sequential(make_run(levels=(1, 2, 3, 4, 5)))
    new = _sequential(make_run(levels=(1, 2, 3, 4, 5), scale=0.9, latency_scale=1.2))
    return html.build_report([("baseline", base), ("current", new)], generated_at=NOW)


def _tune_with_loads() -> TuneResult:
    """make_tune plus the default and the best measured at more client loads."""
    tune = make_tune()
    extra = []
    for number, (base, conc) in enumerate(((0, 16), (0, 32), (5, 16)), start=7):
        src = tune.trial(base)
        assert src is not None
        assert src.measurement is not None
        thr = src.measurement.throughput_infer_per_s * (1 + conc / 40)
        p99 = src.measurement.latency.p99_us * conc / 6
        extra.append(
            replace(
                src,
                number=number,
                params={**({} if base == 0 else src.params), "concurrency": conc},
                objectives={"throughput_infer_per_s": thr, "p99_latency_us": p99},
                measurement=replace(
                    src.measurement, throughput_infer_per_s=thr, latency=latency(p99 / 2)
                ),
            )
        )
    # Each variant its own config (make_tune gives all but the best the default's text).
    base_trials = [
        replace(
            t,
            params={**({} if t.number == 0 else t.params), "concurrency": 8},
            config_pbtxt=(
                t.config_pbtxt
                if t.number in (0, 5)
                else DEFAULT_PBTXT.replace("count: 1", f"count: {t.number + 1}")
            ),
        )
        for t in tune.trials
    ]
    return replace(tune, trials=(*base_trials, *extra))


@functools.cache
def _tune_page() -> str:
    return html.build_report([("mlp-cpu", _tune_with_loads())], generated_at=NOW)


def _titles(fig) -> list[str]:  # type: ignore[no-untyped-def]
    return [ax.get_title() for ax in fig.axes] + (
        [fig._suptitle.get_text()] if fig._suptitle else []
    )


# ---------------------------------------------------------------------------------------------


def test_figures_fill_the_page_width():
    page = _run_page()
    assert "figure svg.plot { width: 100%" in page
    fig = plots.throughput_vs_load([("a", make_run())])
    assert fig is not None
    assert fig.get_figwidth() >= 12.0
    legend = fig.axes[0].get_legend()
    assert legend is not None
    assert legend.get_texts()[0].get_fontsize() >= 10


def test_concurrency_ticks_are_integers():
    fig = plots.throughput_vs_load([("a", make_run(levels=(1, 2, 3)))])
    assert fig is not None
    fig.canvas.draw()
    ticks = fig.axes[0].get_xticks()
    assert len(ticks) >= 2
    assert all(float(t).is_integer() for t in ticks), ticks


def test_latency_axes_log_only_when_the_range_calls_for_it():
    wide = plots.latency_vs_load([("open", _open_loop())])
    narrow = plots.latency_vs_load([("closed", make_run())])
    assert wide is not None
    assert narrow is not None
    assert wide.axes[0].get_yscale() == "log"
    assert narrow.axes[0].get_yscale() == "linear"
    curve = plots.throughput_vs_latency([("open", _open_loop())])
    assert curve is not None
    assert curve.axes[0].get_xscale() == "log"


def test_no_stability_panel_for_one_window_levels():
    single = _sequential(make_run(), one_window=True)
    assert plots.stability_windows("x", single) is None
    page = html.build_report([("single", single)], generated_at=NOW)
    assert "Stability windows" not in page
    assert plots.stability_windows("x", _sequential(make_run())) is not None


def test_comparison_has_a_delta_table_and_fewer_lines():
    page = unescape(_comparison_page())
    assert "Changes against the baseline" in page
    assert "current: Δ throughput" in page
    assert "current: Δ p99 latency" in page
    assert "-10.0%" in page  # throughput scaled by 0.9
    assert "+20.0%" in page  # latency scaled by 1.2
    # compare.py's decision: a confidence interval per change (the windows' bootstrap) and
    # the verdict against perfkit compare's default gates.
    assert re.search(r"95% CI [-+]\d+\.\d% \.\. [-+]\d+\.\d%", page)
    assert "regression" in page
    assert "Changes against the baseline" not in _run_page()
    runs = [("a", make_run()), ("b", make_run(scale=0.9))]
    fig = plots.latency_vs_load(runs)
    assert fig is not None
    assert len(fig.axes[0].get_lines()) == 4


def test_per_level_histogram_and_latency_over_time():
    lat = latency(1000.0, extra={99.9: 2500.0})
    bins = quantile_bins(lat)
    assert [round(share, 3) for _, _, share in bins] == [0.5, 0.4, 0.05, 0.04, 0.009, 0.001]
    assert bins[0][0] == 0.5
    assert bins[-1][1] == 3.0
    run = _open_loop()
    hist = plots.latency_histograms("open", run)
    over = plots.latency_over_time("open", run)
    assert hist is not None
    assert sum(ax.get_visible() for ax in hist.axes) == 4
    assert hist.axes[0].get_xscale() == "linear"
    assert over is not None
    assert over.axes[0].get_yscale() == "log"
    assert "50 req/s" in _titles(hist)[0]
    assert any("(unstable)" in t for t in _titles(hist))
    page = _run_page()
    assert "Latency histogram per level" in page
    assert "Latency over time" in page


def test_tune_page_default_parameters_names_pareto_and_curves():
    tune = _tune_with_loads()
    page = unescape(_tune_page())
    # The default trial's params hold only its load; the table reads its config.pbtxt.
    row = re.search(r"param <code>instance_count</code></td><td>([^<]*)</td>", page)
    assert row is not None
    assert row.group(1) == "1"
    row = re.search(r"param <code>max_batch_size</code></td><td>([^<]*)</td>", page)
    assert row is not None
    assert row.group(1) == "8"
    assert config_params(BEST_PBTXT) == {
        "instance_count": 2,
        "instance_kind": "KIND_CPU",
        "max_batch_size": 16,
        "dynamic_batching": True,
        "preferred_batch_sizes": [],
        "max_queue_delay_us": 200,
    }
    assert config_params(DEFAULT_PBTXT)["dynamic_batching"] is False
    # Human metric names in the titles, not the stored keys.
    for fig in (plots.trial_history([("t", tune)]), plots.pareto_front([("t", tune)])):
        assert fig is not None
        assert not any("_us" in t or "_per_s" in t for t in _titles(fig)), _titles(fig)
    pareto = plots.pareto_front([("t", tune)])
    assert pareto is not None
    labels = pareto.axes[0].get_legend_handles_labels()[1]
    assert "t: default" in labels
    assert "budget: p99 latency" in labels
    front = next(ln for ln in pareto.axes[0].get_lines() if ln.get_label() == "t: Pareto front")
    xs, _ys = front.get_data()
    assert len(xs) == 2 * len(tune.pareto_trials) - 1  # a staircase: one riser per step
    curves = plots.config_curves([("t", tune)])
    assert curves is not None
    names = curves.axes[0].get_legend_handles_labels()[1]
    assert names == ["mlp_config_default", "mlp_config_4"]
    assert "per configuration, across client loads" in page


def test_missed_constraint_in_words():
    assert _violation("p99_latency_us", 2100.0) == "p99 latency (+2.1 ms)"


def test_config_curves_absent_with_one_load_per_config():
    assert plots.config_curves([("t", make_tune())]) is None


@pytest.mark.chromium
def test_screenshots_of_run_comparison_and_tune(chromium, tmp_path):
    SCREENS.mkdir(parents=True, exist_ok=True)
    for name, page in (
        ("run", _run_page()),
        ("comparison", _comparison_page()),
        ("tune", _tune_page()),
    ):
        path = tmp_path / f"{name}.html"
        path.write_text(page, encoding="utf-8")
        shot = tmp_path / f"{name}.png"
        report = chromium.render(path, shot)
        assert report.errors == []
        assert report.foreign_requests == []
        # Every figure is laid out at the content's width (1280 px window, 32 px padding).
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        shutil.copy(shot, SCREENS / shot.name)
        shutil.copy(path, SCREENS / path.name)


def test_repeats_kept_apart_in_the_level_figures():
    run = _sequential(make_run(levels=(1, 2)))
    a, b = run.measurements
    interleaved = (a, b, replace(a, repeat=1), replace(b, repeat=1))
    run = _sequential(replace(run, measurements=interleaved))
    hist = plots.latency_histograms("r", run)
    assert hist is not None
    assert "concurrency 1, repeat 2" in _titles(hist)
    over = plots.latency_over_time("r", run)
    assert over is not None
    assert [t.get_text() for t in over.legends[0].get_texts()] == ["concurrency 1", "concurrency 2"]


def test_histograms_of_the_requests_when_the_profile_export_is_there():
    import numpy as np

    run = _sequential(make_run(levels=(1, 2)))
    rng = np.random.default_rng(0)
    raws = []
    for m in run.measurements:
        lat = rng.lognormal(np.log(m.latency.p50_us), 0.3, 400)
        done = np.cumsum(lat) / 1e6
        raws.append((lat, done, 0.0))
    hist = plots.latency_histograms("r", run, raws)
    assert hist is not None
    assert "per-request latencies" in _titles(hist)[-1]
    assert len(hist.axes[0].patches) == 40
    # Not aligned with the measurements: the recorded quantiles, not a wrong level's requests.
    fallback = plots.latency_histograms("r", run, raws[:1])
    assert fallback is not None
    assert "recorded percentiles" in _titles(fallback)[-1]
    page = html.build_report([("r", run)], generated_at=NOW, requests=[raws])
    assert "per-request latencies" in page


def test_repeats_pooled_into_one_point_per_level_in_the_load_figures():
    run = _sequential(make_run(levels=(1, 2)))
    a, b = run.measurements
    slower = replace(a, repeat=1, throughput_infer_per_s=a.throughput_infer_per_s / 2)
    run = _sequential(replace(run, measurements=(a, b, slower, replace(b, repeat=1))))
    fig = plots.throughput_vs_load([("r", run)])
    assert fig is not None
    line = fig.axes[0].get_lines()[0]
    # One point per level (not a zig-zag 1, 2, 1, 2), level 1 at its repeats' time-weighted mean.
    assert list(line.get_xdata()) == [1.0, 2.0]
    assert line.get_ydata()[0] == pytest.approx(0.75 * a.throughput_infer_per_s)
