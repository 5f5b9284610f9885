"""Patience: the rule that stops a tune after N finished trials without improvement. Pure.

The rule, over the study's trials in trial-number order (every worker's, so a resumed or shared
study counts on from where it was):

- A trial counts when it measured its variant and finished: complete, failed or pruned. The
  default config's first measurement counts (it sets the first best). Draws of a variant measured
  already (`duplicate_of`) do not count, nor does the default's extra measurement at the best's
  load after the search (`default_at_load_of`), nor a trial cut short by a kill or Ctrl-C.
- An improvement is a complete, feasible trial (every constraint met) whose primary objective is
  strictly better than the best such trial before it. With several objectives, the first one.
- The tune stops when the trials counted since the last improvement (or since the start, when no
  trial improved yet) reach `patience`.

"Strictly better" takes no noise margin: a measurement that is better by noise alone also resets
the count, so patience errs on the side of searching longer.
"""

from __future__ import annotations

from collections.abc import Iterable

from optuna.trial import FrozenTrial, TrialState

from perfkit.tune import records as rec
from perfkit.tune.objective import Objective


def trials_without_improvement(trials: Iterable[FrozenTrial], objective: Objective) -> int:
    """The counted trials since the last improvement (see the module docstring)."""
    best: float | None = None
    since = 0
    for t in sorted(trials, key=lambda t: t.number):
        attrs = t.user_attrs
        if not t.state.is_finished() or not attrs.get(rec.A_MEASURED):
            continue
        if rec.A_DUP in attrs or rec.A_FAIR in attrs:
            continue
        feasible = (
            t.state == TrialState.COMPLETE
            and t.values is not None
            and not any(float(v) > 0 for v in t.constraints.values())
        )
        value = float(t.values[0]) if feasible and t.values is not None else None
        if value is not None and (best is None or objective.better(value, best)):
            best, since = value, 0
        else:
            since += 1
    return since


def patience_message(patience: int, since: int) -> str:
    """The result's message when patience ends the tune."""
    return (
        f"stopped: {since} trials without improvement (patience {patience}): no feasible trial "
        "beat the best's primary objective"
    )
