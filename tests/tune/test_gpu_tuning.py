"""GPU-aware tuning: the instance kind and `gpus` survive every variant, GPU objectives and
constraints from the server's nv_gpu_* metrics (the FAKE NVML's two GPUs on this GPU-less host),
Model Analyzer's metrics-model-gpu.csv, and the GPU metrics kept in the study's storage."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import optuna
import pytest

import perfkit.tune
from perfkit.errors import ConfigError
from perfkit.model_repo.config import (
    format_config,
    instance_kinds,
    instance_summary,
    parse_config,
    with_instances,
)
from perfkit.report import ma_csv
from perfkit.results import TuneResult
from perfkit.sweepfile import ConstraintSpec, LoadSettings, SpaceSpec, parse_sweep
from perfkit.tune.evaluate import Outcome
from perfkit.tune.objective import MissingGpuMetrics, Objective, gpu_metrics
from perfkit.tune.records import record_of
from perfkit.tune.space import SearchSpace, build_variant, check_instances
from perfkit.tune.tuner import LoopSettings, Tuner, make_sampler
from tests.fixtures.fake_nvml import FakeNvml
from tests.report.builders import make_tune, measurement
from tests.tune.conftest import write_sweep

HEAD = """name: "m"
backend: "perfkit_identity"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""
FAKE_GPUS = ["GPU-fake-0", "GPU-fake-1"]


def variants(base_text: str, space: SpaceSpec) -> list[tuple[dict[str, Any], Any]]:
    """Every variant of the space's grid, through config.pbtxt text and back (a round trip)."""
    base = parse_config(base_text)
    out = []
    for point in SearchSpace.from_specs(space, LoadSettings()).points():
        text = format_config(build_variant(base, point))
        out.append((point, parse_config(text)))
    return out


# -- the instance kind and gpus are kept (pure) --------------------------------------------------
def test_kind_auto_stays_kind_auto() -> None:
    base = HEAD + "instance_group [ { count: 1 kind: KIND_AUTO } ]\n"
    for point, v in variants(base, SpaceSpec(instance_count=(1, 2, 4))):
        assert instance_kinds(v) == [(point["instance_count"], "KIND_AUTO", ())]


def test_kind_gpu_keeps_its_gpus_and_count_is_per_gpu() -> None:
    base = HEAD + "instance_group [ { count: 1 kind: KIND_GPU gpus: [ 0, 1 ] } ]\n"
    for point, v in variants(base, SpaceSpec(instance_count=(1, 3))):
        assert instance_kinds(v) == [(point["instance_count"], "KIND_GPU", (0, 1))]
        # Triton places `count` instances on each listed GPU: Model Analyzer's total.
        assert instance_summary(v) == f"{2 * point['instance_count']}:GPU"


def test_no_instance_group_gets_no_kind() -> None:
    # Triton's default is one KIND_AUTO group: a count change must not make it KIND_CPU.
    for point, v in variants(HEAD, SpaceSpec(instance_count=(1, 2))):
        assert instance_kinds(v) == [(point["instance_count"], "KIND_AUTO", ())]
        assert "kind" not in format_config(v)
    # No instance dimension: the config is left without an instance_group.
    assert len(build_variant(parse_config(HEAD), {"max_batch_size": 4}).instance_group) == 0


@pytest.mark.parametrize(
    ("kind", "gpus"),
    [("KIND_GPU", (0, 1)), ("KIND_AUTO", (0, 1)), ("KIND_CPU", ()), ("KIND_MODEL", ())],
)
def test_instance_kind_dimension(kind: str, gpus: tuple[int, ...]) -> None:
    base = HEAD + "instance_group [ { count: 2 kind: KIND_GPU gpus: [ 0, 1 ] } ]\n"
    space = SpaceSpec(instance_kind=("KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"))
    found = {p["instance_kind"]: v for p, v in variants(base, space)}
    # The count is kept; gpus too, except on kinds Triton refuses them for.
    assert instance_kinds(found[kind]) == [(2, kind, gpus)]


def test_several_groups_count_applies_to_each_and_kind_is_refused() -> None:
    base_text = HEAD + (
        'instance_group [ { name: "g" count: 1 kind: KIND_GPU gpus: [ 1 ] },'
        " { count: 2 kind: KIND_CPU } ]\n"
    )
    v = build_variant(parse_config(base_text), {"instance_count": 3})
    assert instance_kinds(v) == [(3, "KIND_GPU", (1,)), (3, "KIND_CPU", ())]
    assert v.instance_group[0].name == "g"
    assert instance_summary(v, gpu_count=2) == "3:GPU + 3:CPU"
    check_instances(parse_config(base_text), SpaceSpec(instance_count=(1, 2)))
    with pytest.raises(ConfigError, match="2 instance groups"):
        check_instances(parse_config(base_text), SpaceSpec(instance_kind=("KIND_GPU",)))


