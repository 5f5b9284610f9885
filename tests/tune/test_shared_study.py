"""Two `perfkit tune` workers share one study on a real PostgreSQL server."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from perfkit.tune.records import A_DEFAULT
from perfkit.tune.storage import open_storage
from tests.tune.conftest import (
    ROOT,
    assert_no_variant_measured_twice,
    measured_trials,
    perfkit_cmd,
    write_sweep,
)

TRIALS = 8


@pytest.mark.postgres
def test_two_workers_share_one_study(ident_repo: Path, tmp_path: Path, postgres_url: str) -> None:
    space = (
        "instance_count = [1, 2]\ndynamic_batching = [true, false]\n"
        "max_queue_delay_us = [0, 200, 1000]\n"
    )
    sweep = write_sweep(tmp_path / "s.toml", ident_repo, trials=TRIALS, space=space)
    env = dict(os.environ, COLUMNS="200")
    procs = [
        subprocess.Popen(
            perfkit_cmd(
                "tune",
                str(sweep),
                "--storage",
                postgres_url,
                "--study-name",
                "shared",
                "--output",
                str(tmp_path / f"out{i}"),
                "--no-prune",
            ),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    outputs: list[str] = []
    for proc in procs:
        try:
            raw, _ = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        outputs.append(raw.decode(errors="replace"))
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out

    study = optuna.load_study(study_name="shared", storage=open_storage(postgres_url))
    measured = measured_trials(study)
    # Neither lost nor duplicated: every trial finished, no variant measured twice, and the budget
    # met (one extra at most: both workers may start a last trial at the same moment).
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    assert_no_variant_measured_twice(study)
    assert TRIALS <= len(measured) <= TRIALS + 1
    assert len([t for t in measured if t.user_attrs.get(A_DEFAULT)]) == 1
    workers = {t.user_attrs["worker"] for t in measured}
    assert len(workers) == 2, workers
    numbers = [t.number for t in study.trials]
    assert numbers == list(range(len(numbers)))
