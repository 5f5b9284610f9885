"""Zero-config tuning (issue 14, acceptance 1): `perfkit tune -m MODEL` with no sweep file builds
its space from the model's config and the machine, prints it, and writes back a config that
beats the default under the latency budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from perfkit import zoo
from perfkit.cli import cli
from perfkit.errors import ConfigError
from perfkit.model_repo.config import (
    format_config,
    load_config,
    validate_config,
    with_max_batch_size,
)
from perfkit.tune import auto
from perfkit.tune.describe import describe_space
from perfkit.tune.space import SearchSpace, build_variant
from tests.tune.conftest import ROOT, write_identity_model

NON_BATCHING = """name: "single"
backend: "perfkit_identity"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["tune", *args], env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # ConfigError reaches the test as is (main() maps it to exit code 3 for a user).
        assert isinstance(result.exception, ConfigError), result.output
        return 3, str(result.exception)
    # Whitespace folded: the console's width differs between a terminal, pytest and xdist workers.
    return result.exit_code, " ".join(result.output.split())


# --- the space, from the model and the machine (pure) ---


def test_mlp_on_two_cores(tmp_path: Path) -> None:
    # Not in the (empty) repository: the zoo's config is read, and the tune will build it.
    sweep = auto.auto_sweep("mlp", repository=tmp_path, cpus=2, gpus=0)
    space = sweep.space
    assert sweep.zoo == "mlp"
    assert space.instance_count == (1, 2)
    assert space.instance_kind == ()  # the model's own (KIND_CPU) kept
    assert space.max_batch_size == (4, 8, 16, 32)  # mlp's own 32 and three halvings
    assert space.dynamic_batching == (False, True)
    assert space.preferred_batch_sizes == ((), (2, 4))
    assert space.max_queue_delay_us == auto.QUEUE_DELAYS_US
    # Capacity by default: the load is not searched (the capacity search finds the rate).
    assert sweep.objectives == (("capacity_infer_per_s", "maximize"),)
    assert sweep.load.concurrency == (1,)
    assert sweep.constraints.latency_budget_us is None
    assert sweep.trials == auto.DEFAULT_TRIALS
    assert sweep.measure == auto.DEFAULT_MEASURE

    # Every point of the space is a config Triton accepts (no preferred size > max_batch_size).
    base = zoo.model_config(zoo.spec("mlp"))
    points = list(SearchSpace.from_specs(space, sweep.load).points())
    knobs = 1  # the backend's knobs (perfkit.tune.knobs.machine_knobs) multiply the space
    for _, values in (*space.parameters, *space.fields):
        knobs *= len(values)
    assert knobs > 1
    assert len(points) == 2 * 4 * 2 * 2 * 4 * knobs
    for params in points:
        validate_config(build_variant(base, params), "variant")


def test_a_model_that_does_not_batch_gets_no_batching_dimension(tmp_path: Path) -> None:
    (tmp_path / "single").mkdir()
    (tmp_path / "single" / "config.pbtxt").write_text(NON_BATCHING)
    sweep = auto.auto_sweep("single", repository=tmp_path, cpus=4, max_batch_size=16)
    assert sweep.zoo is None
    assert sweep.space.instance_count == (1, 2, 3, 4)
    assert sweep.space.max_batch_size == ()  # 0 stays 0
    assert sweep.space.dynamic_batching == ()
    assert sweep.space.preferred_batch_sizes == ()
    assert sweep.space.max_queue_delay_us == ()


def test_an_ensemble_gets_its_composing_models_instances_and_batchers(tmp_path: Path) -> None:
    sweep = auto.auto_sweep("pipeline_ensemble", repository=tmp_path, cpus=2)
    assert sweep.zoo == "pipeline_ensemble"  # built with its composing models by the tune
    assert sweep.space.instance_count == (1, 2)
    assert sweep.space.dynamic_batching == (False, True)
    # Each composing model keeps its own max_batch_size (at least the ensemble's).
    assert sweep.space.max_batch_size == ()
    assert sweep.space.preferred_batch_sizes == ()
    composing = auto.composing_models(sweep)
    assert composing == ("pipeline_pre", "pipeline_classifier", "pipeline_post")
    assert describe_space(sweep, composing).points == (2 * 2 * 4) ** 3


