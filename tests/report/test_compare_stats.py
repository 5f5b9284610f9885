"""`perfkit compare`'s statistics: bootstrap intervals on synthetic results (no change -> pass,
a clear 30 % regression -> fail, a tiny noisy pair -> inconclusive), determinism, per-request
blocks, the CLI's inconclusive exit codes; `perfkit run --repeats` (interleaving, layout in
results.json) against the embedded server; results.json written before repeats still loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from perfkit.load import run
from perfkit.load.spec import DEFAULT_HTTP_URL, ConcurrencyLoad, MeasureSpec, SweepSpec, TargetSpec
from perfkit.report import compare, schema, stats
from perfkit.results import Measurement, RunResult, WindowStat
from tests.report.builders import make_run, measurement, perfkit_main, replace

GATES = compare.Gates(max_throughput_drop_pct=5.0, max_latency_increase_pct={"p99": 10.0})


def _repeated(scale: float, noise: float, seed: int, repeats: int = 5) -> RunResult:
    """A run of levels 1 and 4, each measured `repeats` times with relative noise `noise`."""
    rng = np.random.default_rng(seed)
    ms = []
    for r in range(repeats):
        for lv in (1, 4):
            f = 1.0 + rng.normal(0.0, noise)
            m = measurement(lv, 1000.0 * lv * scale * f, 800.0 / scale / f)
            ms.append(replace(m, repeat=r))
    return replace(make_run(levels=(1, 4)), measurements=tuple(ms))


def _statuses(result: compare.Comparison) -> set[str]:
    return {c.status for c in result.checks}


def test_no_change_passes_with_intervals():
    result = compare.compare_runs(_repeated(1.0, 0.01, 1), _repeated(1.0, 0.01, 2), GATES)
    assert _statuses(result) == {"pass"}, [c.describe for c in result.checks]
    assert all(c.method == "bootstrap" for c in result.checks)
    for c in result.checks:
        assert c.low_pct is not None
        assert c.high_pct is not None
        assert c.low_pct <= c.change_pct <= c.high_pct
    assert result.passed
    assert not result.inconclusive


def test_clear_30_percent_regression_fails():
    result = compare.compare_runs(_repeated(1.0, 0.01, 1), _repeated(0.7, 0.01, 2), GATES)
    assert _statuses(result) == {"fail"}
    assert len(result.regressions) == 4  # throughput and p99 at both levels
    thr = result.checks[0]
    assert thr.high_pct is not None
    assert thr.high_pct < -5.0
    assert "95% CI" in compare.summary_line(result)


def test_tiny_noisy_pair_is_inconclusive_and_exit_codes(tmp_path, monkeypatch, capsys):
    base, cur = _repeated(1.0, 0.08, 1, repeats=3), _repeated(0.95, 0.08, 2, repeats=3)
    result = compare.compare_runs(base, cur, compare.Gates(max_throughput_drop_pct=5.0))
    assert _statuses(result) == {"inconclusive"}, [c.describe for c in result.checks]
    assert result.passed  # not a regression: exit 0 with a warning by default
    md = compare.to_markdown(result)
    assert md.startswith("## perfkit compare: ⚠️ no regression shown, 2 inconclusive")
    assert "⚠️ inconclusive, measure more" in md
    junit = compare.to_junit(result)
    assert 'skipped="2"' in junit
    assert "<failure" not in junit
    strict = compare.to_junit(result, fail_on_inconclusive=True)
    assert 'failures="2"' in strict
    assert 'type="inconclusive"' in strict

    schema.write_run(base, tmp_path / "b")
    schema.write_run(cur, tmp_path / "c")
    args = ("compare", tmp_path / "b", tmp_path / "c", "--max-throughput-drop", "5%")
    code, output = perfkit_main(monkeypatch, capsys, *args)
    assert code == 0, output
    assert "inconclusive" in output
    assert "measure more" in output
    code, output = perfkit_main(monkeypatch, capsys, *args, "--fail-on-inconclusive")
    assert code == 1, output


def test_bootstrap_is_deterministic_and_confidence_widens():
    args = (_repeated(1.0, 0.03, 1), _repeated(0.97, 0.03, 2), GATES)
    one, two = compare.compare_runs(*args), compare.compare_runs(*args)
    assert [(c.low_pct, c.high_pct) for c in one.checks] == [
        (c.low_pct, c.high_pct) for c in two.checks
    ]
    wide = compare.compare_runs(*args, confidence=0.99)
    for n, w in zip(one.checks, wide.checks, strict=True):
        assert n.low_pct is not None
        assert n.high_pct is not None
        assert w.low_pct is not None
        assert w.high_pct is not None
        assert w.low_pct <= n.low_pct
        assert w.high_pct >= n.high_pct


def _raw_side(scale: float, seed: int) -> tuple[RunResult, list[compare.RawRequests]]:
    """One level, one repeat, 4000 requests with heavy-tailed latencies (us)."""
    rng = np.random.default_rng(seed)
    lat = rng.lognormal(np.log(1000.0), 0.3, 4000) / scale
    done = np.cumsum(lat) / 1e6
    m = measurement(1, 4000 / done[-1], float(np.percentile(lat, 50)))
    lat_sorted = np.sort(lat)
    summary = replace(m.latency, p99_us=float(lat_sorted[int(np.ceil(0.99 * 4000)) - 1]))
    win = WindowStat(index=0, start_ns=0, duration_ns=int(done[-1] * 1e9), request_count=4000,
                     error_count=0, throughput_infer_per_s=4000 / done[-1],
                     latency_avg_us=float(lat.mean()), latency_stability_us=float(lat.mean()),
                     merged=True)  # fmt: skip
    m = replace(m, latency=summary, windows=(win,), throughput_infer_per_s=4000 / done[-1])
    return replace(make_run(levels=(1,)), measurements=(m,)), [(lat, done, 0.0)]


def test_per_request_blocks_decide_percentiles():
    (b, braw), (c, craw) = _raw_side(1.0, 1), _raw_side(0.7, 2)
    result = compare.compare_runs(b, c, GATES, baseline_requests=braw, current_requests=craw)
    assert [c.method for c in result.checks] == ["bootstrap", "bootstrap"]
    assert _statuses(result) == {"fail"}
    (b2, braw2) = _raw_side(1.0, 3)
    same = compare.compare_runs(b, b2, GATES, baseline_requests=braw, current_requests=braw2)
    assert _statuses(same) == {"pass"}, [c.describe for c in same.checks]
    # Without the requests a single window leaves nothing to resample: percentage only.
    bare = compare.compare_runs(b, b2, GATES)
    assert {c.method for c in bare.checks} == {"percentage"}
    assert any("percentage only" in n for n in bare.notes)


def test_blocks_layout():
    level = [(m, None) for m in _repeated(1.0, 0.01, 1).measurements if m.level == 1.0]
    blocks = stats.level_blocks(level)
    assert blocks is not None
    assert blocks.n == 5
    one = stats.level_blocks(level[:1])
    assert one is not None
    assert one.n == 3


def test_repeats_are_interleaved_and_kept_apart(tmp_path: Path) -> None:
    spec = SweepSpec(
        target=TargetSpec(url=DEFAULT_HTTP_URL, model="identity"),
        measure=MeasureSpec(fixed_request_count=20),
        load=ConcurrencyLoad(levels=(1, 2)),
        repeats=3,
    )
    order: list[Measurement] = []
    result = run(spec, embedded=True, on_level=order.append)
    assert result.status == "ok", result.messages
    assert [(m.level, m.repeat) for m in order] == [
        (1.0, 0), (2.0, 0), (1.0, 1), (2.0, 1), (1.0, 2), (2.0, 2),
    ]  # fmt: skip
    assert result.settings["repeats"] == 3
    schema.write_run(result, tmp_path)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert [m["repeat"] for m in doc["measurements"]] == [0, 0, 1, 1, 2, 2]
    loaded = schema.load_result(tmp_path)
    assert isinstance(loaded, RunResult)
    assert loaded.measurements == result.measurements
    cmp = compare.compare_runs(loaded, loaded, GATES)
    assert cmp.matched == (("concurrency", 1.0, 1), ("concurrency", 2.0, 1))
    assert {c.method for c in cmp.checks} == {"bootstrap"}


def test_results_written_before_repeats_still_load(tmp_path):
    doc = schema.run_to_dict(make_run())
    for m in doc["measurements"]:
        del m["repeat"]
    (tmp_path / "results.json").write_text(json.dumps(doc))
    loaded = schema.load_result(tmp_path)
    assert isinstance(loaded, RunResult)
    assert [m.repeat for m in loaded.measurements] == [0, 0, 0, 0]


@pytest.mark.parametrize("bad", [0, -1])
def test_repeats_must_be_positive(bad):
    from perfkit.errors import ConfigError

    with pytest.raises(ConfigError, match="repeats"):
        SweepSpec(target=TargetSpec(url="x:1", model="m"), load=ConcurrencyLoad(levels=(1,)),
                  repeats=bad)  # fmt: skip
