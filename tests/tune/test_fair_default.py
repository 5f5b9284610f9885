"""The best is compared with the default config measured at the *same* client load.

The load (concurrency) is part of the search space; the default is first measured at the sweep's
baseline load. Comparing a best found at concurrency 8 with the default at concurrency 1 would
credit the load's effect to the config, so the default is also measured at the best's load (or a
stored measurement of it reused) and every output compares those two.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from perfkit.report.schema import load_result, result_from_dict, result_to_dict
from perfkit.report.summary import summary_sentence
from perfkit.results import ServerInfo, TuneResult
from perfkit.sweepfile import ConstraintSpec
from perfkit.tune import output
from perfkit.tune.objective import Objective
from perfkit.tune.records import (
    A_CONFIG,
    A_DEFAULT,
    A_DUP,
    A_FAIR,
    A_KEY,
    A_MEASURED,
    A_METRICS,
    A_NAME,
    A_PARAMS,
    A_VIOL,
)
from tests.tune.conftest import (
    assert_no_variant_measured_twice,
    measured_trials,
    run_perfkit,
    write_sweep,
)

# The base config batches up to 4: at concurrency 1 it serves one request per 4 ms execution, at
# concurrency 8 four per execution. The load alone multiplies its throughput, and at concurrency
# 8 a second instance doubles it again (one instance leaves four requests waiting).
BATCHING = "dynamic_batching { }\n"


def _sweep(repo: Path, tmp_path: Path, space: str, trials: int) -> Path:
    config = repo / "ident" / "config.pbtxt"
    text = config.read_text().replace("max_batch_size: 16", "max_batch_size: 4")
    config.write_text(text + BATCHING)
    sweep = write_sweep(tmp_path / "s.toml", repo, trials=trials, sampler="grid", space=space)
    text = sweep.read_text().replace("concurrency = [4, 8]", "concurrency = [1, 8]")
    sweep.write_text(
        text.replace("baseline = { concurrency = 8 }", "baseline = { concurrency = 1 }")
    )
    return sweep


def _tune(sweep: Path, out: Path) -> tuple[str, TuneResult, optuna.Study]:
    proc = run_perfkit("tune", str(sweep), "--output", str(out), "--study-name", "t")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = load_result(out)
    assert isinstance(result, TuneResult)
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{out / 'study.db'}")
    return proc.stdout, result, study


def _level(result: TuneResult, number: int | None) -> float:
    record = output.trial(result, number)
    assert record is not None
    assert record.measurement is not None
    return record.measurement.level


def test_default_is_measured_at_the_best_load_and_the_gain_compares_equal_loads(
    ident_repo: Path, tmp_path: Path
) -> None:
    # 2 or 3 instances x concurrency 1 or 8: the best runs at concurrency 8; the default (one
    # instance) is not in the grid, so it is measured once more, at concurrency 8.
    sweep = _sweep(ident_repo, tmp_path, "instance_count = [2, 3]\n", trials=5)
    stdout, result, study = _tune(sweep, tmp_path / "out")

    fair = [t for t in study.trials if A_FAIR in t.user_attrs]
    assert len(fair) == 1
    extra = fair[0]
    assert extra.state == TrialState.COMPLETE
    assert extra.user_attrs[A_DEFAULT] is True
    assert extra.user_attrs[A_PARAMS]["concurrency"] == 8
    assert extra.user_attrs[A_NAME] == "ident_config_default"
    # On top of the budget: the default at the baseline and the grid's 4 points, plus this one.
    assert len(measured_trials(study)) == 5
    assert_no_variant_measured_twice(study)

    assert result.best_trial is not None
    assert result.best_trial != extra.number
    assert _level(result, result.best_trial) == 8.0
    # The default the comparison uses is that measurement, at the best's load.
    assert result.default_trial == extra.number
    assert _level(result, result.default_trial) == 8.0
    best = output.trial(result, result.best_trial)
    default = output.trial(result, result.default_trial)
    assert best is not None
    assert default is not None
    gain = (
        (best.objectives["throughput_infer_per_s"] - default.objectives["throughput_infer_per_s"])
        / default.objectives["throughput_infer_per_s"]
        * 100.0
    )
    assert result.gain_pct == pytest.approx(gain)
    # The default's best under the constraints is one of its two measurements.
    baseline = next(
        t for t in study.trials if t.user_attrs.get(A_DEFAULT) and A_FAIR not in t.user_attrs
    )
    assert result.default_best_trial in (baseline.number, extra.number)

    # results.json records the settings, the comparison and the deduplicated draws.
    assert result.settings["load"]["concurrency"] == [1, 8]
    assert result.settings["load"]["baseline"] == {"concurrency": 1.0}
    assert result.settings["measure"]["window_ms"] == 300
    assert result.settings["deduplicated_draws"] == sum(
        1 for t in study.trials if A_DUP in t.user_attrs
    )
    assert result.settings["default_comparison"].startswith("same load")
    assert "one extra measurement on top of the trials budget" in " ".join(result.messages)

    # The console says so: the sentence names the shared load, the table caption both results.
    assert "(both at concurrency 8)" in " ".join(stdout.split())
    assert "best and default both measured at concurrency 8" in " ".join(stdout.split())
    # The write-back follows the same comparison (min_gain_pct 2 by default).
    assert result.gain_pct is not None
    assert (result.written_to is not None) == (result.gain_pct >= 2.0)
    # MA's CSV has the default's row at each load it was measured at.
    csv_rows = (tmp_path / "out" / "results" / "metrics-model-inference.csv").read_text()
    default_rows = [r.split(",") for r in csv_rows.splitlines() if ",ident_config_default," in r]
    assert sorted(r[2] for r in default_rows) == ["1", "8"]


def test_a_stored_measurement_of_the_default_at_the_best_load_is_reused(
    ident_repo: Path, tmp_path: Path
) -> None:
    # 1 or 2 instances x concurrency 1 or 8: the grid measures the default config (one instance)
    # at concurrency 8 itself, so no extra measurement is needed.
    sweep = _sweep(ident_repo, tmp_path, "instance_count = [1, 2]\n", trials=5)
    stdout, result, study = _tune(sweep, tmp_path / "out")
    assert not [t for t in study.trials if A_FAIR in t.user_attrs]
    assert_no_variant_measured_twice(study)
    assert _level(result, result.best_trial) == 8.0
    assert _level(result, result.default_trial) == 8.0
    default = next(t for t in study.trials if t.number == result.default_trial)
    baseline = next(t for t in study.trials if t.user_attrs.get(A_DEFAULT))
    # Same config as the baseline default (content hash), at the best's load.
    assert default.user_attrs[A_KEY].split("/")[0] == baseline.user_attrs[A_KEY].split("/")[0]
    assert "concurrency 8" in " ".join(stdout.split())


# -- build_result on a study with known numbers (no server: the comparison rules only) ----------

THROUGHPUT = Objective(
    (("throughput_infer_per_s", "maximize"),),
    ConstraintSpec(latency_percentile=99.0, latency_budget_us=10_000.0),
)
SERVER = ServerInfo(url="127.0.0.1:1", protocol="grpc", kind="perfkit_server", version="")


def _add(
    study: optuna.Study,
    *,
    config: str,
    concurrency: int,
    value: float,
    default: bool = False,
    fair: int | None = None,
    violation: float = -0.5,
) -> int:
    number = len(study.trials)
    attrs: dict[str, Any] = {
        A_KEY: f"{config}/batch_size=1,concurrency={concurrency}",
        A_PARAMS: {"concurrency": concurrency, "batch_size": 1},
        A_DEFAULT: default,
        A_MEASURED: True,
        A_NAME: "m_config_default" if default else f"m_config_{number}",
        A_CONFIG: f'name: "m"\nmax_batch_size: {8 if config == "H" else 16}\n',
        A_METRICS: {"throughput_infer_per_s": value},
        A_VIOL: {"p99_latency_us": violation},
    }
    if fair is not None:
        attrs[A_FAIR] = fair
    study.add_trial(
        optuna.trial.create_trial(
            values=[value], user_attrs=attrs, constraints={"p99_latency_us": violation}
        )
    )
    return number


def _result(study: optuna.Study, min_gain_pct: float = 2.0) -> TuneResult:
    return output.build_result(
        study,
        THROUGHPUT,
        model="m",
        sampler="tpe",
        default_config_pbtxt='name: "m"\n',
        server=SERVER,
        started_at="2026-01-01T00:00:00Z",
        min_gain_pct=min_gain_pct,
        settings={"load": {"concurrency": [1, 8]}},
    )


def test_gain_is_against_the_default_at_the_best_load() -> None:
    study = optuna.create_study(direction="maximize")
    base = _add(study, config="H", concurrency=1, value=100.0, default=True)
    best = _add(study, config="V", concurrency=8, value=800.0)
    fair = _add(study, config="H", concurrency=8, value=700.0, default=True, fair=best)
    result = _result(study)
    assert (result.best_trial, result.default_trial, result.default_best_trial) == (
        best,
        fair,
        fair,
    )
    assert result.gain_pct == pytest.approx(100.0 / 7.0)  # not 700 % (the baseline load's)
    sentence = summary_sentence(result)
    assert "m_config_1 is 14% better than the default configuration" in sentence
    assert "(both at concurrency 8)" in sentence
    assert base not in (result.best_trial, result.default_trial)
    # results.json round-trips the new fields.
    doc = json.loads(json.dumps(result_to_dict(result)))
    assert result_from_dict(doc) == result
    assert doc["default_trial"] == fair
    assert doc["gain_pct"] == pytest.approx(result.gain_pct)
    assert doc["settings"]["default_comparison"].startswith("same load")


def test_min_gain_applies_to_the_same_load_comparison(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    _add(study, config="H", concurrency=1, value=100.0, default=True)
    best = _add(study, config="V", concurrency=8, value=800.0)
    fair = _add(study, config="H", concurrency=8, value=790.0, default=True, fair=best)
    result = _result(study)  # 1.3 % < min_gain_pct 2: the default is kept
    assert result.best_trial == result.default_trial == fair
    assert result.gain_pct == 0.0
    assert any("keeping the default" in m for m in result.messages)
    assert "provides no gain" in summary_sentence(result)
    wb = output.write_back(result, tmp_path, dry_run=True)
    assert wb.reason == "the default config is the best; nothing written"


def test_default_infeasible_at_the_best_load_falls_back_to_its_best_under_the_constraints() -> None:
    study = optuna.create_study(direction="maximize")
    base = _add(study, config="H", concurrency=1, value=100.0, default=True)
    best = _add(study, config="V", concurrency=8, value=800.0)
    _add(study, config="H", concurrency=8, value=900.0, default=True, fair=best, violation=0.5)
    result = _result(study)
    # Model Analyzer's rule: each config's best measurement under the constraints.
    assert result.best_trial == best
    assert result.default_trial == result.default_best_trial == base
    assert result.gain_pct == pytest.approx(700.0)
    sentence = summary_sentence(result)
    assert "the default at its best under the constraints, concurrency 1" in sentence
    assert result.settings["default_comparison"].endswith("misses them at the best's load")


def test_without_the_default_at_the_best_load_the_outputs_say_the_loads_differ() -> None:
    # E.g. a tune interrupted before the extra measurement.
    study = optuna.create_study(direction="maximize")
    base = _add(study, config="H", concurrency=1, value=100.0, default=True)
    _add(study, config="V", concurrency=8, value=800.0)
    result = _result(study)
    assert result.default_trial == base
    assert "concurrency 1" in summary_sentence(result)
    assert output.comparison_text(result, THROUGHPUT).startswith(
        "best at concurrency 8, default at concurrency 1"
    )
    assert result.settings["default_comparison"].endswith("not measured at the best's load")