def test_with_instances_keeps_what_it_is_not_given() -> None:
    base = parse_config(HEAD + "instance_group [ { count: 1 kind: KIND_GPU gpus: [ 1 ] } ]\n")
    assert instance_kinds(with_instances(base, 2)) == [(2, "KIND_GPU", (1,))]
    assert instance_kinds(with_instances(base, gpus=[0])) == [(1, "KIND_GPU", (0,))]
    assert instance_kinds(base) == [(1, "KIND_GPU", (1,))]  # not mutated


def test_instance_summary_counts_gpus_as_model_analyzer() -> None:
    auto = parse_config(HEAD + "instance_group [ { count: 2 } ]\n")
    assert instance_summary(auto) == "2:CPU"  # no GPU: KIND_AUTO is CPU
    assert instance_summary(auto, gpu_count=2) == "4:GPU"  # count per GPU
    assert instance_summary(parse_config(HEAD)) == "1:CPU"


# -- GPU objectives and constraints (pure) -------------------------------------------------------
GPU_SWEEP = """
[model]
name = "m"
[server]
url = "localhost:8001"
metrics_url = "localhost:9002/metrics"
[objectives]
throughput_per_watt = "maximize"
gpu_used_memory = "minimize"
[constraints]
max_gpu_memory_mb = 4000
max_gpu_power_w = 600.5
"""


def test_sweep_gpu_objectives_and_constraints() -> None:
    sweep = parse_sweep(GPU_SWEEP, "g.toml")
    assert sweep.objectives == (
        ("throughput_per_watt", "maximize"),
        ("gpu_used_memory_mb", "minimize"),
    )
    assert sweep.constraints.max_gpu_memory_mb == 4000
    assert sweep.constraints.max_gpu_power_w == 600.5
    assert sweep.metrics_url == "localhost:9002/metrics"
    assert sweep.gpu_metrics_needed() == (
        "gpu_used_memory",
        "throughput_per_watt",
        "constraints.max_gpu_memory_mb",
        "constraints.max_gpu_power_w",
    )
    assert parse_sweep('[model]\nname = "m"\n').gpu_metrics_needed() == ()
    with pytest.raises(ConfigError, match=r"g.toml:constraints.max_gpu_memory_mb: must be >= 0"):
        parse_sweep(GPU_SWEEP.replace("= 4000", "= -1"), "g.toml")
    with pytest.raises(ConfigError, match=r"objectives.gpu_watts: unknown objective.*gpu_power"):
        parse_sweep('[model]\nname = "m"\n[objectives]\ngpu_watts = "minimize"\n', "g.toml")


PER_GPU = {
    "gpu_utilization": {"GPU-a": 0.5, "GPU-b": 0.7},
    "gpu_power_usage": {"GPU-a": 150.0, "GPU-b": 250.0},
    "gpu_memory_used_bytes": {"GPU-a": 3.5e9, "GPU-b": 1.2e9},
    "gpu_memory_total_bytes": {"GPU-a": 8e9, "GPU-b": 8e9},
}


def test_gpu_metrics_over_the_gpus() -> None:
    g = gpu_metrics(PER_GPU, throughput=800.0)
    assert g["gpu_used_memory_mb"] == 3500  # the fullest GPU
    assert g["gpu_free_memory_mb"] == 4500  # the emptiest GPU's room
    assert g["gpu_utilization_pct"] == pytest.approx(60.0)
    assert g["gpu_power_w"] == 400.0  # summed
    assert g["throughput_per_watt"] == 2.0
    empty: dict[str, dict[str, float]] = {k: {} for k in PER_GPU}
    assert gpu_metrics(empty, 800.0) == {}
    assert gpu_metrics({}, 800.0) == {}


