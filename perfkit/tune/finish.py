"""After the search: the top configs re-measured over a full load sweep (`top_k`), and on another
server to check that the ranking holds there (`validate_on`).

The top configs are the distinct config.pbtxt of the study's complete, feasible trials, ranked by
each config's best primary objective (the first objective with several), best first.

Load sweep (`sweep.top_k` = K > 0): each of the top K configs is loaded once on the tune's server
(a load with its config override, as a trial) and measured at every level of the sweep's load:
each concurrency of `load.concurrency` in concurrency mode, each rate of `load.request_rate` in
request-rate mode; when the search had one level only, concurrency 1, 2, 4, 8, 16, or the rate
times 0.25, 0.5, 1 and 2. The batch size is the config's best trial's. A level is measured as a
trial is (`LiveEvaluator.evaluate`: the sweep's windows, an unstable level kept as unstable).

Validation (`sweep.validate_on` = URL): the top K configs (3 when top_k is 0) are measured at the
best's client load on the target (which must be in explicit model-control mode and hold the
model in its repository: each config is loaded there with its config override) and, for numbers
at the same load, on the tune's server again (a load sweep's measurement at that load is reused).
The search's ranking (the order above) is compared with the target's, by the primary objective
(throughput when one measurement cannot give it, e.g. capacity): both rankings, Kendall's tau
(tau-a over the configs measured on the target: 1 = same order, -1 = reversed) and whether the
search's winner wins there too. A refused load or a failed measurement is reported per config;
a target that stops answering ends the validation with its reason. Either way nothing measured
is lost. At the end the target is asked to serve its config on disk again.

Both run after the search and outside its time budget; `perfkit.tune.run` skips them when the
search was interrupted or the server failed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from perfkit.errors import ConfigError, PerfkitError, ServerError, ServerUnavailable
from perfkit.model_repo.config import ModelConfig, parse_config
from perfkit.report.labels import describe_load
from perfkit.results import (
    LoadSweep,
    Measurement,
    ServerInfo,
    TrialRecord,
    ValidatedConfig,
    Validation,
)
from perfkit.sweepfile import LoadSettings, TuneSweep
from perfkit.tune.evaluate import LiveEvaluator, Outcome
from perfkit.tune.objective import Objective, metrics_of
from perfkit.tune.space import load_params

logger = logging.getLogger(__name__)

DEFAULT_CONCURRENCIES = (1, 2, 4, 8, 16)
RATE_FACTORS = (0.25, 0.5, 1.0, 2.0)
# Configs validated on the target when top_k is 0.
VALIDATE_K = 3
INTERRUPTED = "interrupted (Ctrl-C)"
# The objectives one measurement gives (`metrics_of`): the validation ranks by these.
RANKABLE = frozenset(
    {"throughput_infer_per_s", "avg_latency_us", "p50_latency_us", "p90_latency_us"}
    | {"p95_latency_us", "p99_latency_us"}
)


@dataclass(frozen=True, slots=True)
class Finished:
    """What the finish measured, for `TuneResult.load_sweeps` / `.validation` and its messages.
    `interrupted`: Ctrl-C during the finish (what was measured before it is kept)."""

    load_sweeps: tuple[LoadSweep, ...] = ()
    validation: Validation | None = None
    messages: tuple[str, ...] = ()
    interrupted: bool = False


def check(sweep: TuneSweep, *, pipeline: bool) -> None:
    """Before any trial: refuse what the finish cannot do, and a validation target that is down
    or not in explicit model-control mode (ConfigError / ServerUnavailable)."""
    if not (sweep.top_k or sweep.validate_on):
        return
    asked = "top_k" if sweep.top_k else "validate_on"
    if pipeline or sweep.models:
        raise ConfigError(
            f"{sweep.source}:{asked}: the top-k load sweep and --validate-on measure one model's "
            "configs, and this tune is an ensemble or names several models. Remove top_k and "
            "validate_on from the sweep (and --top-k, --validate-on from the command)."
        )
    if sweep.validate_on is None:
        return
    from perfkit.launch import wait_ready
    from perfkit.tune.server import check_explicit

    wait_ready(sweep.validate_on, sweep.protocol, sweep.startup_timeout_s)
    check_explicit(sweep, sweep.validate_on, "or drop --validate-on / server.validate_on")


def top_configs(trials: Sequence[TrialRecord], objective: Objective, k: int) -> list[TrialRecord]:
    """The best trial of each of the `k` best distinct configs (see the module docstring)."""
    primary, direction = objective.primary()
    best: dict[str, TrialRecord] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.state != "complete" or not t.feasible or primary not in t.objectives:
            continue
        key = t.config_pbtxt or t.variant_name
        held = best.get(key)
        if held is None or objective.better(t.objectives[primary], held.objectives[primary]):
            best[key] = t
    ranked = sorted(
        best.values(), key=lambda t: t.objectives[primary], reverse=direction == "maximize"
    )
    return ranked[:k]


def sweep_levels(load: LoadSettings) -> tuple[float, ...]:
    """The levels of the load sweep (see the module docstring)."""
    if load.mode == "request_rate":
        rates = sorted(set(load.request_rate))
        if len(rates) == 1:
            return tuple(rates[0] * f for f in RATE_FACTORS)
        return tuple(rates)
    levels = sorted(set(load.concurrency))
    return tuple(float(c) for c in (levels if len(levels) > 1 else DEFAULT_CONCURRENCIES))


class OnceLoaded(LiveEvaluator):
    """A `LiveEvaluator` that loads a config once: `evaluate` at its next levels reuses the load."""

    _loaded: ModelConfig | None = None

    def load_variant(self, config: ModelConfig) -> None:
        if self._loaded is not None and self._loaded == config:
            return
        self._loaded = None
        super().load_variant(config)
        self._loaded = config


def evaluator_for(sweep: TuneSweep, url: str) -> OnceLoaded:
    return OnceLoaded(
        url=url, protocol=sweep.protocol, model=sweep.model, load=sweep.load, measure=sweep.measure
    )


def _params(mode: str, level: float, batch_size: int) -> dict[str, Any]:
    key = "concurrency" if mode == "concurrency" else "request_rate"
    return {key: int(level) if mode == "concurrency" else level, "batch_size": batch_size}


def _measure(ev: LiveEvaluator, config: ModelConfig, params: dict[str, Any]) -> Outcome:
    return ev.evaluate(config, params, lambda window: None)


def load_sweeps(
    top: Sequence[TrialRecord],
    sweep: TuneSweep,
    ev: OnceLoaded,
    note: Callable[[str], None],
    out: list[LoadSweep],
) -> None:
    """Each config of `top` measured at every level (`sweep_levels`) on `ev`'s server, appended
    to `out` as it is done. Raises ServerUnavailable and KeyboardInterrupt (`out` keeps the
    configs done before)."""
    mode = sweep.load.mode
    levels = sweep_levels(sweep.load)
    for rank, t in enumerate(top, 1):
        config = parse_config(t.config_pbtxt, t.variant_name)
        batch = int(t.params.get("batch_size", 1))
        measured: list[Measurement] = []
        errors: list[str] = []
        note(f"load sweep {rank}/{len(top)}: {t.variant_name} at {len(levels)} levels")
        try:
            ev.load_variant(config)
        except ServerError as exc:
            errors.append(f"load refused: {exc}")
            levels_left: tuple[float, ...] = ()
        else:
            levels_left = levels
        for level in levels_left:
            params = _params(mode, level, batch)
            outcome = _measure(ev, config, params)
            if outcome.measurement is not None:
                measured.append(outcome.measurement)
            if outcome.error:
                errors.append(f"{describe_load(params)}: {outcome.error}")
        out.append(
            LoadSweep(
                trial=t.number,
                variant_name=t.variant_name,
                rank=rank,
                mode=mode,
                batch_size=batch,
                measurements=tuple(measured),
                errors=tuple(errors),
            )
        )


def ranking_metric(objective: Objective) -> tuple[str, str]:
    """The primary objective, or throughput when one measurement cannot give it (capacity, and
    the GPU metrics, which the validation does not scrape)."""
    primary, direction = objective.primary()
    return (primary, direction) if primary in RANKABLE else ("throughput_infer_per_s", "maximize")


def _ranking(values: dict[int, float], direction: str) -> tuple[int, ...]:
    order = sorted(values, key=lambda n: values[n], reverse=direction == "maximize")
    return tuple(order)


def kendall_tau(a: Sequence[int], b: Sequence[int]) -> float | None:
    """Kendall's tau-a between two rankings of the same items (None with fewer than two)."""
    items = [x for x in a if x in b]
    n = len(items)
    if n < 2:
        return None
    pos = {x: i for i, x in enumerate(b)}
    score = 0
    for i in range(n):
        for j in range(i + 1, n):
            score += 1 if pos[items[i]] < pos[items[j]] else -1
    return score / (n * (n - 1) / 2)


