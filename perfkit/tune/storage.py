"""Where a study lives: SQLite in the output directory by default, or a shared RDB URL (PostgreSQL).

Resume rules. A worker tags each trial with `worker` = "host:pid" as it is created. On start (and
between trials), a RUNNING trial left by a dead process on this host (SIGKILL, crash, the OOM
killer) is marked FAIL and `killed`, with its reason, so it is neither lost nor repeated as
"running" forever. Trials of other hosts are failed the same way once their heartbeat is older than
the grace period (Optuna's stale trials): each worker records a heartbeat after every window.

A killed variant is retried once, every time: the first trial of a variant killed mid-measurement
is measured again by the next run (`Tuner` re-runs it first); when that retry is killed too, the
second killed trial is the variant's result: a failure that counts as measured ("killed twice"),
so no run measures it again. A variant that kills its tuner (say, by exhausting memory) thus costs
two runs at most, never an endless resume loop.
"""

from __future__ import annotations

import datetime
import importlib.util
import logging
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

from perfkit.errors import ConfigError, MissingDependency
from perfkit.sweepfile import Direction

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 5
GRACE_PERIOD_S = 60
# A RUNNING trial that names no worker after this long was orphaned at birth.
ANONYMOUS_GRACE_S = 10.0
WORKER_ATTR = "worker"
REASON_ATTR = "reason"
# Trial attrs the kill rule reads (perfkit.tune.records names them for the loop): the variant, set
# before its measurement; its name, set when the measurement starts; whether the trial is the
# variant's result; whether its worker died mid-trial; the trial a copy took its result from.
KEY_ATTR = "variant_key"
NAME_ATTR = "variant_name"
MEASURED_ATTR = "measured"
KILLED_ATTR = "killed"
DUP_ATTR = "duplicate_of"


# Attrs this worker sets on every trial it creates besides `WORKER_ATTR` (the target it measures
# on, `perfkit.tune.identity`): `set_worker_attrs`, read by `samplers.TaggingSampler`.
_worker_attrs: dict[str, Any] = {}


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def set_worker_attrs(attrs: dict[str, Any]) -> None:
    """Replace the attrs this process's trials are tagged with from now on ({} for none)."""
    _worker_attrs.clear()
    _worker_attrs.update(attrs)


def worker_attrs() -> dict[str, Any]:
    """The attrs `set_worker_attrs` last set (a copy)."""
    return dict(_worker_attrs)


def default_storage_url(out_dir: Path) -> str:
    return f"sqlite:///{(out_dir / 'study.db').resolve()}"


def _with_driver(url: str) -> str:
    """postgresql:// -> postgresql+psycopg2:// when no driver is named: SQLAlchemy 2.1 defaults to
    psycopg 3, while perfkit's postgres extra installs psycopg2-binary."""
    if not url.startswith(("postgresql://", "postgres://")):
        return url
    if importlib.util.find_spec("psycopg2") is None:
        if importlib.util.find_spec("psycopg") is None:
            raise MissingDependency(
                "--storage postgresql://... needs psycopg2: pip install 'perfkit[postgres]'"
            )
        return url
    return "postgresql+psycopg2://" + url.split("://", 1)[1]


def open_storage(url: str) -> RDBStorage:
    """An RDBStorage for `url` with heartbeats on; errors say what to install or fix."""
    url = _with_driver(url)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several processes may share one SQLite file (resume while a dying worker flushes).
        engine_kwargs["connect_args"] = {"timeout": 30}
    elif "://" in url:
        engine_kwargs["pool_pre_ping"] = True
    last: Exception | None = None
    for attempt in range(6):
        try:
            with warnings.catch_warnings():
                # Heartbeats are "experimental" since Optuna 2.9; the notice is only noise here.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=HEARTBEAT_INTERVAL_S,
                    grace_period=GRACE_PERIOD_S,
                )
        except (SQLAlchemyError, ValueError, ImportError) as exc:
            # Workers starting together on an empty database race to create the schema; the
            # loser sees "already exists" and succeeds on a retry.
            last = exc
            if not isinstance(exc, SQLAlchemyError):
                break
            time.sleep(0.2 * (attempt + 1))
    raise ConfigError(
        f"--storage {url}: cannot open the study storage: {last}. Check the URL, that the "
        "database server runs, and its credentials."
    ) from last


