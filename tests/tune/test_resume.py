"""A tune interrupted by SIGINT or SIGKILL resumes on rerun without repeating finished trials."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from tests.launch.test_dies_with_perfkit import assert_gone
from tests.tune.conftest import (
    ROOT,
    assert_no_variant_measured_twice,
    measured_trials,
    perfkit_cmd,
    run_perfkit,
    write_sweep,
)

TRIALS = 6


def _snapshot(study: optuna.Study) -> dict[int, tuple[str, tuple[float, ...] | None]]:
    return {
        t.number: (t.state.name, None if t.values is None else tuple(t.values))
        for t in measured_trials(study)
    }


def _wait_for_trials(proc: subprocess.Popen[bytes], n: int, timeout: float = 120) -> bytes:
    """The child's output until it has reported `n` finished trials ("trial   N ..." lines):
    select on its pipe, so the wait ends with the event."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while len(re.findall(rb"^trial +\d+ ", seen, re.MULTILINE)) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"fewer than {n} trials finished within {timeout} s: {seen!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        assert chunk, f"perfkit tune ended before it could be interrupted: {seen!r}"
        seen += chunk
    return seen


def _wait_for_running(storage: str, timeout: float = 60) -> None:
    """Until the study has a RUNNING trial (the next one, asked right after the last report):
    a bounded poll of the study, the one place that state shows."""
    study = optuna.load_study(study_name="t", storage=storage)
    deadline = time.monotonic() + timeout
    while not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        assert time.monotonic() < deadline, f"no trial running within {timeout} s"
        time.sleep(0.02)  # polling interval of a condition, not an ordering


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_resume_after_interrupt(ident_repo: Path, tmp_path: Path, sig: signal.Signals) -> None:
    sweep = write_sweep(tmp_path / "s.toml", ident_repo, trials=TRIALS)
    out = tmp_path / "out"
    storage = f"sqlite:///{out / 'study.db'}"
    args = ["tune", str(sweep), "--output", str(out), "--study-name", "t", "--no-prune"]
    proc = subprocess.Popen(
        perfkit_cmd(*args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    children: list[psutil.Process] = []
    ports: list[int] = []
    try:
        seen = _wait_for_trials(proc, 2)
        _wait_for_running(storage)
        # The embedded server (under its watchdog) answers: trials were measured on it.
        children = psutil.Process(proc.pid).children(recursive=True)
        ports = [
            c.laddr.port
            for child in children
            for c in child.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN
        ]
        assert ports, [child.cmdline() for child in children]
        os.kill(proc.pid, sig)
        rest, _ = proc.communicate(timeout=60)
        output = seen + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    if sig == signal.SIGINT:
        assert proc.returncode == 130, output.decode(errors="replace")
    else:
        assert proc.returncode == -signal.SIGKILL
    # Issue #10 finding 10: the embedded server dies with perfkit, SIGKILL included.
    for child in children:
        assert_gone(child.pid, ports)

    study = optuna.load_study(study_name="t", storage=storage)
    before = _snapshot(study)
    assert len(before) >= 2
    left_running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if sig == signal.SIGINT:
        # Ctrl-C fails the running trial with its reason and writes what it has.
        assert not left_running, output.decode(errors="replace")
        assert (out / "results" / "metrics-model-inference.csv").exists()
    else:
        # Killed mid-trial (or, rarely, between a tell and the next ask).
        assert len(left_running) <= 1

    proc2 = run_perfkit(*args)
    assert proc2.returncode == 0, proc2.stdout + proc2.stderr
    study = optuna.load_study(study_name="t", storage=storage)
    after = _snapshot(study)
    # Nothing finished before was lost or re-measured; the budget was completed.
    for number, snap in before.items():
        assert after[number] == snap
    assert len(after) == TRIALS
    assert_no_variant_measured_twice(study)
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    interrupted = [t for t in study.trials if "interrupted" in str(t.user_attrs.get("reason", ""))]
    assert len(interrupted) <= 1
    assert all(t.state == TrialState.FAIL for t in interrupted)
    assert "resuming" in proc2.stderr
