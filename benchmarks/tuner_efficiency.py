"""Tuner efficiency (issue 4, acceptance 6): trials TPE needs to come within 3 % of the grid's best,
and the seconds each trial spends beyond its measurement windows.

    .venv/bin/python benchmarks/tuner_efficiency.py            # full: 48 live variants, 1 s windows
    .venv/bin/python benchmarks/tuner_efficiency.py --quick    # the same with short windows

Method. Measurement noise on a small shared machine can exceed 3 %, so comparing a live TPE run with
a separate live grid run would mostly measure noise. Instead:

1. The whole grid (48 variants of the zoo mlp: instance count x max_batch_size x queue delay x
   client concurrency, dynamic batching on) is measured live once on the embedded server, through
   the real tuner loop (grid sampler, SQLite storage). Each trial's time outside its measurement
   windows (ask, variant build, load through the repository API, warm-up, bookkeeping, tell) is
   recorded: that is the per-trial overhead. The 8 best variants are then measured twice more and
   keep their median run: on a shared 2-core machine one pass crowns a lucky outlier.
2. TPE (the tuner's default sampler and settings) is then replayed for several seeds against that
   table: the same tuner loop, default config first, dedupe and constraints included, but each
   suggested variant "measures" by looking up the grid's stored measurement. The count is the number
   of measured trials (the default included) until one is within 3 % of the grid's best feasible
   score. A random sampler is replayed the same way for comparison.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna

from perfkit import zoo
from perfkit.launch import EmbeddedServer
from perfkit.model_repo.config import ModelConfig, load_config
from perfkit.results import Measurement, TrialRecord
from perfkit.sweepfile import ConstraintSpec, LoadSettings, MeasureSettings, SpaceSpec
from perfkit.tune import storage as st
from perfkit.tune.evaluate import LiveEvaluator, Outcome, WindowWatch
from perfkit.tune.objective import Objective, metrics_of
from perfkit.tune.space import SearchSpace, variant_key
from perfkit.tune.tuner import LoopSettings, Tuner, make_sampler

MODEL = "mlp"
TARGET_FRACTION = 0.97
SPACE = SpaceSpec(
    instance_count=(1, 2),
    max_batch_size=(8, 32),
    dynamic_batching=(True,),
    max_queue_delay_us=(0, 1000),
)
LOAD = LoadSettings(concurrency=(1, 2, 4, 8, 16, 32), baseline={"concurrency": 8.0})
LATENCY_BUDGET_US = 20_000.0
# The grid's leaders are measured again so that a lucky single run does not set the reference.
CONFIRM_TOP = 8
CONFIRM_REPEATS = 2


class RecordingEvaluator:
    """The live evaluator, keeping every measurement by variant key for the replays."""

    def __init__(self, live: LiveEvaluator) -> None:
        self.live = live
        self.table: dict[str, Measurement] = {}
        self.variants: dict[str, tuple[ModelConfig, dict[str, Any]]] = {}

    def evaluate(
        self, config: ModelConfig, params: Mapping[str, Any], watch: WindowWatch
    ) -> Outcome:
        outcome = self.live.evaluate(config, params, watch)
        if outcome.measurement is not None and outcome.error is None:
            key = variant_key(config, params)
            self.table[key] = outcome.measurement
            self.variants[key] = (config, dict(params))
        return outcome

    def confirm(self, keys: list[str], objective: Objective, repeats: int) -> None:
        """Measure `keys` `repeats` more times; keep each one's median run (by its score).

        A single pass over a noisy grid crowns a lucky outlier (the winner's curse); re-measuring
        the leaders makes the reference best a number the variant actually delivers.
        """
        for key in keys:
            config, params = self.variants[key]
            runs = [self.table[key]]
            for _ in range(repeats):
                outcome = self.live.evaluate(config, params, lambda _w: None)
                if outcome.measurement is not None and outcome.error is None:
                    runs.append(outcome.measurement)
            runs.sort(key=lambda m: score(m, objective) or 0.0)
            self.table[key] = runs[len(runs) // 2]


class ReplayEvaluator:
    """Answers from the grid's table instead of measuring."""

    def __init__(self, table: Mapping[str, Measurement]) -> None:
        self.table = table

    def evaluate(
        self, config: ModelConfig, params: Mapping[str, Any], watch: WindowWatch
    ) -> Outcome:
        m = self.table.get(variant_key(config, params))
        if m is None:
            return Outcome(measurement=None, error="not in the grid table (failed live)")
        return Outcome(measurement=m, window_s=m.duration_ns / 1e9)


class _Reached(Exception):
    pass


def score(m: Measurement, objective: Objective) -> float | None:
    metrics = metrics_of(m)
    return metrics["throughput_infer_per_s"] if objective.feasible(metrics) else None


def replay(
    sampler: str, seed: int, table: Mapping[str, Measurement], base: ModelConfig, target: float,
    space: SearchSpace, objective: Objective, budget: int,
) -> int | None:  # fmt: skip
    """Measured trials (default included) until one scores >= target; None if never."""
    settings = LoopSettings(
        model=MODEL, study_name=f"replay-{sampler}-{seed}", trials=budget, sampler=sampler,  # type: ignore[arg-type]
        seed=seed, prune=False,
    )  # fmt: skip
    study = optuna.create_study(
        study_name=settings.study_name, direction="maximize", sampler=make_sampler(settings, space)
    )
    count = 0

    def on_trial(record: TrialRecord) -> None:
        nonlocal count
        count += 1
        m = record.measurement
        value = None if m is None or not record.feasible else score(m, objective)
        if value is not None and value >= target:
            raise _Reached

    tuner = Tuner(
        settings=settings, space=space, objective=objective, base_config=base,
        baseline_load=space.baseline_load(LOAD), study=study, created=True,
        evaluator=ReplayEvaluator(table), on_trial=on_trial,
    )  # fmt: skip
    try:
        tuner.run()
    except _Reached:
        return count
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short windows (a smoke run)")
    parser.add_argument("--seeds", type=int, default=3, help="TPE seeds to replay (median taken)")
    parser.add_argument("--workdir", type=Path, help="keep the repository and study here")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    measure = (
        MeasureSettings(window_ms=200, max_windows=4, stability_windows=2, stability_pct=30, warmup_requests=16)
        if args.quick
        else MeasureSettings(window_ms=1000, max_windows=6, stability_windows=3, stability_pct=15, warmup_requests=32)
    )  # fmt: skip
    space = SearchSpace.from_specs(SPACE, LOAD)
    objective = Objective(
        (("throughput_infer_per_s", "maximize"),),
        ConstraintSpec(latency_percentile=99.0, latency_budget_us=LATENCY_BUDGET_US),
    )
    work = args.workdir or Path(tempfile.mkdtemp(prefix="perfkit-tuner-eff-"))
    repo = work / "repo"
    if not (repo / MODEL / "config.pbtxt").exists():
        zoo.build(MODEL, repo)
    base = load_config(repo / MODEL / "config.pbtxt")
    grid_n = space.size()
    print(
        f"tuner efficiency: zoo {MODEL}, {grid_n}-variant grid "
        f"({' x '.join(f'{d.name}{list(d.values)}' for d in space.dims)}, dynamic batching on), "
        f"maximize throughput with p99 <= {LATENCY_BUDGET_US / 1000:g} ms; windows {measure.window_ms} ms"
        + (" (--quick)" if args.quick else "")
    )

    # 1. The whole grid, live, through the real tuner loop.
    settings = LoopSettings(
        model=MODEL, study_name="grid", trials=grid_n + 1, sampler="grid", seed=0, prune=False
    )
    storage = st.open_storage(st.default_storage_url(work))
    study, created = st.open_study(storage, "grid", ["maximize"], make_sampler(settings, space))
    started = time.monotonic()
    with EmbeddedServer(repo, load_models=[MODEL]) as server:
        live = LiveEvaluator(
            url=server.grpc_url, protocol="grpc", model=MODEL, load=LOAD, measure=measure
        )
        recorder = RecordingEvaluator(live)
        tuner = Tuner(
            settings=settings, space=space, objective=objective, base_config=base,
            baseline_load=space.baseline_load(LOAD), study=study, created=created, evaluator=recorder,
        )  # fmt: skip
        tuner.run()
        grid_s = time.monotonic() - started
        default_key = variant_key(base, space.baseline_load(LOAD))
        first = {
            k: score(m, objective) or 0.0 for k, m in recorder.table.items() if k != default_key
        }
        leaders = sorted(first, key=lambda k: first[k], reverse=True)[:CONFIRM_TOP]
        recorder.confirm(leaders, objective, CONFIRM_REPEATS)
        live.close()
    grid_scores = {
        k: s
        for k, m in recorder.table.items()
        if k != default_key and (s := score(m, objective)) is not None
    }
    if not grid_scores:
        print("no grid variant met the latency budget; nothing to compare", file=sys.stderr)
        return 1
    best_key = max(grid_scores, key=lambda k: grid_scores[k])
    best = grid_scores[best_key]
    target = best * TARGET_FRACTION
    near = sum(1 for s in grid_scores.values() if s >= target)
    overheads = tuner.overheads_s
    print(
        f"grid: {len(recorder.table)} variants measured live in {grid_s:.0f} s; the top "
        f"{CONFIRM_TOP} re-measured {CONFIRM_REPEATS} more times (median run kept) "
        f"({len(grid_scores)} within the budget); grid best score {best:,.1f} infer/s; "
        f"{near} of {grid_n} variants are within 3 % of it"
    )

    # 2. Replays against the grid's table.
    results: dict[str, list[int | None]] = {}
    for sampler in ("tpe", "random"):
        results[sampler] = [
            replay(sampler, seed, recorder.table, base, target, space, objective, grid_n + 1)
            for seed in range(args.seeds)
        ]

    def med(values: list[int | None]) -> float:
        return statistics.median(v if v is not None else grid_n + 1 for v in values)

    tpe_median = med(results["tpe"])
    limit = grid_n / 4
    print(
        f"TPE trials to within 3 % of the grid best: median {tpe_median:g} over {args.seeds} seeds "
        f"(per seed {results['tpe']}; default config included) -> target <= {limit:g}: "
        f"{'PASS' if tpe_median <= limit else 'FAIL'}"
    )
    print(
        f"random sampler, same replay: median {med(results['random']):g} (per seed {results['random']})"
    )
    over_median = statistics.median(overheads)
    print(
        f"overhead per trial beyond its measurement windows: median {over_median:.2f} s, "
        f"mean {statistics.fmean(overheads):.2f} s, max {max(overheads):.2f} s over {len(overheads)} "
        f"live trials -> target <= 1 s: {'PASS' if over_median <= 1.0 else 'FAIL'}"
    )
    if args.quick:
        print(
            "--quick: short windows make a noisy table (a smoke run); the targets are for the full run"
        )
    print(
        "method: the grid was measured live once (its leaders three times, median kept); TPE seeds were replayed against that table (each "
        "suggestion looks up the grid's measurement), so measurement noise cannot decide the count."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