def test_gpu_constraints_and_missing_gpu_metrics() -> None:
    objective = Objective(
        (("throughput_per_watt", "maximize"),),
        ConstraintSpec(max_gpu_memory_mb=3000.0, max_gpu_power_w=500.0),
    )
    metrics = {"throughput_infer_per_s": 800.0, **gpu_metrics(PER_GPU, 800.0)}
    assert objective.bounds() == {"gpu_used_memory_mb": 3000.0, "gpu_power_w": 500.0}
    violations = objective.violations(metrics)
    assert violations["gpu_used_memory_mb"] == pytest.approx(500 / 3000)  # over
    assert violations["gpu_power_w"] == pytest.approx(-100 / 500)  # under
    assert not objective.feasible(metrics)
    assert objective.values(metrics) == [2.0]
    objective.check_gpu(metrics)
    with pytest.raises(MissingGpuMetrics, match="throughput_per_watt, gpu_used_memory_mb"):
        objective.check_gpu({"throughput_infer_per_s": 800.0})
    # A CPU-only objective never asks for GPU metrics.
    Objective((("throughput_infer_per_s", "maximize"),), ConstraintSpec()).check_gpu({})


def test_no_gpu_metrics_no_gpu_csv(tmp_path: Path) -> None:
    # Model Analyzer writes no metrics-model-gpu.csv without GPU rows; a stale one goes.
    stale = tmp_path / ma_csv.GPU_FILENAME
    stale.write_text("old")
    assert ma_csv.gpu_rows(make_tune()) == []
    assert ma_csv.write_gpu(make_tune(), tmp_path) is None
    assert not stale.exists()


# -- end to end on the embedded server with the FAKE NVML ----------------------------------------
def gpu_sweep(tmp_path: Path, repo: Path, *, max_mb: float, trials: int = 2) -> Path:
    """The identity model's small sweep, ranked by throughput per watt; with `max_mb`, a GPU
    memory bound too (min_gain_pct 0: the best is the top trial, as measured)."""
    path = write_sweep(
        tmp_path / "gpu.toml",
        repo,
        trials=trials,
        space="instance_count = [1, 2]\ndynamic_batching = [true, false]\n",
        extra='min_gain_pct = 0\n\n[objectives]\nthroughput_per_watt = "maximize"\n',
    )
    if max_mb:
        text = path.read_text().replace(
            "latency_budget_ms = 200", f"latency_budget_ms = 200\nmax_gpu_memory_mb = {max_mb:g}"
        )
        path.write_text(text)
    return path


def run_gpu_tune(
    tmp_path: Path, repo: Path, fake_nvml: FakeNvml, *, max_mb: float, trials: int, out: Path
) -> TuneResult:
    path = gpu_sweep(tmp_path, repo, max_mb=max_mb, trials=trials)
    sweep = perfkit.tune.load_sweep(path).with_overrides(output=out, study_name="gpu")
    return perfkit.tune.run(sweep, dry_run=True, server_env=fake_nvml.env())


def gpu_csv(out: Path) -> list[dict[str, str]]:
    with (out / "results" / ma_csv.GPU_FILENAME).open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == ma_csv.GPU_HEADER
        return list(reader)


def test_gpu_memory_bound_the_fake_exceeds_on_a_server_at_a_url(
    ident_repo: Path, tmp_path: Path, fake_nvml: FakeNvml, perfkit_server: Any
) -> None:
    # A server the tune did not start ([server] url and metrics_url), with the FAKE GPUs, which
    # use 3-4 GiB and 4-5 GiB: a 1000 MB bound fails every trial.
    server = perfkit_server(
        ident_repo, "--model-control-mode=explicit", "--load-model=ident", env=fake_nvml.env()
    )
    path = gpu_sweep(tmp_path, ident_repo, max_mb=1000)
    text = path.read_text().replace(
        "[constraints]",
        f'[server]\nurl = "{server.grpc_url}"\nmetrics_url = "{server.metrics_url}"\n\n'
        "[constraints]",
    )
    path.write_text(text)
    out = tmp_path / "out"
    sweep = perfkit.tune.load_sweep(path).with_overrides(output=out, study_name="gpu")
    result = perfkit.tune.run(sweep, dry_run=True)
    complete = [t for t in result.trials if t.state == "complete"]
    assert complete
    for t in complete:
        assert not t.feasible
        assert t.constraints["gpu_used_memory_mb"] > 0
    assert result.best_trial is None
    rows = gpu_csv(out)
    assert {r["Satisfies Constraints"] for r in rows} == {"No"}
    assert {r["GPU UUID"] for r in rows} == set(FAKE_GPUS)


