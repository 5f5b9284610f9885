"""Issue #10 finding 10: a killed trial's settings are retried once, every time.

A variant whose measurement is cut short by a SIGKILL of `perfkit tune` is measured again first
thing by the next run; when that retry is killed too, the variant is recorded as failed ("killed
twice") and no later run measures it again. Real subprocesses, real SIGKILL, real resume.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from perfkit.tune.records import A_DEFAULT, A_DUP, A_KEY, A_NAME
from perfkit.tune.storage import KILLED_ATTR, REASON_ATTR
from tests.tune.conftest import (
    ROOT,
    assert_no_variant_measured_twice,
    measured_trials,
    perfkit_cmd,
    run_perfkit,
    write_sweep,
)

TRIALS = 6


def _measuring(study: optuna.Study, key: str | None, after: int) -> FrozenTrial | None:
    """A RUNNING trial numbered above `after`, of a variant (not the default), that has begun
    measuring."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number <= after:
            continue  # left RUNNING by the killed run, until this run's recovery fails it
        attrs = t.user_attrs
        began = A_NAME in attrs and not attrs.get(A_DEFAULT) and A_DUP not in attrs
        if began and (key is None or attrs.get(A_KEY) == key):
            return t
    return None


def _kill_while_measuring(
    args: list[str],
    storage: str,
    log: Path,
    key: str | None = None,
    after: int = -1,
    timeout_s: float = 180,
) -> tuple[str, int]:
    """Start `perfkit tune`, SIGKILL it while it measures variant `key` (any variant but the
    default when None) in a trial numbered above `after`, check that trial was left mid-measurement; return the variant's key and the trial's number.
    A bounded poll of the study: the one place that state shows."""
    with (
        log.open("wb") as out,
        subprocess.Popen(
            perfkit_cmd(*args), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        ) as proc,
    ):
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                assert proc.poll() is None, (
                    f"perfkit tune ended without measuring {key or 'a variant'}:\n"
                    + log.read_text(errors="replace")
                )
                assert time.monotonic() < deadline, f"nothing to kill within {timeout_s} s"
                # A first run: read the study once the run has reported two trials (the default
                # and one variant), so the sampler's first draws are behind. A resume (`key`
                # given) measures that variant first thing.
                trial = None
                reported = re.findall(rb"^trial +\d+ ", log.read_bytes(), re.MULTILINE)
                if key is not None or len(reported) >= 2:
                    trial = _measuring(
                        optuna.load_study(study_name="t", storage=storage), key, after
                    )
                if trial is not None:
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.02)  # polling interval of a condition, not an ordering
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
    study = optuna.load_study(study_name="t", storage=storage)
    left = study.trials[trial.number]
    # The kill landed mid-measurement (a tell a few ms before the kill would be a lost race).
    assert left.state == TrialState.RUNNING, (left.state, log.read_text(errors="replace"))
    if key is not None:
        # "First thing": the resumed run's first trial (nothing else ran in between).
        assert trial.number == after + 1, (trial.number, after)
    return str(trial.user_attrs[A_KEY]), trial.number


def _attempts(study: optuna.Study, key: str) -> list[FrozenTrial]:
    """The trials that began measuring `key` (copies left out), in order."""
    return [
        t for t in study.trials if t.user_attrs.get(A_KEY) == key and A_NAME in t.user_attrs
        if A_DUP not in t.user_attrs
    ]  # fmt: skip


def _runs(ident_repo: Path, tmp_path: Path, n: int) -> tuple[list[list[str]], str]:
    """The `perfkit tune` arguments of `n` runs of one study, and its storage URL. Each run has its
    own sampler seed: a seeded sampler replays its draws on resume and may draw the killed variant
    again by itself; only the kill rule must bring it back."""
    # 32 points: a sampler that draws the killed variant again by chance is unlikely.
    space = "instance_count = [1, 2]\nmax_queue_delay_us = [0, 100, 200, 300, 400, 500, 600, 700]\n"
    out = tmp_path / "out"
    runs = []
    for i in range(n):
        sweep = write_sweep(tmp_path / f"s{i}.toml", ident_repo, space=space, trials=TRIALS)
        text = sweep.read_text().replace("seed = 1", f"seed = {11 + i}")
        # Windows long enough that a kill sent once the poll saw a variant measuring lands before
        # its tell, even when loading the study for the poll is slow on a loaded machine.
        sweep.write_text(text.replace("window_ms = 300", "window_ms = 600"))
        runs.append(["tune", str(sweep), "--output", str(out), "--study-name", "t", "--no-prune"])
    return runs, f"sqlite:///{out / 'study.db'}"


def _reason(t: FrozenTrial) -> Any:
    return t.user_attrs.get(REASON_ATTR, "")


def test_a_killed_variant_is_measured_again_once(ident_repo: Path, tmp_path: Path) -> None:
    runs, storage = _runs(ident_repo, tmp_path, 2)
    key, _ = _kill_while_measuring(runs[0], storage, tmp_path / "run1.log")

    proc = run_perfkit(*runs[1])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = optuna.load_study(study_name="t", storage=storage)
    killed, retry = _attempts(study, key)  # exactly two attempts
    assert killed.state == TrialState.FAIL
    assert killed.user_attrs.get(KILLED_ATTR) is True
    assert "measured again" in _reason(killed)
    assert retry.state == TrialState.COMPLETE
    # The retry came first: no variant was measured in the second run before it.
    assert retry.number == killed.number + 1
    assert_no_variant_measured_twice(study)
    assert len(measured_trials(study)) == TRIALS


def test_a_variant_killed_twice_is_failed_and_not_retried(ident_repo: Path, tmp_path: Path) -> None:
    runs, storage = _runs(ident_repo, tmp_path, 3)
    key, number = _kill_while_measuring(runs[0], storage, tmp_path / "run1.log")
    # The next run measures that variant again first thing: kill it there too.
    _kill_while_measuring(runs[1], storage, tmp_path / "run2.log", key=key, after=number)

    proc = run_perfkit(*runs[2])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = optuna.load_study(study_name="t", storage=storage)
    first, second = _attempts(study, key)  # no third attempt
    assert first.state == second.state == TrialState.FAIL
    assert "measured again" in _reason(first)
    assert "killed twice" in _reason(second)
    # The second kill is the variant's result: it counts as measured, so it is never re-measured.
    assert second in measured_trials(study)
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert_no_variant_measured_twice(study)
    assert len(measured_trials(study)) == TRIALS
