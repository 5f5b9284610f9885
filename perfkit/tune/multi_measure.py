"""Measure a model group's variant (`perfkit.tune.multi`): every model at once, on one server.

`GroupEvaluator.evaluate` loads each model's config (the load API's config override), then runs
every model's load in one asyncio loop, each model on its own `Session` under its own client
load:

1. each model's connections open and its warm-up requests run; then all wait for each other;
2. the windows start together (each model's window i covers the same time, to within the
   loop's scheduling) and each model runs perf_analyzer's stability loop on its own windows;
3. a model whose loop ends first (stable, or at max_windows) keeps its load running, unmeasured,
   until every model's loop has ended, so that each model's windows were all measured while
   every other model was under load; then every load stops.

The trial fails with the model's name when one model's load is refused or its measurement fails;
the server going away raises `ServerUnavailable` as for one model. The scores are computed here
(`perfkit.tune.multi.scores`) against the reference trial `reference` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from perfkit.control import ControlClient
from perfkit.errors import PerfkitError, ServerError, ServerUnavailable
from perfkit.load.spec import InputSpec, TargetSpec, parse_shapes
from perfkit.model_repo.config import config_to_json
from perfkit.results import Measurement, WindowStat
from perfkit.tune.evaluate import LiveEvaluator, Outcome, WindowWatch
from perfkit.tune.multi import Group, GroupObjective, Member, reference_of, scores
from perfkit.tune.objective import metrics_of
from perfkit.tune.records import A_MODELS, encode_measurement

# (trial number, metrics) of the trial the scores are relative to, or None (see multi.reference_of).
Reference = Callable[[], tuple[int, dict[str, float]] | None]


class _ModelFailed(Exception):
    """One model's measurement failed (its name and the error)."""

    def __init__(self, model: str, error: PerfkitError) -> None:
        super().__init__(f"{model}: {error}")
        self.model = model
        self.error = error


