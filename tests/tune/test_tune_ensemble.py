"""`perfkit tune` on an ensemble (issue #13, acceptance 6): the zoo pipeline is tuned as one unit.

The search space is its composing models' dimensions (`pipeline_pre.instance_count`, ...), a trial
loads every composing model's variant and measures the ensemble end to end, and the winner's
configs go into the composing models' directories. End to end on a real tritonserver (python
models; its ONNX step run by onnxruntime inside a python model, as the wheel has no onnxruntime
backend), and on the embedded perfkit_server once it runs python models and ensembles.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import tritonclient.grpc as grpcclient

from perfkit import zoo
from perfkit.errors import ConfigError
from perfkit.model_repo.config import config_from_json, load_config, parse_config
from perfkit.sweepfile import LoadSettings, MeasureSettings, SpaceSpec, load_sweep
from perfkit.tune import run as tune_run
from perfkit.tune.ensemble import (
    PipelineEvaluator,
    PipelineVariants,
    load_pipeline,
    pipeline_space,
    step_texts,
    write_back,
)
from perfkit.tune.space import describe
from perfkit.zoo._pipeline import STEPS, reference
from tests.tune.conftest import assert_no_variant_measured_twice
from tests.zoo.test_pipeline_zoo import _onnx_step_as_python

ENSEMBLE = "pipeline_ensemble"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    zoo.build(ENSEMBLE, repo)
    return repo


def test_space_is_each_composing_models_dimensions(repo: Path) -> None:
    pipeline = load_pipeline(repo, ENSEMBLE)
    assert pipeline is not None
    assert [name for name, _ in pipeline.steps] == list(STEPS)
    space = pipeline_space(
        pipeline,
        SpaceSpec(instance_count=(1, 2), dynamic_batching=(True, False), max_queue_delay_us=(0,)),
        LoadSettings(concurrency=(2, 4)),
    )
    names = [d.name for d in space.dims]
    assert names == [
        *(f"{step}.{dim}" for step in STEPS for dim in ("instance_count", "dynamic_batching")),
        "concurrency",
    ]
    assert space.fixed == {
        **{f"{step}.max_queue_delay_us": 0 for step in STEPS},
        "batch_size": 1,
    }
    assert space.size() == 2**7


def test_a_variant_changes_each_composing_model_apart(repo: Path) -> None:
    pipeline = load_pipeline(repo, ENSEMBLE)
    assert pipeline is not None
    variants = PipelineVariants()
    params: dict[str, Any] = {
        "pipeline_pre.instance_count": 2,
        "pipeline_post.dynamic_batching": False,
        "concurrency": 4,
    }
    variant = variants.build(pipeline, params)
    configs = dict(variant.steps)
    assert [g.count for g in configs["pipeline_pre"].instance_group] == [2]
    assert not configs["pipeline_post"].HasField("dynamic_batching")
    assert configs["pipeline_classifier"] == dict(pipeline.steps)["pipeline_classifier"]
    assert variant.ensemble == pipeline.ensemble
    assert variants.key(variant, params) != variants.key(pipeline, params)
    assert variants.key(variant, params).endswith("/concurrency=4")
    assert describe(params) == "pipeline_post[no-dyn] pipeline_pre[2] c=4"
    # The text is the ensemble's valid config.pbtxt, the composing models' configs inside it.
    text = variants.text(variant)
    assert parse_config(text) == pipeline.ensemble
    blocks = step_texts(text)
    assert {name: parse_config(t) for name, t in blocks.items()} == configs


def test_sweeps_an_ensemble_cannot_take_are_refused(repo: Path, tmp_path: Path) -> None:
    pipeline = load_pipeline(repo, ENSEMBLE)
    assert pipeline is not None
    with pytest.raises(ConfigError, match=r"space\.max_batch_size"):
        pipeline_space(pipeline, SpaceSpec(max_batch_size=(4, 8)), LoadSettings())
    assert load_pipeline(repo, "pipeline_pre") is None  # not an ensemble: tuned as a model
    (repo / "pipeline_post" / "config.pbtxt").unlink()
    with pytest.raises(ConfigError, match="'pipeline_post', which has no"):
        load_pipeline(repo, ENSEMBLE)


def _sweep(path: Path, repo: Path, url: str | None) -> Path:
    server = f'[server]\nurl = "{url}"\nprotocol = "grpc"\n' if url else ""
    path.write_text(
        f"""
[model]
name = "{ENSEMBLE}"
repository = "{repo}"

{server}
[space]
instance_count = [1, 2]
dynamic_batching = [true, false]

[load]
concurrency = [4]

[budget]
trials = 3

[measure]
window_ms = 300
max_windows = 4
stability_windows = 2
stability_pct = 50
warmup_requests = 8

