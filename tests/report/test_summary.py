"""One summary sentence: the console (`perfkit report`, and `perfkit tune` through the same
function) and the HTML report say the same thing for the same TuneResult, counting measurements
the same way: a copy of a measured variant is none, the default's extra measurement at the best's
load is one, and the default measured at two loads is one configuration."""

from __future__ import annotations

import re
from html import unescape
from pathlib import Path
from typing import Any

import optuna
import pytest

from perfkit.report import schema
from perfkit.report.summary import summary_sentence
from perfkit.results import TuneResult
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
from tests.report.builders import SERVER, make_tune, measurement, perfkit_main, replace

THROUGHPUT = Objective(
    (("throughput_infer_per_s", "maximize"),),
    ConstraintSpec(latency_percentile=99.0, latency_budget_us=10_000.0),
)
DEFAULT_CONFIG = 'name: "m"\nmax_batch_size: 8\n'
VARIANT_CONFIG = 'name: "m"\nmax_batch_size: 16\n'


def _measure(study: optuna.Study, config: str, concurrency: int, value: float, **attrs: Any) -> int:
    """A trial as the tuner leaves it after measuring (config, concurrency)."""
    number = len(study.trials)
    default = config == DEFAULT_CONFIG
    study.add_trial(
        optuna.trial.create_trial(
            values=[value],
            constraints={"p99_latency_us": -0.5},
            user_attrs={
                A_KEY: f"{'H' if default else 'V'}/concurrency={concurrency}",
                A_PARAMS: {"concurrency": concurrency},
                A_DEFAULT: default,
                A_MEASURED: True,
                A_NAME: "m_config_default" if default else f"m_config_{number}",
                A_CONFIG: config,
                A_METRICS: {"throughput_infer_per_s": value},
                A_VIOL: {"p99_latency_us": -0.5},
                **attrs,
            },
        )
    )
    return number


def _tune_with_a_copy_and_the_default_at_the_best_load() -> TuneResult:
    study = optuna.create_study(direction="maximize")
    _measure(study, DEFAULT_CONFIG, 1, 100.0)
    best = _measure(study, VARIANT_CONFIG, 8, 800.0)
    # A later draw of the same variant: told the stored result, never measured (Tuner._copy).
    study.add_trial(
        optuna.trial.create_trial(
            values=[800.0],
            constraints={"p99_latency_us": -0.5},
            user_attrs={A_DUP: best, A_NAME: f"m_config_{best}", A_METRICS: {}},
        )
    )
    _measure(study, DEFAULT_CONFIG, 8, 700.0, **{A_FAIR: best})
    return output.build_result(
        study,
        THROUGHPUT,
        model="m",
        sampler="tpe",
        default_config_pbtxt=DEFAULT_CONFIG,
        server=SERVER,
        started_at="2026-01-01T00:00:00Z",
    )


def _html_and_console(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    result: TuneResult,
) -> tuple[str, str]:
    """The summary paragraph of the HTML report, and everything `perfkit report` printed, with
    Rich's line wrapping undone."""
    schema.write_tune(result, tmp_path / "tune")
    page = tmp_path / "report.html"
    code, printed = perfkit_main(
        monkeypatch, capsys, "report", tmp_path / "tune", "--label", "t", "-o", page
    )
    assert code == 0, printed
    paragraph = re.search(r'<p class="summary"><b>t:</b> (.*?)</p>', page.read_text())
    assert paragraph is not None
    return unescape(paragraph.group(1)), " ".join(printed.split())


def test_console_and_html_say_the_same_sentence(tmp_path, monkeypatch, capsys):
    result = _tune_with_a_copy_and_the_default_at_the_best_load()
    assert result.settings["deduplicated_draws"] == 1
    sentence = summary_sentence(result)
    # 3 measurements: the default at concurrency 1 and 8, the variant at 8; the copy is none.
    # 2 configurations: the default's (at two loads) and the variant's.
    assert sentence.startswith(
        "In 3 measurements across 2 configurations, m_config_1 is 14% better than the default "
        "configuration at maximizing throughput, under the given constraints (p99 latency ≤ 10 ms)"
    )
    assert "(both at concurrency 8)" in sentence
    in_html, in_console = _html_and_console(tmp_path, monkeypatch, capsys, result)
    assert in_html == sentence
    assert sentence in in_console


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, "In 5 measurements across 2 configurations, mlp_config_4 is 50% better"),
        ({"best_trial": 0}, "mlp_config_default provides no gain over the default"),
        ({"best_trial": None}, "no configuration satisfied the constraints"),
    ],
)
def test_pruned_and_unmeasured_trials_are_no_measurements(
    tmp_path, monkeypatch, capsys, change, expected
):
    # make_tune: 7 trials, of which one failed before measuring and one was pruned; trial 5 has
    # its own config, every other one the default's.
    result = replace(make_tune(), **change)
    sentence = summary_sentence(result)
    assert expected in sentence
    in_html, in_console = _html_and_console(tmp_path, monkeypatch, capsys, result)
    assert in_html == sentence
    assert sentence in in_console


def test_a_failed_trial_with_its_measurement_is_one():
    tune = make_tune()
    failed = replace(tune.trials[2], measurement=measurement(8, 10.0, 1000.0))
    result = replace(tune, trials=(*tune.trials[:2], failed, *tune.trials[3:]))
    assert summary_sentence(result).startswith("In 6 measurements across 2 configurations")