def _known(swept: Sequence[LoadSweep], trial: int, level: float, batch: int) -> Outcome | None:
    """A config's load-sweep measurement at `level` and `batch` (None when it has none)."""
    for s in swept:
        for m in s.measurements if s.trial == trial and s.batch_size == batch else ():
            if m.level == level and not m.error_count:
                return Outcome(measurement=m)
    return None


def _value(outcome: Outcome, metric: str) -> float | None:
    m = outcome.measurement
    if m is None or outcome.error:
        return None
    value = metrics_of(m).get(metric)
    return None if value is None else float(value)


def validate(
    top: Sequence[TrialRecord],
    sweep: TuneSweep,
    objective: Objective,
    search: OnceLoaded,
    note: Callable[[str], None],
    swept: Sequence[LoadSweep] = (),
) -> Validation:
    """The top configs at the best's load on the tune's server (`search`) and on
    `sweep.validate_on`; a config's measurement at that load in `swept` (its load sweep, on the
    same server) is reused. Never raises for a server: a Ctrl-C or a server that stops answering
    ends it early, with the configs measured so far and the reason in `error` (`INTERRUPTED`
    for a Ctrl-C, which `finish` raises again once the result is kept)."""
    from perfkit.launch import server_info

    assert sweep.validate_on is not None
    url = sweep.validate_on
    metric, direction = ranking_metric(objective)
    load = {k: float(v) for k, v in load_params(top[0].params).items()}
    mode = sweep.load.mode
    first = sweep.load.concurrency[0] if mode == "concurrency" else sweep.load.request_rate[0]
    level = load.get("concurrency" if mode == "concurrency" else "request_rate", float(first))
    params = _params(mode, level, int(load.get("batch_size", 1)))
    empty = Validation(
        url=url, metric=metric, direction=direction, load=load, configs=(), search_ranking=(),
        target_ranking=(), kendall_tau=None, same_winner=None,
    )  # fmt: skip
    try:
        info: ServerInfo | None = server_info(url, sweep.protocol)
    except PerfkitError as exc:
        return dataclasses.replace(empty, error=f"the target did not answer: {exc}")
    target = evaluator_for(sweep, url)
    rows: list[ValidatedConfig] = []
    stopped = ""  # why the validation stopped early
    target_down = False
    try:
        for i, t in enumerate(top, 1):
            note(f"validation {i}/{len(top)}: {t.variant_name} on {url}")
            config = parse_config(t.config_pbtxt, t.variant_name)
            here = _known(swept, t.number, level, params["batch_size"])
            if here is None:
                here = _measure(search, config, params)
            errors = [f"this server: {here.error}"] if here.error else []
            there: Outcome | None = None
            if target_down:
                errors.append(f"{url}: not measured: {stopped}")
            else:
                try:
                    there = _measure(target, config, params)
                    if there.error:
                        errors.append(f"{url}: {there.error}")
                except ServerUnavailable as exc:
                    target_down, stopped = True, f"the target stopped answering: {exc}"
                    errors.append(stopped)
            rows.append(
                ValidatedConfig(
                    trial=t.number,
                    variant_name=t.variant_name,
                    search_value=_value(here, metric),
                    target_value=None if there is None else _value(there, metric),
                    search=here.measurement,
                    target=None if there is None else there.measurement,
                    error="; ".join(errors),
                )
            )
    except KeyboardInterrupt:
        stopped = INTERRUPTED  # the configs measured so far are kept; `finish` re-raises
    except ServerUnavailable as exc:
        stopped = f"the tune's server stopped answering: {exc}"
    finally:
        if not target_down:
            try:
                target.control.reload_from_disk()
            except PerfkitError as exc:
                logger.info("the target could not reload its config on disk: %s", exc)
        target.close()
    # The search's ranking (`top`'s order) against the target's, over the configs measured there.
    tune_rank = tuple(t.number for t in top)
    there_rank = _ranking(
        {r.trial: r.target_value for r in rows if r.target_value is not None}, direction
    )
    return dataclasses.replace(
        empty,
        configs=tuple(rows),
        search_ranking=tune_rank,
        target_ranking=there_rank,
        kendall_tau=kendall_tau([n for n in tune_rank if n in there_rank], there_rank),
        same_winner=(tune_rank[0] == there_rank[0]) if there_rank else None,
        error=stopped,
        server=info,
    )


