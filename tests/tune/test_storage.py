"""Orphaned trials: a worker killed between a trial's creation and its tag leaves nothing RUNNING."""

from __future__ import annotations

import datetime
import os
import signal
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from perfkit.tune import storage as st
from perfkit.tune.samplers import TaggingSampler, ask


def test_a_trial_orphaned_at_birth_is_failed_once_its_grace_has_passed(tmp_path: Path) -> None:
    study, _ = st.open_study(
        st.open_storage(st.default_storage_url(tmp_path)),
        "s",
        ["maximize"],
        optuna.samplers.RandomSampler(),
    )
    # A RUNNING trial that names no worker, created just under the grace period ago.
    started = datetime.datetime.now() - datetime.timedelta(seconds=st.ANONYMOUS_GRACE_S - 0.5)
    template = optuna.trial.FrozenTrial(
        number=0, state=TrialState.RUNNING, value=None, datetime_start=started,
        datetime_complete=None, params={}, distributions={}, user_attrs={}, system_attrs={},
        intermediate_values={}, trial_id=0,
    )  # fmt: skip
    study._storage.create_new_trial(study._study_id, template_trial=template)
    assert st.recover_orphans(study) == []  # still within its grace: it may be tagged yet
    assert st.settle_orphans(study) == [0]
    (trial,) = study.get_trials(deepcopy=False)
    assert trial.state == TrialState.FAIL
    assert "interrupted" in trial.user_attrs[st.REASON_ATTR]


class _CtrlCBeforeTheTag(TaggingSampler):
    """Presses Ctrl-C (a real SIGINT to this process) inside `study.ask()`, after the trial row is
    created and before it is tagged with its worker: the window a Ctrl-C used to leave it RUNNING."""

    def before_trial(self, study: Any, trial: Any) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        super().before_trial(study, trial)


def test_ctrl_c_during_ask_surfaces_after_the_trial_is_tagged(tmp_path: Path) -> None:
    study, _ = st.open_study(
        st.open_storage(st.default_storage_url(tmp_path)),
        "s",
        ["maximize"],
        _CtrlCBeforeTheTag(optuna.samplers.RandomSampler()),
    )
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        ask(study)
    assert signal.getsignal(signal.SIGINT) is handler
    # The interrupted trial names this worker, so the loop's Ctrl-C handler can fail it.
    (trial,) = study.get_trials(deepcopy=False)
    assert trial.state == TrialState.RUNNING
    assert trial.user_attrs[st.WORKER_ATTR] == st.worker_id()
