"""Several models tuned together on one server (issue #14, acceptance 5): a sweep's [[models]].

Parsing (each refusal names file:key), the group's space, variants and weighted score, and end to
end: the zoo mlp and a perfkit_identity model with a fixed delay per execution (so that one
instance misses its latency budget and four meet it, whatever the machine) tuned together on
one embedded server, measured at the same time, each under its own budget.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import optuna
import pytest
from rich.console import Console

from perfkit.cli.tune import results_table
from perfkit.errors import ConfigError
from perfkit.model_repo.config import load_config, parse_config
from perfkit.report.schema import load_result
from perfkit.sweepfile import (
    ConstraintSpec,
    LoadSettings,
    SpaceSpec,
    TuneSweep,
    load_sweep,
    parse_sweep,
)
from perfkit.tune import run as tune_run
from perfkit.tune.multi import (
    Group,
    GroupVariants,
    group_objective,
    group_space,
    model_texts,
    scores,
)
from perfkit.tune.space import describe
from tests.tune.conftest import assert_no_variant_measured_twice, write_identity_model

TWO = """
[[models]]
name = "mlp"
zoo = "mlp"
{mlp}
[[models]]
name = "ident"
weight = 2
{ident}
"""


def _parse(text: str) -> TuneSweep:
    return parse_sweep(text, "multi.toml", Path("/base"))


def test_models_tables_over_the_sweeps_tables() -> None:
    sweep = parse_sweep(
        TWO.format(
            mlp='repository = "repo"\n[models.constraints]\nlatency_budget_ms = 20\n',
            ident="[models.space]\ninstance_count = [1, 4]\n[models.load]\nconcurrency = 8\n",
        )
        + "[space]\ndynamic_batching = [true, false]\n[load]\nconcurrency = 2\n"
        + "[constraints]\nlatency_percentile = 95\nlatency_budget_ms = 50\n",
        "multi.toml",
        Path("/base"),
    )
    assert sweep.model == "mlp"  # the first model: code reading sweep.model keeps working
    assert sweep.zoo == "mlp"
    assert sweep.repository == Path("/base/repo")
    mlp, ident = sweep.models
    assert (mlp.weight, ident.weight) == (1.0, 2.0)
    assert mlp.constraints == ConstraintSpec(latency_percentile=95.0, latency_budget_us=20_000.0)
    assert ident.constraints == ConstraintSpec(latency_percentile=95.0, latency_budget_us=50_000.0)
    assert ident.space == SpaceSpec(instance_count=(1, 4), dynamic_batching=(True, False))
    assert (mlp.load, ident.load) == (
        LoadSettings(concurrency=(2,)),
        LoadSettings(concurrency=(8,)),
    )
    space = group_space(sweep)
    assert [d.name for d in space.dims] == [
        "mlp.dynamic_batching",
        "ident.instance_count",
        "ident.dynamic_batching",
    ]
    assert space.fixed == {
        "mlp.batch_size": 1,
        "mlp.concurrency": 2,
        "ident.batch_size": 1,
        "ident.concurrency": 8,
    }
    objective = group_objective(sweep)
    assert objective.targets == (("weighted_throughput_infer_per_s", "maximize"),)
    assert objective.bounds() == {"mlp.p95_latency_us": 20_000.0, "ident.p95_latency_us": 50_000.0}
    # Each model's budget is its own: one model over it makes the trial infeasible.
    over = objective.violations({"mlp.p95_latency_us": 10_000.0, "ident.p95_latency_us": 75_000.0})
    assert over == {"mlp.p95_latency_us": -0.5, "ident.p95_latency_us": 0.5}
    assert not objective.feasible({"mlp.p95_latency_us": 10_000.0, "ident.p95_latency_us": 75e3})


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[model]\nname = "mlp"\n' + TWO.format(mlp="", ident=""), r"multi\.toml:model: give"),
        ('[[models]]\nname = "mlp"\n', r"multi\.toml:models: lists 1 model"),
        (TWO.format(mlp="bogus = 1", ident=""), r"multi\.toml:models\[0\]\.bogus: unknown key"),
        (
            TWO.format(mlp="", ident="[models.load]\nconcurrency = [1, 2]"),
            r"multi\.toml:models\[1\]\.load\.concurrency: lists 2 values",
        ),
        (
            TWO.format(mlp="", ident="[models.constraints]\nlatency_budget = 2"),
            r"multi\.toml:models\[1\]\.constraints\.latency_budget: unknown key",
        ),
        (
            TWO.format(mlp='repository = "a"', ident='repository = "b"'),
            r"multi\.toml:models\[0\]\.repository: .*one model repository",
        ),
        (TWO.format(mlp="weight = 0", ident=""), r"multi\.toml:models\[0\]\.weight: must be"),
        (TWO.format(mlp="", ident="").replace('"ident"', '"mlp"'), r"models\[1\]\.name: 'mlp'"),
        (TWO.format(mlp="", ident="").replace('"ident"', '"a.b"'), r"models\[1\]\.name: 'a\.b'"),
        (
            TWO.format(mlp="", ident="") + "[objectives]\ngpu_power = 'minimize'\n",
            r"multi\.toml:objectives\.gpu_power: not supported with \[\[models\]\]",
        ),
        (
            TWO.format(mlp="", ident="") + "[constraints]\nmax_gpu_power_w = 300\n",
            r"multi\.toml:constraints\.max_gpu_power_w: GPU bounds",
        ),
        (
            TWO.format(mlp="", ident="") + "[load]\nbaseline = { concurrency = 2 }\n",
            r"multi\.toml:models\[0\]\.load\.baseline: has no use",
        ),
    ],
)
def test_refusals_name_the_key(text: str, where: str) -> None:
    with pytest.raises(ConfigError, match=where):
        _parse(text)


def test_weighted_score_is_each_models_gain_over_the_reference() -> None:
    sweep = parse_sweep(
        TWO.format(mlp="", ident="") + "[objectives]\nthroughput = 'maximize'\n"
        "p99_latency = 'minimize'\n",
        "multi.toml",
        Path("/base"),
    )
    objective = group_objective(sweep)
    reference = {
        "mlp.throughput_infer_per_s": 1000.0,
        "ident.throughput_infer_per_s": 10.0,
        "mlp.p99_latency_us": 2000.0,
        "ident.p99_latency_us": 8000.0,
    }
    assert scores(reference, reference, objective) == {
        "weighted_throughput_infer_per_s": 1.0,
        "weighted_p99_latency_us": 1.0,
    }
    # mlp (weight 1) 10 % faster, ident (weight 2) 50 % faster: (1.1 + 2 * 1.5) / 3; latency
    # halved on ident only: (1 + 2 * 2) / 3.
    trial = {
        **reference,
        "mlp.throughput_infer_per_s": 1100.0,
        "ident.throughput_infer_per_s": 15.0,
        "ident.p99_latency_us": 4000.0,
    }
    got = scores(trial, reference, objective)
    assert got["weighted_throughput_infer_per_s"] == pytest.approx((1.1 + 2 * 1.5) / 3)
    assert got["weighted_p99_latency_us"] == pytest.approx(5 / 3)


def test_variants_text_and_key(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_identity_model(repo)
    ident = load_config(repo / "ident" / "config.pbtxt")
    base = Group((("ident", ident), ("copy", ident)))
    sweep_space = group_space(
        parse_sweep(
            TWO.format(mlp="", ident="").replace('"mlp"', '"copy"')
            + "[space]\ninstance_count = [1, 2]\n[load]\nconcurrency = 4\n",
            "multi.toml",
            tmp_path,
        )
    )
    variants = GroupVariants(sweep_space)
    params = {"copy.instance_count": 2, "ident.instance_count": 1, "copy.concurrency": 4}
    variant = variants.build(base, params)
    configs = dict(variant.models)
    assert [g.count for g in configs["copy"].instance_group] == [2]
    assert configs["ident"] == ident
    assert variants.key(variant, params) != variants.key(base, params)
    # The key's load part is the models' fixed loads, whatever the params hold.
    assert variants.key(base, {}) == variants.key(base, params)
    assert describe(params) == "copy[2 c=4] ident[1]"
    text = variants.text(variant)
    assert parse_config(text) == ident  # a valid config.pbtxt: the first model's
    assert {n: parse_config(t) for n, t in model_texts(text, "ident").items()} == configs


def _acceptance_sweep(path: Path, repo: Path) -> Path:
    path.write_text(
        f"""
