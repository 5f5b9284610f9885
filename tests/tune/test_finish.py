"""Budget and stopping (patience, which budget ended the tune) and what runs after the search: the
top configs over a full load sweep (`top_k`) and their re-measurement on another server
(`validate_on`), in results.json, the HTML report and the CLI tables."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import pytest
from click.testing import CliRunner

import perfkit.tune
from perfkit.cli import cli
from perfkit.errors import ConfigError
from perfkit.model_repo.config import ModelConfig, parse_config
from perfkit.report.html import build_report
from perfkit.report.schema import load_result
from perfkit.results import LatencySummary, Measurement, TuneResult
from perfkit.sweepfile import ConstraintSpec, LoadSettings, SpaceSpec, parse_sweep
from perfkit.tune import finish
from perfkit.tune import records as rec
from perfkit.tune.evaluate import Outcome, WindowWatch
from perfkit.tune.objective import Objective
from perfkit.tune.space import SearchSpace
from perfkit.tune.stopping import trials_without_improvement
from perfkit.tune.tuner import LoopSettings, Tuner, make_sampler
from tests.tune.conftest import write_sweep

BASE = parse_config(
    'name: "m"\nbackend: "onnxruntime"\nmax_batch_size: 8\n'
    "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
)
OBJECTIVE = Objective((("throughput_infer_per_s", "maximize"),), ConstraintSpec())


def measurement(throughput: float) -> Measurement:
    lat = LatencySummary(
        count=100, avg_us=1000.0, std_us=10.0, min_us=900.0, max_us=1500.0,
        p50_us=1000.0, p90_us=1100.0, p95_us=1200.0, p99_us=1400.0,
    )  # fmt: skip
    return Measurement(
        mode="concurrency", level=1.0, batch_size=1, stable=True, request_count=100,
        error_count=0, duration_ns=10**9, throughput_infer_per_s=throughput, latency=lat,
    )  # fmt: skip


class NeverBetter:
    """A replay evaluator (the tuner's Evaluator seam, as benchmarks/tuner_efficiency.py's): the
    default config answers 100 infer/s, every variant 50, so nothing improves on the default."""

    def __init__(self) -> None:
        self.calls = 0

    def evaluate(
        self, config: ModelConfig, params: Mapping[str, Any], watch: WindowWatch
    ) -> Outcome:
        self.calls += 1
        m = measurement(100.0 if config == BASE else 50.0)
        return Outcome(measurement=m, window_s=1.0)


def test_patience_stops_a_tune_whose_trials_never_improve() -> None:
    space = SearchSpace.from_specs(
        SpaceSpec(instance_count=(1, 2, 3, 4), max_batch_size=(1, 2, 4, 8)), LoadSettings()
    )
    settings = LoopSettings(model="m", study_name="patience", trials=20, seed=3, prune=False)
    study = optuna.create_study(
        study_name="patience", direction="maximize", sampler=make_sampler(settings, space)
    )
    evaluator = NeverBetter()
    tuner = Tuner(
        settings=settings, space=space, objective=OBJECTIVE, base_config=BASE, baseline_load={},
        study=study, created=True, evaluator=evaluator, patience=3,
    )  # fmt: skip

    tuner.run()

    # The default (the first best) and then 3 trials without improvement: 4 of the 20.
    assert evaluator.calls == 4
    assert tuner.budget_used() == 4
    assert "stopped: 3 trials without improvement (patience 3)" in " ".join(tuner.messages)
    assert not any("trials budget" in m for m in tuner.messages)


def test_the_messages_say_the_time_budget_ended_the_search() -> None:
    space = SearchSpace.from_specs(SpaceSpec(instance_count=(1, 2, 3)), LoadSettings())
    # A budget of 0 s is spent once the default is measured: no clock decides this test.
    settings = LoopSettings(model="m", study_name="t", trials=20, timeout_s=0.0, prune=False)
    study = optuna.create_study(study_name="t", direction="maximize")
    evaluator = NeverBetter()
    tuner = Tuner(
        settings=settings, space=space, objective=OBJECTIVE, base_config=BASE, baseline_load={},
        study=study, created=True, evaluator=evaluator, patience=3,
    )  # fmt: skip

    tuner.run()

    assert evaluator.calls == 1
    assert tuner.messages == ["stopped: the time budget (0 s) ran out"]


def test_the_sweep_keys_and_their_errors(tmp_path: Path) -> None:
    head = f'[model]\nname = "m"\nrepository = "{tmp_path}"\n'
    sweep = parse_sweep(
        head + '[server]\nvalidate_on = "triton:8001"\n[budget]\npatience = 6\ntop_k = 3\n'
    )
    assert (sweep.patience, sweep.top_k, sweep.validate_on) == (6, 3, "triton:8001")
    assert (parse_sweep(head).patience, parse_sweep(head).top_k) == (None, 0)
    with pytest.raises(ConfigError, match=r"s\.toml:budget\.patience: .*>= 1"):
        parse_sweep(head + "[budget]\npatience = 0\n", "s.toml")
    with pytest.raises(ConfigError, match=r"s\.toml:budget\.top_k"):
        parse_sweep(head + '[budget]\ntop_k = "all"\n', "s.toml")
    # An ensemble's (or several models') configs are not one model's: refused before any trial.
    with pytest.raises(ConfigError, match=r"top_k: .*several models"):
        finish.check(sweep, pipeline=True)


def _trial(number: int, value: float | None, **attrs: Any) -> optuna.trial.FrozenTrial:
    state = optuna.trial.TrialState.COMPLETE if value is not None else optuna.trial.TrialState.FAIL
    return optuna.trial.create_trial(
        state=state,
        value=value,
        user_attrs={rec.A_MEASURED: True, **attrs},
    )


def test_the_patience_rule_counts_measured_trials_not_duplicates() -> None:
    study = optuna.create_study(direction="maximize")
    for i, (value, attrs) in enumerate(
        [
            (100.0, {rec.A_DEFAULT: True}),  # the default: the first best
            (90.0, {}),  # worse: 1
            (None, {}),  # failed: 2
            (100.0, {rec.A_DUP: 0}),  # a duplicate draw: not counted
            (100.0, {}),  # equal is no improvement: 3
            (95.0, {rec.A_FAIR: 0}),  # the default at the best's load: not counted
        ]
    ):
        study.add_trial(_trial(i, value, **attrs))
    assert trials_without_improvement(study.trials, OBJECTIVE) == 3
    study.add_trial(_trial(6, 101.0))  # strictly better: the count starts again
    assert trials_without_improvement(study.trials, OBJECTIVE) == 0


def test_the_levels_of_the_load_sweep() -> None:
    assert finish.sweep_levels(LoadSettings(concurrency=(4, 1))) == (1.0, 4.0)
    assert finish.sweep_levels(LoadSettings(concurrency=(8,))) == (1.0, 2.0, 4.0, 8.0, 16.0)
    rates = LoadSettings(mode="request_rate", request_rate=(100.0,))
    assert finish.sweep_levels(rates) == (25.0, 50.0, 100.0, 200.0)
    assert finish.kendall_tau([1, 2, 3], [1, 2, 3]) == 1.0
    assert finish.kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert finish.kendall_tau([1], [1]) is None


def _mlp_sweep(repo: Path, out: Path, extra_server: str = "", budget: str = "") -> str:
    # Two configs: the default (1 instance) and 2 instances, searched at concurrency 1 and 2.
    return f"""