def test_throughput_per_watt_under_a_gpu_memory_bound_and_resume(
    ident_repo: Path, tmp_path: Path, fake_nvml: FakeNvml
) -> None:
    out = tmp_path / "out"
    first = run_gpu_tune(tmp_path, ident_repo, fake_nvml, max_mb=100_000, trials=2, out=out)
    complete = [t for t in first.trials if t.state == "complete"]
    assert len(complete) >= 2
    for t in complete:
        m = t.measurement
        assert m is not None
        assert t.feasible
        # Every trial recorded both FAKE GPUs' metrics, in Triton's units.
        for family in ("gpu_utilization", "gpu_power_usage", "gpu_memory_used_bytes"):
            assert sorted(m.metrics[family]) == FAKE_GPUS
        assert 0 < m.metrics["gpu_utilization"]["GPU-fake-0"] <= 1
        # The objective: throughput over the mean power summed over the GPUs.
        watts = sum(m.metrics["gpu_power_usage"].values())
        assert 150 <= watts <= 800
        assert t.objectives["throughput_per_watt"] == pytest.approx(
            m.throughput_infer_per_s / watts
        )
    best = max(complete, key=lambda t: t.objectives["throughput_per_watt"])
    assert first.best_trial == best.number

    # Model Analyzer's GPU table: one row per complete trial and GPU.
    rows = gpu_csv(out)
    assert len(rows) == 2 * len(complete)
    for t in complete:
        assert t.measurement is not None
        level = str(int(t.measurement.level))
        # The default config has a row per load it was measured at.
        mine = [
            r
            for r in rows
            if r["Model Config Path"] == t.variant_name and r["Concurrency"] == level
        ]
        assert sorted(r["GPU UUID"] for r in mine) == FAKE_GPUS
        used = t.measurement.metrics["gpu_memory_used_bytes"]
        for r in mine:
            assert r["Model"] == "ident"
            assert r["Satisfies Constraints"] == "Yes"
            assert float(r["GPU Memory Usage (MB)"]) == used[r["GPU UUID"]] // 1e6
            assert 0 < float(r["GPU Utilization (%)"]) <= 100
            assert r["Instance Group"].endswith(":CPU")

    # The GPU metrics live in the study's storage: read back, and kept by a resumed study.
    study = optuna.load_study(study_name="gpu", storage=f"sqlite:///{out / 'study.db'}")
    objective = Objective((("throughput_per_watt", "maximize"),), ConstraintSpec())
    stored = {t.number: record_of(t, objective) for t in study.get_trials()}
    for t in complete:
        again = stored[t.number]
        assert again is not None
        assert again.measurement is not None
        assert again.measurement.metrics == t.measurement.metrics  # type: ignore[union-attr]
        attrs = study.trials[t.number].user_attrs["metrics"]
        assert attrs["gpu_power_w"] == pytest.approx(
            sum(t.measurement.metrics["gpu_power_usage"].values())  # type: ignore[union-attr]
        )
    resumed = run_gpu_tune(tmp_path, ident_repo, fake_nvml, max_mb=100_000, trials=3, out=out)
    for t in complete:
        again = next(r for r in resumed.trials if r.number == t.number)
        assert again.measurement is not None
        assert again.measurement.metrics == t.measurement.metrics  # type: ignore[union-attr]
        assert again.objectives == t.objectives


def test_gpu_objective_without_gpu_metrics_is_refused_before_any_trial(
    ident_repo: Path, tmp_path: Path
) -> None:
    # No FAKE NVML: the embedded server exports no nv_gpu_* family on this GPU-less host.
    path = gpu_sweep(tmp_path, ident_repo, max_mb=0)
    sweep = perfkit.tune.load_sweep(path).with_overrides(output=tmp_path / "out")
    trials: list[object] = []
    with pytest.raises(ConfigError, match=r"throughput_per_watt needs GPU metrics.*nv_gpu_"):
        perfkit.tune.run(sweep, on_trial=trials.append)
    assert trials == []


class NoGpuEvaluator:
    """An evaluator whose measurements carry no GPU metrics (a server that stopped exporting
    them mid-study): the tuner's seam, no server needed."""

    def evaluate(self, config: Any, params: Any, watch: Any) -> Outcome:
        return Outcome(measurement=measurement(4, 500.0, 2000.0), window_s=1.0)


def test_a_trial_without_gpu_metrics_fails_with_the_reason() -> None:
    space = SearchSpace.from_specs(SpaceSpec(instance_count=(1, 2)), LoadSettings())
    objective = Objective(
        (("throughput_infer_per_s", "maximize"),), ConstraintSpec(max_gpu_power_w=300.0)
    )
    settings = LoopSettings(model="m", study_name="nogpu", trials=2, sampler="grid", seed=0)
    study = optuna.create_study(
        study_name="nogpu", direction="maximize", sampler=make_sampler(settings, space)
    )
    records: list[Any] = []
    Tuner(
        settings=settings, space=space, objective=objective, base_config=parse_config(HEAD),
        baseline_load=space.baseline_load(LoadSettings()), study=study, created=True,
        evaluator=NoGpuEvaluator(), on_trial=records.append,
    ).run()  # fmt: skip
    assert len(records) == 2
    for record in records:
        assert record.state == "failed"
        assert not record.feasible
        assert "no GPU metrics for gpu_power_w" in record.reason