def open_study(
    storage: RDBStorage,
    study_name: str,
    directions: list[Direction],
    sampler: optuna.samplers.BaseSampler,
) -> tuple[optuna.Study, bool]:
    """Create the study, or load it when it exists. Returns (study, created_by_this_call).

    Creation is atomic in the database (unique study name), so of several workers starting at
    once exactly one gets `created=True`: that one measures the default config first.
    """
    try:
        study = optuna.create_study(
            storage=storage, study_name=study_name, directions=directions, sampler=sampler
        )
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        pass
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
    if [d.name.lower() for d in study.directions] != list(directions):
        have = [d.name.lower() for d in study.directions]
        raise ConfigError(
            f"study {study_name!r} in the storage optimises {have}, this sweep {directions}. "
            "Use another --output/--storage or study name, or delete the old study."
        )
    return study, False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_orphans(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials whose worker is gone. Returns the trial numbers it failed."""
    storage = study._storage
    host = socket.gethostname()
    failed: list[int] = []
    now = datetime.datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(trial.user_attrs.get(WORKER_ATTR, ""))
        if not worker:
            # Tagged within milliseconds of creation (TaggingSampler): an old untagged trial
            # belongs to a worker killed in that window.
            started = trial.datetime_start
            if started is None or (now - started).total_seconds() < ANONYMOUS_GRACE_S:
                continue
        else:
            w_host, _, w_pid = worker.rpartition(":")
            if w_host != host or not w_pid.isdigit() or _pid_alive(int(w_pid)):
                continue
            if int(w_pid) == os.getpid():
                continue
        if _fail_killed(study, trial, f"worker {worker} exited mid-trial"):
            failed.append(trial.number)
    if not isinstance(storage, RDBStorage) or storage.heartbeat_interval is None:
        return _logged(failed)
    try:
        # Optuna's `fail_stale_trials`, with the kill rule's attrs set before the FAIL.
        stale = set(storage._get_stale_trial_ids(study._study_id))
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker = trial.user_attrs.get(WORKER_ATTR, "?")
            why = f"worker {worker} sent no heartbeat for {GRACE_PERIOD_S} s"
            if trial._trial_id in stale and _fail_killed(study, trial, why):
                failed.append(trial.number)
    except (SQLAlchemyError, RuntimeError, AttributeError) as exc:
        # Heartbeat bookkeeping must never stop a tune.
        logger.warning("could not check for stale trials: %s", exc)
    return _logged(failed)


def _logged(failed: list[int]) -> list[int]:
    if failed:
        logger.info("marked interrupted trials %s as failed", failed)
    return failed


def _fail_killed(study: optuna.Study, trial: FrozenTrial, why: str) -> bool:
    """FAIL a RUNNING trial whose worker died, under the kill rule (module docstring). Returns
    False when another worker finished it first."""
    storage = study._storage
    key = trial.user_attrs.get(KEY_ATTR)
    # A copy (told another trial's result) names its variant too, but measures nothing.
    measuring = NAME_ATTR in trial.user_attrs and DUP_ATTR not in trial.user_attrs
    killed_before = measuring and any(
        t.user_attrs.get(KILLED_ATTR) and t.user_attrs.get(KEY_ATTR) == key
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    )
    if killed_before:
        reason = f"killed twice mid-measurement (this time: {why}); not measured again"
    elif measuring:
        reason = f"interrupted: {why}; measured again by the next run"
    else:
        reason = f"interrupted before its measurement: {why}"
    try:
        storage.set_trial_user_attr(trial._trial_id, KILLED_ATTR, measuring)
        storage.set_trial_user_attr(trial._trial_id, MEASURED_ATTR, killed_before)
        storage.set_trial_user_attr(trial._trial_id, REASON_ATTR, reason)
        return bool(storage.set_trial_state_values(trial._trial_id, TrialState.FAIL))
    except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
        return False


def settle_orphans(study: optuna.Study) -> list[int]:
    """`recover_orphans`, after waiting (at most `ANONYMOUS_GRACE_S`) for RUNNING trials that name
    no worker yet to be tagged or to age past the grace: a worker killed between a trial's creation
    and its tag leaves no trial RUNNING forever. Returns the trial numbers it failed."""
    failed = recover_orphans(study)
    deadline = time.monotonic() + ANONYMOUS_GRACE_S + 1.0
    while time.monotonic() < deadline:
        anonymous = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not t.user_attrs.get(WORKER_ATTR)
        ]
        if not anonymous:
            break
        time.sleep(0.25)
        failed.extend(recover_orphans(study))
    return failed


def record_heartbeat(study: optuna.Study, trial: optuna.Trial) -> None:
    storage = study._storage
    if isinstance(storage, RDBStorage):
        storage.record_heartbeat(trial._trial_id)