[model]
name = "mlp"
repository = "{repo}"
zoo = "mlp"

[server]
{extra_server}

[space]
instance_count = [2]

[load]
concurrency = [1, 2]

[budget]
trials = 2
{budget}

[measure]
window_ms = 200
max_windows = 2
stability_windows = 2
stability_pct = 50
warmup_requests = 4

[search]
sampler = "grid"
prune = false

[output]
dir = "{out}"
study_name = "finish"
"""


def test_top_k_load_sweep_and_validation_on_a_second_server(
    tmp_path: Path, perfkit_server: Any, zoo_repo_factory: Any
) -> None:
    repo = zoo_repo_factory("mlp")
    target = perfkit_server(repo, "--model-control-mode=explicit")
    out = tmp_path / "out"
    sweep = tmp_path / "finish.toml"
    sweep.write_text(_mlp_sweep(repo, out, budget="patience = 5"))
    args = ["tune", str(sweep), "--dry-run", "--top-k", "2", "--validate-on", target.grpc_url]

    run = CliRunner().invoke(cli, args)

    assert run.exit_code == 0, (run.output, run.exception)
    result = load_result(out / "results")
    assert isinstance(result, TuneResult)
    # Two configs, each at both concurrency levels of the sweep, in rank order.
    assert [s.rank for s in result.load_sweeps] == [1, 2]
    assert len({s.trial for s in result.load_sweeps}) == 2
    for s in result.load_sweeps:
        assert s.errors == ()
        assert [m.level for m in s.measurements] == [1.0, 2.0]
        assert all(m.throughput_infer_per_s > 0 for m in s.measurements)
    assert any(m.startswith("re-measured the top 2 configs") for m in result.messages)
    assert any(m.startswith("stopped: the trials budget (2)") for m in result.messages)

    # The validation: both configs on both servers, both rankings, the verdict.
    v = result.validation
    assert v is not None
    assert v.error == ""
    assert v.url == target.grpc_url
    assert v.metric == "throughput_infer_per_s"
    assert [c.trial for c in v.configs] == [s.trial for s in result.load_sweeps]
    for c in v.configs:
        assert c.error == ""
        assert c.search_value
        assert c.target_value
    assert v.search_ranking == tuple(s.trial for s in result.load_sweeps)  # the search's order
    assert sorted(v.target_ranking) == sorted(v.search_ranking)
    assert v.kendall_tau in (1.0, -1.0)
    assert v.same_winner == (v.search_ranking[0] == v.target_ranking[0])
    assert v.server is not None
    assert v.server.kind == "perfkit_server"
    assert any(
        m.startswith(f"validation on {target.grpc_url}: same winner") for m in result.messages
    )

    # The CLI summary's compact tables.
    assert "top 2 configs over a load sweep" in run.output
    assert "concurrency 2" in run.output
    assert f"validation on {target.grpc_url} at concurrency" in run.output

    # results.json holds both; an older one (without either key) still reads.
    doc = json.loads((out / "results" / "results.json").read_text())
    assert len(doc["load_sweeps"][0]["measurements"]) == 2
    assert doc["validation"]["target_ranking"] == list(v.target_ranking)
    del doc["load_sweeps"], doc["validation"]
    (tmp_path / "old.json").write_text(json.dumps(doc))
    old = load_result(tmp_path / "old.json")
    assert isinstance(old, TuneResult)
    assert (old.load_sweeps, old.validation) == ((), None)

    # The HTML report: the sweep's table and figure, the validation's rankings.
    html = build_report([("finish", result)])
    assert "Top configs over a full load sweep" in html
    assert "p99 latency over the load sweep" in html  # the figure
    assert f"Validation on {target.grpc_url}" in html
    assert "Kendall tau" in html


def test_validate_on_a_server_not_in_explicit_mode(
    tmp_path: Path, perfkit_server: Any, ident_repo: Path
) -> None:
    (tmp_path / "empty").mkdir()
    target = perfkit_server(tmp_path / "empty")  # model-control mode none
    out = tmp_path / "out"
    sweep = write_sweep(tmp_path / "s.toml", ident_repo)
    args = ["tune", str(sweep), "--output", str(out), "--validate-on", target.grpc_url]

    run = CliRunner().invoke(cli, args)

    # Refused before the search, with what to do.
    assert isinstance(run.exception, ConfigError)
    message = str(run.exception)
    assert f"the server at {target.grpc_url} is in model-control mode NONE" in message
    assert "--model-control-mode=explicit" in message
    assert "--validate-on" in message
    assert not (out / "results").exists()

    # A server that refuses the loads at the end (here as both servers): each config says so,
    # and the validation reports no ranking rather than failing.
    spec = parse_sweep(sweep.read_text(), "s.toml").with_overrides(validate_on=target.grpc_url)
    best = perfkit.tune.TrialRecord(
        number=0, variant_name="ident_config_default", params={"concurrency": 4},
        config_pbtxt=(ident_repo / "ident" / "config.pbtxt").read_text(), state="complete",
        feasible=True, reason=None, objectives={"throughput_infer_per_s": 1.0}, constraints={},
        measurement=None, duration_s=0.0, overhead_s=0.0,
    )  # fmt: skip
    search = finish.evaluator_for(spec, target.grpc_url)
    try:
        v = finish.validate([best], spec, OBJECTIVE, search, lambda note: None)
    finally:
        search.close()
    (c,) = v.configs
    assert (c.search_value, c.target_value) == (None, None)
    assert c.error.startswith("this server: ")
    assert f"; {target.grpc_url}: " in c.error
    assert "not allowed" in c.error
    assert (v.search_ranking, v.target_ranking) == ((0,), ())
    assert (v.same_winner, v.kendall_tau) == (None, None)
    assert v.load == {"concurrency": 4.0}
    assert "same winner: n/a" in finish.validation_message(v)