def test_gpu_metrics_from_nvml_here_when_a_local_server_exports_none(
    ident_repo: Path, tmp_path: Path, fake_nvml: FakeNvml
) -> None:
    # The embedded server exports no nv_gpu_* (no FAKE NVML in its environment) but runs on this
    # host, where NVML (the FAKE, in this process) shows two GPUs: the trials read it directly.
    path = gpu_sweep(tmp_path, ident_repo, max_mb=0, trials=1)
    out = tmp_path / "out"
    sweep = perfkit.tune.load_sweep(path).with_overrides(output=out)
    notes: list[str] = []
    with fake_nvml.installed():
        result = perfkit.tune.run(sweep, dry_run=True, on_message=notes.append)
    assert any("from NVML on this host" in n for n in notes), notes
    (default,) = (t for t in result.trials if t.state == "complete")
    assert default.measurement is not None
    assert sorted(default.measurement.metrics["gpu_power_usage"]) == FAKE_GPUS
    assert default.objectives["throughput_per_watt"] > 0
    assert {r["GPU UUID"] for r in gpu_csv(out)} == set(FAKE_GPUS)


# -- on a real GPU (make gpu-check) --------------------------------------------------------------
@pytest.mark.gpu
def test_tune_on_a_real_gpu_keeps_kind_auto_and_records_its_gpus(
    tmp_path: Path, zoo_cache_dir: Path
) -> None:
    from tests.gpu.conftest import REQUIRED, _find_gpus
    from tests.gpu.helpers import build_zoo

    host = _find_gpus()
    if isinstance(host, str):
        if REQUIRED:
            pytest.fail(f"make gpu-check needs a GPU: {host}", pytrace=False)
        pytest.skip(f"no usable NVIDIA GPU: {host}")
    repo = tmp_path / "repo"
    build_zoo("fc_model_pt", repo, zoo_cache_dir)  # the seed's config: no instance_group
    budget_mb = min(host.memory_total) // 1e6
    path = tmp_path / "gpu.toml"
    path.write_text(
        f"""
[model]
name = "fc_model_pt"
repository = "{repo}"
[server]
startup_timeout_s = 180
[space]
instance_count = [1, 2]
[load]
concurrency = [8]
shape = ["input__0:16"]
[objectives]
throughput_per_watt = "maximize"
[constraints]
max_gpu_memory_mb = {budget_mb:g}
[budget]
trials = 2
[measure]
window_ms = 500
max_windows = 4
stability_windows = 2
stability_pct = 50
[search]
sampler = "grid"
min_gain_pct = 0
"""
    )
    out = tmp_path / "out"
    sweep = perfkit.tune.load_sweep(path).with_overrides(output=out)
    result = perfkit.tune.run(sweep, dry_run=True)
    complete = [t for t in result.trials if t.state == "complete"]
    assert len(complete) == 2, [(t.variant_name, t.reason) for t in result.trials]
    for t in complete:
        # The config keeps Triton's default kind: the server put the instances on its GPUs.
        counts = [count for count, kind, gpus in instance_kinds(parse_config(t.config_pbtxt))]
        kinds = {(kind, gpus) for _, kind, gpus in instance_kinds(parse_config(t.config_pbtxt))}
        assert kinds == {("KIND_AUTO", ())}
        assert counts == [t.params.get("instance_count", 1)]
        assert t.measurement is not None
        assert sorted(t.measurement.metrics["gpu_power_usage"]) == sorted(host.uuids)
        assert t.objectives["throughput_per_watt"] > 0
        assert t.feasible
    rows = gpu_csv(out)
    assert len(rows) == 2 * host.count
    assert {r["GPU UUID"] for r in rows} == set(host.uuids)
    assert all(r["Instance Group"].endswith(":GPU") for r in rows)


def test_summary_sentence_says_gpu_bounds_are_maxima() -> None:
    from perfkit.report.summary import summary_sentence
    from tests.report.builders import replace

    bounds = {"p99_latency_us": 10_000.0, "gpu_used_memory_mb": 4000.0, "gpu_power_w": 300.0}
    text = summary_sentence(replace(make_tune(), constraint_bounds=bounds))
    assert "(p99 latency ≤ 10 ms, GPU memory ≤ 4000 MB, GPU power ≤ 300 W)" in text
