"""Which worker measures a variant that several workers of one study drew at the same moment.

A trial sets its variant key (`records.A_KEY`) before it looks at its peers. Then: claim, and
verify. It waits while a running peer with the same key is lower-numbered or holds the claim
(`records.A_CLAIM`); when none is, it claims and looks again: a lower-numbered same-key peer seen
now set its key after the first look, so the trial gives the claim back and waits for that peer.
Of two same-key trials, the one that looks second sees the other's key, and whichever of them
that is, the higher-numbered one ends up waiting: no variant is measured twice, and the lowest
number never waits for a higher one that holds no claim, so someone always measures. A waiting
trial copies the measurement once the peer has finished (`records.tell_copy`).
"""

from __future__ import annotations

import time

import optuna
from optuna.trial import FrozenTrial, TrialState

from perfkit.tune import records as rec
from perfkit.tune import storage as st

POLL_S = 0.25


def claim_or_copy(
    study: optuna.Study, trial: optuna.Trial, key: str, *, deadline_s: float
) -> FrozenTrial | None:
    """The finished trial that measured `key`, or None once `trial` holds the claim to measure
    it. Gives up waiting after `deadline_s` (returns None: measured here); a peer that stopped
    beating meanwhile is failed by `storage.recover_orphans`, which ends the wait sooner."""
    number = trial.number
    deadline = time.monotonic() + deadline_s
    while True:
        same = same_key_peers(study, key, number)
        done = next((t for t in same if t.state.is_finished()), None)
        if done is not None:
            return done
        if not any(t.number < number or t.user_attrs.get(rec.A_CLAIM) for t in same):
            trial.set_user_attr(rec.A_CLAIM, True)
            if not any(
                t.state == TrialState.RUNNING and t.number < number
                for t in same_key_peers(study, key, number)
            ):
                return None
            trial.set_user_attr(rec.A_CLAIM, False)
        if time.monotonic() > deadline:
            return None
        st.record_heartbeat(study, trial)
        st.recover_orphans(study)
        time.sleep(POLL_S)


def same_key_peers(study: optuna.Study, key: str, number: int) -> list[FrozenTrial]:
    """The other trials with variant `key` that are running or finished having measured it."""
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if t.number != number
        and t.user_attrs.get(rec.A_KEY) == key
        and rec.A_DUP not in t.user_attrs
        and (
            t.state == TrialState.RUNNING
            or (t.state.is_finished() and t.user_attrs.get(rec.A_MEASURED))
        )
    ]
