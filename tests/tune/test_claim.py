"""`perfkit.tune.claim`: two workers that drew one variant at the same moment never both measure
it. The interleavings are built by hand on an in-memory study; a waiting trial is observed through
its heartbeat (it beats each time it decides to wait), never through time."""

from __future__ import annotations

import threading

import optuna
import pytest

from perfkit.tune import claim
from perfkit.tune import records as rec
from perfkit.tune import storage as st

KEY = "cfg/batch_size=1,concurrency=4"


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> dict[int, threading.Event]:
    """trial number -> an event set when that trial decides to wait for a peer."""
    events: dict[int, threading.Event] = {}

    def beat(study: optuna.Study, trial: optuna.Trial) -> None:
        events.setdefault(trial.number, threading.Event()).set()

    monkeypatch.setattr(st, "record_heartbeat", beat)
    monkeypatch.setattr(claim, "POLL_S", 0.001)
    return events


def waiting(events: dict[int, threading.Event], number: int) -> bool:
    return events.setdefault(number, threading.Event()).wait(30)


def study_with(n: int) -> tuple[optuna.Study, list[optuna.Trial]]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    return study, [study.ask() for _ in range(n)]


def finish_measured(study: optuna.Study, trial: optuna.Trial) -> None:
    trial.set_user_attr(rec.A_MEASURED, True)
    study.tell(trial, 1.0)


def in_thread(study: optuna.Study, trial: optuna.Trial) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []
    thread = threading.Thread(
        target=lambda: out.append(claim.claim_or_copy(study, trial, KEY, deadline_s=60))
    )
    thread.start()
    return thread, out


def test_a_lone_trial_claims_at_once(waits: dict[int, threading.Event]) -> None:
    study, (a,) = study_with(1)
    a.set_user_attr(rec.A_KEY, KEY)
    assert claim.claim_or_copy(study, a, KEY, deadline_s=60) is None
    assert study.trials[0].user_attrs[rec.A_CLAIM] is True


def test_the_lower_number_waits_for_a_higher_one_already_measuring(
    waits: dict[int, threading.Event],
) -> None:
    # The CI failure: trial 1 looked before trial 0 had set its key, claimed and started
    # measuring; trial 0 then saw it running. Before, trial 0 waited only for lower numbers, so
    # both measured the variant.
    study, (a, b) = study_with(2)
    b.set_user_attr(rec.A_KEY, KEY)
    assert claim.claim_or_copy(study, b, KEY, deadline_s=60) is None
    a.set_user_attr(rec.A_KEY, KEY)
    thread, out = in_thread(study, a)
    assert waiting(waits, a.number)
    assert not study.trials[a.number].user_attrs.get(rec.A_CLAIM)
    finish_measured(study, b)
    thread.join(30)
    assert [t.number for t in out] == [b.number]  # type: ignore[attr-defined]


def test_the_higher_number_waits_for_a_lower_one_deciding(
    waits: dict[int, threading.Event],
) -> None:
    study, (a, b) = study_with(2)
    a.set_user_attr(rec.A_KEY, KEY)
    b.set_user_attr(rec.A_KEY, KEY)
    thread, out = in_thread(study, b)
    assert waiting(waits, b.number)
    assert claim.claim_or_copy(study, a, KEY, deadline_s=60) is None
    finish_measured(study, a)
    thread.join(30)
    assert [t.number for t in out] == [a.number]  # type: ignore[attr-defined]


def test_a_claim_is_given_back_to_a_lower_number_that_set_its_key_meanwhile(
    waits: dict[int, threading.Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Trial 1 looks (no peer), and trial 0 sets its key just as trial 1 claims: trial 1's second
    # look sees it, gives the claim back and waits; trial 0 then sees trial 1 without a claim.
    study, (a, b) = study_with(2)
    b.set_user_attr(rec.A_KEY, KEY)
    set_attr = b.set_user_attr

    def claim_then_peer_appears(name: str, value: object) -> None:
        set_attr(name, value)
        if name == rec.A_CLAIM and value is True:
            a.set_user_attr(rec.A_KEY, KEY)

    monkeypatch.setattr(b, "set_user_attr", claim_then_peer_appears)
    thread, out = in_thread(study, b)
    assert waiting(waits, b.number)
    assert study.trials[b.number].user_attrs[rec.A_CLAIM] is False
    assert claim.claim_or_copy(study, a, KEY, deadline_s=60) is None
    finish_measured(study, a)
    thread.join(30)
    assert [t.number for t in out] == [a.number]  # type: ignore[attr-defined]


def test_a_failed_peer_ends_the_wait_and_the_variant_is_measured_here(
    waits: dict[int, threading.Event],
) -> None:
    study, (a, b) = study_with(2)
    a.set_user_attr(rec.A_KEY, KEY)
    b.set_user_attr(rec.A_KEY, KEY)
    thread, out = in_thread(study, b)
    assert waiting(waits, b.number)
    study.tell(a, state=optuna.trial.TrialState.FAIL)  # killed before it measured
    thread.join(30)
    assert out == [None]
