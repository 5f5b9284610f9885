"""Helpers for the tuner tests: a batching-friendly identity model and small sweep files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from perfkit.tune.records import A_DUP, A_FAIR, A_KEY, A_MEASURED

ROOT = Path(__file__).resolve().parents[2]

IDENTITY_CONFIG = """name: "ident"
backend: "perfkit_identity"
max_batch_size: 16
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
parameters {{ key: "execute_delay_us" value {{ string_value: "{delay_us}" }} }}
"""


def write_identity_model(repo: Path, delay_us: int = 4000) -> Path:
    """perfkit_identity model "ident": a fixed delay per execution, so dynamic batching pays off."""
    model_dir = repo / "ident"
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(IDENTITY_CONFIG.format(delay_us=delay_us))
    return model_dir


def write_sweep(
    path: Path,
    repo: Path,
    *,
    model: str = "ident",
    space: str = "",
    trials: int = 4,
    sampler: str = "tpe",
    extra: str = "",
) -> Path:
    space = space or (
        "instance_count = [1, 2]\ndynamic_batching = [true, false]\nmax_queue_delay_us = [0, 500]\n"
    )
    path.write_text(
        f"""
[model]
name = "{model}"
repository = "{repo}"

[space]
{space}

[load]
concurrency = [4, 8]
baseline = {{ concurrency = 8 }}

[constraints]
latency_budget_ms = 200

[budget]
trials = {trials}

[measure]
window_ms = 300
max_windows = 4
stability_windows = 2
stability_pct = 50
warmup_requests = 8

[search]
sampler = "{sampler}"
seed = 1
startup_trials = 2
{extra}
"""
    )
    return path


def perfkit_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "perfkit", *args]


def run_perfkit(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run(
        perfkit_cmd(*args), capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


def measured_trials(
    study: optuna.Study, *, with_extra: bool = False
) -> list[optuna.trial.FrozenTrial]:
    """Finished trials that measured a variant (copies and interrupted trials left out), without
    the default's measurement at the best's load (on top of the budget) unless `with_extra`."""
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state.is_finished()
        and t.user_attrs.get(A_MEASURED)
        and A_DUP not in t.user_attrs
        and (with_extra or A_FAIR not in t.user_attrs)
    ]


def assert_no_variant_measured_twice(study: optuna.Study) -> None:
    keys = [t.user_attrs[A_KEY] for t in measured_trials(study, with_extra=True)]
    assert len(keys) == len(set(keys)), f"a variant was measured twice: {sorted(keys)}"


@pytest.fixture
def ident_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    write_identity_model(repo)
    return repo
