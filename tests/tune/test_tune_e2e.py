"""`perfkit tune` end to end on the bundled server: write-back, outputs, failed variants."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import optuna
import tritonclient.grpc as grpcclient

from perfkit.model_repo.config import config_from_json, load_config, parse_config
from perfkit.report.ma_csv import HEADER
from perfkit.tune.records import A_FAIR
from tests.tune.conftest import assert_no_variant_measured_twice, run_perfkit, write_sweep


def test_tune_writes_back_a_config_the_server_loads(
    ident_repo: Path, tmp_path: Path, perfkit_server: Any
) -> None:
    sweep = write_sweep(tmp_path / "s.toml", ident_repo, trials=4)
    out = tmp_path / "out"
    original = (ident_repo / "ident" / "config.pbtxt").read_text()
    proc = run_perfkit("tune", str(sweep), "--output", str(out), "--study-name", "t")
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # Output directory in Model Analyzer's layout, MA's CSV columns, the tidy CSV.
    variants = out / "output_model_repository"
    assert (variants / "ident_config_default" / "config.pbtxt").exists()
    assert len(list(variants.glob("ident_config_*/config.pbtxt"))) == 4
    with (out / "results" / "metrics-model-inference.csv").open() as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == HEADER
    assert len(rows) >= 2
    assert all(r[0] == "ident" for r in rows[1:])
    assert (out / "results" / "trials.csv").exists()
    assert "better than the default configuration" in proc.stdout or "default" in proc.stdout

    study = optuna.load_study(study_name="t", storage=f"sqlite:///{out / 'study.db'}")
    assert_no_variant_measured_twice(study)

    # Batching pays off on this model: the best is not the default and was written back.
    written = ident_repo / "ident" / "config.pbtxt"
    assert (ident_repo / "ident" / "config.pbtxt.orig").read_text() == original
    best = load_config(written)
    assert best.name == "ident"
    assert best.HasField("dynamic_batching")
    assert best.parameters["execute_delay_us"].string_value == "4000"
    assert "+dynamic_batching" in proc.stdout.replace(" ", "")

    # A fresh server loads the written config as is.
    server = perfkit_server(ident_repo, "--model-control-mode=explicit", "--load-model=ident")
    client = grpcclient.InferenceServerClient(server.grpc_url)
    served = config_from_json(client.get_model_config("ident", as_json=True)["config"])
    assert served.HasField("dynamic_batching")
    assert served.instance_group[0].count == best.instance_group[0].count
    client.close()


def test_dry_run_writes_nothing(ident_repo: Path, tmp_path: Path) -> None:
    sweep = write_sweep(
        tmp_path / "s.toml", ident_repo, trials=2, space="dynamic_batching = [true]"
    )
    before = (ident_repo / "ident" / "config.pbtxt").read_text()
    proc = run_perfkit("tune", str(sweep), "--output", str(tmp_path / "out"), "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (ident_repo / "ident" / "config.pbtxt").read_text() == before
    assert not (ident_repo / "ident" / "config.pbtxt.orig").exists()
    assert "--dry-run: nothing written" in proc.stdout


def test_a_variant_that_cannot_load_is_a_failed_trial(ident_repo: Path, tmp_path: Path) -> None:
    # max_batch_size 4 with preferred size 8: the server refuses the override; the grid tries it.
    space = "max_batch_size = [4, 16]\ndynamic_batching = [true]\npreferred_batch_sizes = [[8]]\n"
    sweep = write_sweep(tmp_path / "s.toml", ident_repo, trials=9, sampler="grid", space=space)
    out = tmp_path / "out"
    proc = run_perfkit("tune", str(sweep), "--output", str(out), "--study-name", "t")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{out / 'study.db'}")
    searched = [t for t in study.trials if A_FAIR not in t.user_attrs]
    failed = [t for t in searched if t.state == optuna.trial.TrialState.FAIL]
    complete = [t for t in searched if t.state == optuna.trial.TrialState.COMPLETE]
    assert failed, "the invalid variant was never tried"
    for t in failed:
        assert t.params["max_batch_size_idx"] == 0  # max_batch_size 4
        reason = t.user_attrs["reason"]
        assert "preferred_batch_size" in reason
        assert "ident" in reason
        variant = out / "output_model_repository" / t.user_attrs["variant_name"] / "config.pbtxt"
        assert parse_config(variant.read_text()).max_batch_size == 4
    # The study went on: the default and at least one max_batch_size 16 variant were measured.
    assert len(complete) >= 2
    assert len(failed) + len(complete) == 5  # the default + the grid's 4 points
    assert "failed" in proc.stderr


def test_two_objectives_use_nsga2_and_report_a_pareto_front(
    ident_repo: Path, tmp_path: Path
) -> None:
    extra = '\n[objectives]\nthroughput = "maximize"\np99_latency = "minimize"\n'
    sweep = write_sweep(tmp_path / "s.toml", ident_repo, trials=4, extra=extra)
    out = tmp_path / "out"
    proc = run_perfkit("tune", str(sweep), "--output", str(out), "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sampler nsga2" in proc.stderr
    assert "Pareto front" in proc.stdout
    doc = json.loads((out / "results" / "results.json").read_text())
    assert doc["sampler"] == "nsga2"
    assert list(doc["objectives"]) == ["throughput_infer_per_s", "p99_latency_us"]
    assert doc["pareto_trials"]
    assert doc["best_trial"] in doc["pareto_trials"]


def test_a_variant_whose_requests_fail_is_a_failed_trial(ident_repo: Path, tmp_path: Path) -> None:
    # Client batches of 4 against max_batch_size 2: the variant loads, its measurement cannot run.
    space = "max_batch_size = [2, 16]\n"
    sweep = write_sweep(tmp_path / "s.toml", ident_repo, trials=5, sampler="grid", space=space)
    text = sweep.read_text().replace(
        "baseline = { concurrency = 8 }", "baseline = { concurrency = 8 }\nbatch_size = 4"
    )
    sweep.write_text(text)
    out = tmp_path / "out"
    proc = run_perfkit("tune", str(sweep), "--output", str(out), "--study-name", "t")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{out / 'study.db'}")
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed
    for t in failed:
        assert t.params["max_batch_size_idx"] == 0
        assert "max_batch_size 2" in t.user_attrs["reason"]
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) >= 2


def test_clearly_worse_variants_are_pruned_after_their_first_windows(
    ident_repo: Path, tmp_path: Path
) -> None:
    # The default batches (4 ms per execution, concurrency 8): one instance without batching is
    # far below half of it after two windows, and is pruned there.
    config = ident_repo / "ident" / "config.pbtxt"
    config.write_text(config.read_text() + "dynamic_batching { }\n")
    space = "dynamic_batching = [false]\ninstance_count = [1, 2]\n"
    sweep = write_sweep(tmp_path / "s.toml", ident_repo, trials=3, space=space)
    text = sweep.read_text().replace("concurrency = [4, 8]", "concurrency = 8")
    sweep.write_text(text.replace("max_windows = 4", "max_windows = 6"))
    out = tmp_path / "out"
    proc = run_perfkit("tune", str(sweep), "--output", str(out), "--study-name", "t")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{out / 'study.db'}")
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, [(t.number, t.state.name, t.params) for t in study.trials]
    for t in pruned:
        assert t.params.get("instance_count_idx") is not None
        assert len(t.intermediate_values) == 2  # stopped after its first two windows
        assert "pruned" in t.user_attrs["reason"]
    assert any(t.params.get("instance_count_idx") == 0 for t in pruned)