def test_gpus_give_kind_gpu_counts_per_gpu(zoo_repo: Path) -> None:
    sweep = auto.auto_sweep("mlp", repository=zoo_repo, cpus=16, gpus=2)
    assert sweep.space.instance_kind == ("KIND_GPU",)
    assert sweep.space.instance_count == tuple(range(1, auto.MAX_GPU_INSTANCES + 1))
    capped = auto.auto_sweep("mlp", repository=zoo_repo, cpus=16, gpus=2, max_instances=2)
    assert capped.space.instance_count == (1, 2)
    # perfkit_identity runs on the CPU only: its instances stay on the CPU whatever the GPUs.
    write_identity_model(zoo_repo.parent / "ident-repo")
    cpu_only = auto.auto_sweep("ident", repository=zoo_repo.parent / "ident-repo", cpus=2, gpus=2)
    assert cpu_only.space.instance_kind == ()
    assert cpu_only.space.instance_count == (1, 2)


def test_caps(zoo_repo: Path) -> None:
    many = auto.auto_sweep("mlp", repository=zoo_repo, cpus=32)
    assert many.space.instance_count == (1, 2, 3, 4, 5, 6, 7, 8, 16, 32)
    assert auto.auto_sweep("mlp", repository=zoo_repo, cpus=32, max_instances=3).space.instance_count == (1, 2, 3)  # fmt: skip
    small = auto.auto_sweep("mlp", repository=zoo_repo, cpus=2, max_batch_size=8).space
    assert small.max_batch_size == (1, 2, 4, 8)
    assert small.preferred_batch_sizes == ((),)  # nothing fits max_batch_size 1
    wide = auto.auto_sweep("mlp", repository=zoo_repo, cpus=2, max_batch_size=64).space
    assert wide.max_batch_size == (8, 16, 32, 64)
    assert wide.preferred_batch_sizes == ((), (4, 8))


def test_a_rerun_after_a_write_back_searches_the_same_sizes(tmp_path: Path) -> None:
    # The first tune wrote max_batch_size 8 and kept the original (32) as config.pbtxt.orig.
    model_dir = tmp_path / "mlp"
    model_dir.mkdir()
    original = zoo.model_config(zoo.spec("mlp"))
    (model_dir / "config.pbtxt.orig").write_text(format_config(original))
    (model_dir / "config.pbtxt").write_text(format_config(with_max_batch_size(original, 8)))
    sweep = auto.auto_sweep("mlp", repository=tmp_path, cpus=2)
    assert sweep.space.max_batch_size == (4, 8, 16, 32)


def test_throughput_searches_the_concurrency_under_a_budget(zoo_repo: Path) -> None:
    sweep = auto.auto_sweep(
        "mlp", repository=zoo_repo, cpus=2, objective="throughput", latency_budget_us=50_000
    )
    assert sweep.objectives == (("throughput_infer_per_s", "maximize"),)
    assert sweep.load.concurrency == (1, 2, 4, 8, 16, 32, 64)
    assert sweep.constraints.latency_budget_us == 50_000
    with pytest.raises(ConfigError, match="--latency-budget-ms"):
        auto.auto_sweep("mlp", repository=zoo_repo, cpus=2, objective="throughput")
    pinned = auto.auto_sweep(
        "mlp", repository=zoo_repo, cpus=2, objective="throughput", concurrency=(8,)
    )
    assert pinned.load.concurrency == (8,)
    with pytest.raises(ConfigError, match="--concurrency: the capacity objective"):
        auto.auto_sweep("mlp", repository=zoo_repo, cpus=2, concurrency=(1, 2))


