"""`perfkit tune` over a TorchScript model (pytorch backend, CPU) on the embedded server: the zoo's
fc_model_pt (variable dims, given by the sweep's shape), a tiny sweep with short windows; the
written-back config keeps the platform and tensors and loads again."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import tritonclient.http as httpclient

from perfkit.model_repo.config import load_config
from perfkit.sweepfile import load_sweep
from tests.tune.conftest import ROOT, run_perfkit

pytest.importorskip("torch")

SWEEP = """
[model]
name = "fc_model_pt"
repository = "{repo}"
zoo = "fc_model_pt"

[server]
startup_timeout_s = 120

[space]
instance_count = [1, 2]
dynamic_batching = [true, false]
max_queue_delay_us = [0, 500]

[load]
concurrency = [2]
shape = ["input__0:8"]
baseline = {{ concurrency = 2 }}

[constraints]
latency_budget_ms = 1000

[budget]
trials = 2

[measure]
window_ms = 300
max_windows = 3
stability_windows = 2
stability_pct = 80
warmup_requests = 4

[search]
sampler = "random"
seed = 3
"""


def test_tune_runs_a_sweep_over_fc_model_pt(tmp_path: Path, perfkit_server) -> None:
    repo = tmp_path / "repo"
    sweep = tmp_path / "fc.toml"
    sweep.write_text(SWEEP.format(repo=repo))
    out = tmp_path / "out"
    proc = run_perfkit("tune", str(sweep), "--output", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr

    with (out / "results" / "metrics-model-inference.csv").open() as fh:
        rows = list(csv.reader(fh))
    assert len(rows) >= 2
    assert all(r[0] == "fc_model_pt" for r in rows[1:])
    variants = sorted((out / "output_model_repository").glob("fc_model_pt_config_*"))
    assert len(variants) >= 2
    for variant in variants:
        config = load_config(variant / "config.pbtxt")
        assert config.platform == "pytorch_libtorch"
        assert [t.name for t in config.input] == ["input__0"]
        assert [t.name for t in config.output] == ["output__0", "output__1"]

    # Whatever won was written back, and a fresh server serves it.
    written = load_config(repo / "fc_model_pt" / "config.pbtxt")
    assert written.platform == "pytorch_libtorch"
    server = perfkit_server(repo, "--model-control-mode=explicit", "--load-model=fc_model_pt")
    assert httpclient.InferenceServerClient(server.http_url).is_model_ready("fc_model_pt")


def test_the_shipped_torch_sweep_names_the_torchscript_resnet50() -> None:
    spec = load_sweep(ROOT / "sweeps" / "resnet50-torch-cpu.toml", base_dir=ROOT)
    assert spec.model == "resnet50_pt"
    assert spec.zoo == "resnet50_pt"