[search]
sampler = "random"
seed = 1
min_gain_pct = 0
# Every variant measured to the end: the checks need two measured trials, and on a loaded CI
# machine a variant's first windows can fall below half the default's and be pruned.
prune = false
"""
    )
    return path


def _tune_and_check(
    repo: Path, tmp_path: Path, url: str | None, served: Callable[[], None] = lambda: None
) -> None:
    """Tune, check the study and the write-back, `served()` (what the server serves now), then
    write a measured non-default variant back and check every composing model got its config."""
    out = tmp_path / "out"
    sweep = dataclasses.replace(load_sweep(_sweep(tmp_path / "s.toml", repo, url)), output=out)
    pipeline = load_pipeline(repo, ENSEMBLE)
    assert pipeline is not None
    result = tune_run(sweep)

    study = optuna.load_study(study_name=result.study_name, storage=f"sqlite:///{out / 'study.db'}")
    assert_no_variant_measured_twice(study)
    measured = [t for t in result.trials if t.measurement is not None]
    assert len(measured) >= 2, [(t.number, t.reason) for t in result.trials]
    searched = {k for t in result.trials for k in t.params}
    assert {f"{step}.instance_count" for step in STEPS} <= searched
    assert all(t.measurement and t.measurement.throughput_infer_per_s > 0 for t in measured)

    best = result.best_trial
    if best is not None and best != result.default_trial:
        # The winner went into every composing model's directory.
        blocks = step_texts(result.best_config_pbtxt or "")
        for step in STEPS:
            assert load_config(repo / step / "config.pbtxt") == parse_config(blocks[step])
    else:
        for step in STEPS:
            assert not (repo / step / "config.pbtxt.orig").exists()
    served()
    # Whatever won: writing a variant back writes each composing model's config.pbtxt.
    other = next(t for t in measured if t.number != result.default_trial)
    chosen = dataclasses.replace(
        result, best_trial=other.number, best_config_pbtxt=other.config_pbtxt
    )
    written = write_back(pipeline, chosen, repo / ENSEMBLE, dry_run=False)
    blocks = step_texts(other.config_pbtxt)
    for step in STEPS:
        assert load_config(repo / step / "config.pbtxt") == parse_config(blocks[step])
    assert written.reason.startswith("pipeline_pre: ")
    assert load_config(repo / ENSEMBLE / "config.pbtxt") == pipeline.ensemble


def test_tune_the_pipeline_ensemble_on_real_triton(
    repo: Path, tmp_path: Path, triton_server: Any
) -> None:
    _onnx_step_as_python(repo)
    server = triton_server(repo, load_models=[ENSEMBLE])

    def serves_the_configs_on_disk() -> None:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            for step in STEPS:
                config = client.get_model_config(step, as_json=True)["config"]
                on_disk = load_config(repo / step / "config.pbtxt")
                assert config_from_json(config).HasField("dynamic_batching") == on_disk.HasField(
                    "dynamic_batching"
                )
                assert [g["count"] for g in config["instance_group"]] == [
                    g.count for g in on_disk.instance_group
                ]
        finally:
            client.close()

    _tune_and_check(repo, tmp_path, server.grpc_url, serves_the_configs_on_disk)

    # A trial's load: every composing model serves its variant, the ensemble serves through them.
    pipeline = load_pipeline(repo, ENSEMBLE)
    assert pipeline is not None
    variant = PipelineVariants().build(
        pipeline, {f"{step}.instance_count": 2 for step in STEPS} | {"concurrency": 1}
    )
    evaluator = PipelineEvaluator(
        pipeline=pipeline, url=server.grpc_url, protocol="grpc", model=ENSEMBLE,
        load=LoadSettings(), measure=MeasureSettings(),
    )  # fmt: skip
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        evaluator.load_variant(variant)
        for step in STEPS:
            config = client.get_model_config(step, as_json=True)["config"]
            assert [g["count"] for g in config["instance_group"]] == [2], step
        image = grpcclient.InferInput("IMAGE", [1, 4, 4, 3], "UINT8")
        image.set_data_from_numpy(np.zeros((1, 4, 4, 3), np.uint8))
        classes = client.infer(ENSEMBLE, [image]).as_numpy("CLASSES")
        np.testing.assert_array_equal(classes, reference(np.zeros((1, 4, 4, 3), np.uint8))[1])
    finally:
        client.close()
        evaluator.close()


def test_tune_the_pipeline_ensemble_on_the_embedded_server(repo: Path, tmp_path: Path) -> None:
    from perfkit_server.backends import known_backend

    if not known_backend("python"):
        pytest.skip("perfkit_server has no python backend yet (issue #13, merged separately)")
    _tune_and_check(repo, tmp_path, None)


def test_the_shipped_pipeline_sweep_searches_each_composing_model(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    sweep = load_sweep(root / "sweeps" / "pipeline-ensemble-cpu.toml", base_dir=tmp_path)
    assert (sweep.model, sweep.zoo) == (ENSEMBLE, ENSEMBLE)
    zoo.build(ENSEMBLE, sweep.repository)
    pipeline = load_pipeline(sweep.repository, sweep.model)
    assert pipeline is not None
    names = {d.name for d in pipeline_space(pipeline, sweep.space, sweep.load).dims}
    assert {f"{step}.instance_count" for step in STEPS} <= names
    assert {f"{step}.dynamic_batching" for step in STEPS} <= names