def finish(
    study: Any,
    sweep: TuneSweep,
    objective: Objective,
    url: str,
    note: Callable[[str], None],
) -> Finished:
    """The load sweeps and the validation the sweep asks for, of the study's (an optuna.Study)
    top configs, on the tune's server at `url`."""
    from perfkit.tune.records import record_of

    k = max(sweep.top_k, VALIDATE_K if sweep.validate_on else 0)
    if not k:
        return Finished()
    records = [record_of(t, objective) for t in study.get_trials(deepcopy=False)]
    top = top_configs([r for r in records if r is not None], objective, k)
    if not top:
        return Finished(messages=("top-k and validation skipped: no feasible config",))
    messages: list[str] = []
    sweeps: list[LoadSweep] = []
    validation: Validation | None = None
    interrupted = False
    search = evaluator_for(sweep, url)
    try:
        if sweep.top_k:
            load_sweeps(top[: sweep.top_k], sweep, search, note, sweeps)
            messages.append(_sweep_message(sweeps, sweep.load))
        if sweep.validate_on:
            validation = validate(top, sweep, objective, search, note, sweeps)
            messages.append(validation_message(validation))
            interrupted = validation.error == INTERRUPTED
    except KeyboardInterrupt:  # during a load sweep: the configs swept before are kept
        interrupted = True
    except ServerUnavailable as exc:
        messages.append(f"the server stopped answering after the search: {exc}")
    finally:
        search.close()
    if interrupted:
        messages.append("interrupted (Ctrl-C) during the top-k load sweep or the validation")
    return Finished(tuple(sweeps), validation, tuple(messages), interrupted=interrupted)


def _sweep_message(sweeps: Sequence[LoadSweep], load: LoadSettings) -> str:
    levels = ", ".join(f"{v:g}" for v in sweep_levels(load))
    what = "concurrency" if load.mode == "concurrency" else "request rate"
    failed = sum(len(s.errors) for s in sweeps)
    return f"re-measured the top {len(sweeps)} configs over {what} {levels}" + (
        f" ({failed} levels failed)" if failed else ""
    )


def validation_message(v: Validation) -> str:
    """One line on the validation, e.g. "validation on host:8001: same winner: yes, Kendall tau
    1.00 over 3 configs"."""
    head = f"validation on {v.url}"
    if v.error and not v.configs:
        return f"{head}: not done: {v.error}"
    both = len([c for c in v.configs if c.target_value is not None])
    winner = "n/a" if v.same_winner is None else ("yes" if v.same_winner else "no")
    tau = "n/a" if v.kendall_tau is None else f"{v.kendall_tau:.2f}"
    tail = f"; {v.error}" if v.error else ""
    return (
        f"{head}: same winner: {winner}, Kendall tau {tau} over {both} configs "
        f"(ranked by {v.metric} at {describe_load(v.load) or 'the best load'}){tail}"
    )