def test_a_model_neither_in_the_repository_nor_in_the_zoo(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not a zoo model.*--model-repository"):
        auto.auto_sweep("nope", repository=tmp_path, cpus=2)


def test_the_backend_knobs_join_the_space(zoo_repo: Path) -> None:
    # The zoo mlp is an ONNX Runtime model: its thread and execution knobs join the space.
    sweep = auto.auto_sweep("mlp", repository=zoo_repo, cpus=2)
    params = dict(sweep.space.parameters)
    assert params["intra_op_thread_count"] == ("1", "2")
    assert params["execution_mode"] == ("0", "1")
    rows = {r.dimension: r.values for r in describe_space(sweep).rows}
    assert rows["parameters.intra_op_thread_count"] == ("1", "2")


# --- the CLI ---


def test_show_space_prints_the_space_and_measures_nothing(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    code, output = invoke("-m", "mlp", "--model-repository", str(repo), "--show-space")
    assert code == 0, output
    assert "mlp: search space" in output
    assert "max_batch_size" in output
    assert "4, 8, 16, 32" in output
    assert "dynamic_batching" in output
    assert "off, on" in output
    assert "objective: capacity (maximize)" in output
    assert "p99 latency budget derived from the default config's unloaded latency" in output
    assert not repo.exists()  # nothing built, no server started


def test_show_space_of_a_sweep_file() -> None:
    code, output = invoke(str(ROOT / "sweeps" / "mlp-cpu.toml"), "--show-space")
    assert code == 0, output
    assert "instance_count" in output
    assert "1, 4, 8, 16" in output
    # 2 counts x 3 sizes x on/off x 2 preferred sets x 3 delays x 4 concurrency levels.
    assert "288 points in the space" in output
    assert "objective: throughput (maximize); p99 latency <= 20 ms" in output


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((), "give a SWEEP file, or -m MODEL"),
        (("SWEEP", "-m", "mlp"), "give either the sweep file or -m MODEL"),
        (("SWEEP", "--max-instances", "2"), "--max-instances shapes the zero-config space"),
        (("-m", "mlp", "--concurrency", "1,x", "--objective", "throughput"), "--concurrency:"),
    ],
)
def test_ambiguous_or_wrong_flags_are_refused(args: tuple[str, ...], error: str) -> None:
    sweep = str(ROOT / "sweeps" / "mlp-cpu.toml")
    code, output = invoke(*(sweep if a == "SWEEP" else a for a in args), "--show-space")
    assert code == 3
    assert error in output


def test_zero_config_tune_beats_the_default_under_the_budget(tmp_path: Path) -> None:
    """Acceptance 1: `perfkit tune -m mlp` on the embedded server, the zoo model built into an
    empty repository. The default (1 instance, no dynamic batching) is measured first at
    concurrency 8, where dynamic batching wins clearly; five variants, so that one slow
    measurement on a shared CI machine does not decide it. The budget is loose: CI shares two
    cores, and the p99 of every config swings with the load."""
    repo, out = tmp_path / "repo", tmp_path / "out"
    code, output = invoke(
        "-m", "mlp", "--model-repository", str(repo), "--objective", "throughput",
        "--latency-budget-ms", "500", "--concurrency", "8", "--trials", "6",
        "--window-ms", "200", "--seed", "1", "--output", str(out),
    )  # fmt: skip
    assert code == 0, output
    cpus, gpus = auto.machine()
    space = auto.auto_sweep(
        "mlp", repository=tmp_path / "empty", cpus=cpus, gpus=gpus, objective="throughput",
        latency_budget_us=500_000, concurrency=(8,),
    )  # fmt: skip
    points = describe_space(space).points  # the config space x the backend's knobs
    assert "mlp: search space" in output
    assert f"{points:,} points in the space" in output

    result = json.loads((out / "results" / "results.json").read_text())
    trials = {t["number"]: t for t in result["trials"]}
    best, default = trials[result["best_trial"]], trials[result["default_trial"]]
    assert best["number"] != default["number"], [  # which trials, and what they measured
        (t["params"], (t["measurement"] or {}).get("throughput_infer_per_s"))
        for t in trials.values()
    ]
    assert best["feasible"]
    assert best["measurement"]["latency"]["p99_us"] <= 500_000
    assert result["gain_pct"] >= result["settings"]["min_gain_pct"]
    assert (
        best["measurement"]["throughput_infer_per_s"]
        > default["measurement"]["throughput_infer_per_s"]
    )
    # Written back, the zoo's original kept.
    written = repo / "mlp" / "config.pbtxt"
    assert result["written_to"] == str(written)
    assert (repo / "mlp" / "config.pbtxt.orig").exists()
    config = load_config(written)
    assert config.HasField("dynamic_batching") or config.instance_group[0].count > 1
    assert written.read_text() == result["best_config_pbtxt"]