[[models]]
name = "mlp"
zoo = "mlp"
repository = "{repo}"
[models.space]
dynamic_batching = [true]        # every variant turns it on: the default has it off
[models.load]
concurrency = 1
[models.constraints]
latency_budget_ms = 2000

[[models]]
name = "ident"
weight = 2
[models.space]
instance_count = [1, 4]
[models.load]
concurrency = 4
[models.constraints]
latency_budget_ms = 180          # 1 instance: 4 requests x 50 ms queued, >= 200 ms; 4: ~50 ms

[budget]
trials = 3

[measure]
window_ms = 200
max_windows = 3
stability_windows = 2
stability_pct = 50
warmup_requests = 4

[search]
sampler = "grid"
seed = 1
min_gain_pct = 0
"""
    )
    return path


def test_two_models_tuned_together_each_under_its_budget(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_identity_model(repo, delay_us=50_000)
    out = tmp_path / "out"
    sweep = dataclasses.replace(
        load_sweep(_acceptance_sweep(tmp_path / "multi.toml", repo)), output=out
    )
    result = tune_run(sweep)

    study = optuna.load_study(study_name=result.study_name, storage=f"sqlite:///{out / 'study.db'}")
    assert_no_variant_measured_twice(study)
    measured = [t for t in result.trials if t.state == "complete"]
    assert len(measured) == 3, [(t.number, t.state, t.reason) for t in result.trials]
    for t in measured:
        # Both models measured in the same trial, at the same time, on the one server.
        assert set(t.models) == {"mlp", "ident"}
        for m in t.models.values():
            assert m.server is not None
            assert m.server.inference_count > 0
        spans = [
            [(w.start_ns, w.start_ns + w.duration_ns) for w in m.windows if w.merged]
            for m in t.models.values()
        ]
        start = max(min(s for s, _ in model) for model in spans)
        end = min(max(e for _, e in model) for model in spans)
        assert start < end, f"trial {t.number}: the models' merged windows do not overlap"
        assert t.measurement == t.models["mlp"]  # the trial's measurement: the first model's
        frozen = study.trials[t.number]
        metrics = frozen.user_attrs["metrics"]
        assert {"mlp.throughput_infer_per_s", "ident.p99_latency_us"} <= set(metrics)
        # Scored against the default configs' trial (the default against itself: -1).
        first = t.number == result.trials[0].number
        assert metrics["reference_trial"] == (-1 if first else result.trials[0].number)
    by_count = {
        load_config_count(t.config_pbtxt): t for t in measured if t.number != result.default_trial
    }
    default = next(t for t in measured if t.number == result.trials[0].number)
    # The default (one ident instance) misses ident's budget only: the trial is infeasible.
    assert not default.feasible
    assert default.constraints["ident.p99_latency_us"] > 0
    assert default.constraints["mlp.p99_latency_us"] <= 0
    assert default.objectives["weighted_throughput_infer_per_s"] == pytest.approx(1.0)
    assert not by_count[1].feasible
    assert by_count[4].feasible
    assert result.best_trial == by_count[4].number
    # Both models' configs were written back, each original kept.
    assert load_config(repo / "mlp" / "config.pbtxt").HasField("dynamic_batching")
    assert [g.count for g in load_config(repo / "ident" / "config.pbtxt").instance_group] == [4]
    assert (repo / "mlp" / "config.pbtxt.orig").exists()
    assert (repo / "ident" / "config.pbtxt.orig").exists()
    # The summary table shows each model's figures and the score.
    console = Console(record=True, width=200)
    console.print(results_table(result))
    table = console.export_text()
    assert all(f"{n} {c}" in table for n in ("mlp", "ident") for c in ("infer/s", "p99 ms"))
    assert "ident[4] mlp[dyn]" in table
    # results.json keeps every model's measurement of every trial.
    saved = load_result(out / "results" / "results.json")
    assert all(set(t.models) == {"mlp", "ident"} for t in saved.trials if t.state == "complete")
    with (out / "results" / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert all(float(r["ident.p99_latency_us"]) > 0 for r in rows)


def load_config_count(text: str) -> int:
    """ident's instance count in a group variant's text."""
    return parse_config(model_texts(text, "mlp")["ident"]).instance_group[0].count
