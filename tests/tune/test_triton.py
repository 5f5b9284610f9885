"""`perfkit tune` against a real tritonserver (python backend, explicit model control), end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import tritonclient.grpc as grpcclient
from optuna.trial import TrialState

from perfkit.model_repo.config import config_from_json, load_config
from tests.fixtures.triton import write_identity
from tests.tune.conftest import assert_no_variant_measured_twice, run_perfkit, write_sweep


def test_tune_python_model_on_real_triton(tmp_path: Path, triton_server: Any) -> None:
    repo = tmp_path / "repo"
    write_identity(repo, "pyident", max_batch_size=8, delay_s=0.004)
    server = triton_server(repo)
    space = "dynamic_batching = [true, false]\nmax_queue_delay_us = [0, 500]\n"
    sweep = write_sweep(tmp_path / "s.toml", repo, model="pyident", trials=3, space=space)
    out = tmp_path / "out"
    proc = run_perfkit(
        "tune", str(sweep), "--url", server.grpc_url, "-i", "grpc", "--output", str(out),
        "--study-name", "t",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr

    study = optuna.load_study(study_name="t", storage=f"sqlite:///{out / 'study.db'}")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) >= 2, [(t.state, t.user_attrs.get("reason")) for t in study.trials]
    assert_no_variant_measured_twice(study)
    # 4 ms per execution: batching wins, and the winner is written back and served from disk.
    best = load_config(repo / "pyident" / "config.pbtxt")
    assert best.name == "pyident"
    assert best.backend == "python"
    assert best.HasField("dynamic_batching")
    assert (repo / "pyident" / "config.pbtxt.orig").exists()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    served = config_from_json(client.get_model_config("pyident", as_json=True)["config"])
    client.close()
    assert served.HasField("dynamic_batching")
    assert "the server reloaded the config on disk" in proc.stdout