class _HeldLoad:
    """A `WindowSource` whose `stop` leaves the load running: the group stops every load once
    every model's windows are measured (step 3 of the module docstring)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.notes: tuple[str, ...] = inner.notes

    async def run_fixed(self) -> Any:
        return await self.inner.run_fixed()

    async def prepare(self) -> None:
        await self.inner.prepare()

    async def start(self) -> None:
        await self.inner.start()

    async def wait(self, index: int) -> None:
        await self.inner.wait(index)

    async def window(self, index: int) -> Any:
        return await self.inner.window(index)

    async def stop(self) -> None:
        pass


class GroupEvaluator(LiveEvaluator):
    """`LiveEvaluator` for a model group: loads every model's config of a `Group` variant and
    measures the models concurrently (module docstring). `model`/`load` are the first model's."""

    def __init__(
        self,
        *,
        group: Group,
        objective: GroupObjective,
        reference: Reference,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.objective = objective
        self.reference = reference
        self.entries: tuple[Member, ...] = objective.models
        self.controls = {
            name: ControlClient(self.url, self.protocol, model=name, network_timeout_s=120.0)
            for name in group.names
        }

    def load_variant(self, config: Group) -> None:
        for name, model_config in config.models:
            try:
                self.controls[name].load_model(json.dumps(config_to_json(model_config)))
            except ServerError as exc:
                raise ServerError(f"{name}: {exc}") from exc

    def evaluate(self, config: Group, params: Mapping[str, Any], watch: WindowWatch) -> Outcome:
        t0 = time.perf_counter_ns()
        phase = self.on_phase or (lambda doing: None)
        phase("loading")
        try:
            self.load_variant(config)
        except ServerError as exc:
            return Outcome(measurement=None, error=str(exc), load_s=_since(t0))
        load_s = _since(t0)
        phase("warming up" if self.measure_settings.warmup_requests else "measuring")
        windows: dict[str, list[WindowStat]] = {e.name: [] for e in self.entries}
        first = self.entries[0].name

        def on_window(name: str) -> Callable[[WindowStat], None]:
            def seen(w: WindowStat) -> None:
                windows[name].append(w)
                if name == first:  # the tuner's heartbeat and progress follow one model
                    watch(w)

            return seen

        try:
            measured = self._measure_all(on_window, windows)
        except _ModelFailed as exc:
            return Outcome(
                measurement=None,
                error=f"{exc.model}: measurement failed: {exc.error}",
                windows=tuple(windows[first]),
                load_s=load_s,
            )
        return self._outcome(measured, load_s)

    def _outcome(self, measured: dict[str, Measurement], load_s: float) -> Outcome:
        metrics: dict[str, float] = {}
        errors: list[str] = []
        for name, m in measured.items():
            metrics.update({f"{name}.{k}": v for k, v in metrics_of(m).items()})
            if m.error_count:
                total = m.request_count + m.error_count
                errors.append(f"{name}: {m.error_count} of {total} requests failed")
        found = self.reference()
        number, reference = (-1, metrics) if found is None else found
        metrics.update(scores(metrics, reference, self.objective))
        # The trial the scores are relative to (-1: this one, the first measured).
        metrics["reference_trial"] = float(number)
        first = measured[self.entries[0].name]
        return Outcome(
            measurement=first,
            error="; ".join(errors) or None,
            windows=first.windows,
            window_s=max(sum(w.duration_ns for w in m.windows) for m in measured.values()) / 1e9,
            load_s=load_s,
            extra={A_MODELS: {name: encode_measurement(m) for name, m in measured.items()}},
            metrics=metrics,
        )

    def _measure_all(
        self,
        on_window: Callable[[str], Callable[[WindowStat], None]],
        windows: Mapping[str, list[WindowStat]],
    ) -> dict[str, Measurement]:
        from perfkit import interrupts
        from perfkit.load import Session, eventloop

        interrupts.check()
        with contextlib.ExitStack() as stack:
            sessions: dict[str, Session] = {}
            for e in self.entries:
                inputs = InputSpec(
                    source=e.load.input_data,
                    batch_size=e.load.batch_size[0],
                    shapes=parse_shapes(e.load.shapes, flag=f"models.{e.name}.load.shape"),
                )
                target = TargetSpec(
                    url=self.url,
                    protocol="grpc" if self.protocol == "grpc" else "http",
                    model=e.name,
                )
                try:
                    sessions[e.name] = stack.enter_context(Session(target, inputs))
                except ServerUnavailable:
                    raise
                except PerfkitError as exc:
                    raise _ModelFailed(e.name, exc) from exc
            return eventloop.run(self._together(sessions, on_window, windows))

    async def _together(
        self,
        sessions: Mapping[str, Any],
        on_window: Callable[[str], Callable[[WindowStat], None]],
        windows: Mapping[str, list[WindowStat]],
    ) -> dict[str, Measurement]:
        """Every model's level on this loop (the module docstring's steps 1-3)."""
        from perfkit.load.metrics_scrape import MetricsScraper

        warmed = asyncio.Barrier(len(sessions))
        ended = asyncio.Barrier(len(sessions))
        max_windows = self.measure_settings.max_windows
        scraper = (
            None
            if self.metrics_url is None
            else MetricsScraper(self.metrics_url, self.metrics_interval_ms)
        )

        async def one(e: Member) -> Measurement:
            try:
                return await self._one(
                    e, sessions[e.name], warmed, ended, on_window(e.name),
                    lambda: len(windows[e.name]) >= max_windows,
                )  # fmt: skip
            except ServerUnavailable:
                raise
            except PerfkitError as exc:
                raise _ModelFailed(e.name, exc) from exc

        if scraper is not None:
            scraper.start()
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = {e.name: tg.create_task(one(e)) for e in self.entries}
        except BaseExceptionGroup as group:
            raise _first(group) from None
        finally:
            collected = None if scraper is None else await scraper.stop()
        measured = {name: task.result() for name, task in tasks.items()}
        if collected is not None:  # the server's (GPU) metrics: the trial's measurement's
            first = self.entries[0].name
            measured[first] = replace(measured[first], metrics=collected)
        return measured

    async def _one(
        self,
        e: Member,
        session: Any,
        warmed: asyncio.Barrier,
        ended: asyncio.Barrier,
        on_window: Callable[[WindowStat], None],
        should_stop: Callable[[], bool],
    ) -> Measurement:
        from perfkit.load.driver import LevelDriver
        from perfkit.load.level import DriverWindows, UnstableLevel, measure_windows, plan_level

        load = e.load
        level = float(load.concurrency[0] if load.mode == "concurrency" else load.request_rate[0])
        mode, plan = plan_level(load.mode, level, self._measure)
        drv = LevelDriver(
            session.new_pool(plan.closed_loop, plan.concurrency), plan, url=session.ctl.url
        )
        try:
            await drv.open()
            if self._measure.warmup_request_count:
                await drv.run_fixed(self._measure.warmup_request_count)
            await warmed.wait()
            source = _HeldLoad(DriverWindows(drv, self._measure))
            try:
                m = await measure_windows(
                    source, session, self._measure, mode, level,
                    on_window=on_window, should_stop=should_stop,
                )  # fmt: skip
            except UnstableLevel as exc:  # unstable is still information (stable=False)
                m = exc.measurement
            await ended.wait()
            await drv.stop()
            return m
        finally:
            await drv.close()

    def close(self) -> None:
        for control in self.controls.values():
            control.close()
        super().close()


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    """The exception to raise for a failed group of model tasks: the server gone first, then a
    model's failure, then whatever else."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for kind in (ServerUnavailable, _ModelFailed):
        for exc in leaves:
            if isinstance(exc, kind):
                return exc
    return leaves[0]


def _since(t0: int) -> float:
    return (time.perf_counter_ns() - t0) / 1e9


def evaluator_args(
    group: Group | None, objective: Any, study: Any, pipeline: Any = None
) -> dict[str, Any]:
    """The evaluator's own arguments: an ensemble's `pipeline`; a group's `GroupEvaluator`
    arguments (the group, the objective, and the reference of its scores, read from the study
    at each trial: `multi.reference_of`); none for one model."""
    if group is None:
        return {} if pipeline is None else {"pipeline": pipeline}
    keys = [f"{name}.{key}" for name in group.names for key, _ in objective.combined]
    return {
        "group": group,
        "objective": objective,
        "reference": lambda: reference_of(study.get_trials(deepcopy=False), keys),
    }
