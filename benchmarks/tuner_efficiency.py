"""Tuner efficiency (issue 14, acceptance 6): trials TPE needs to come within 3 % of the best of a
240-variant grid, and the seconds each trial spends beyond its measurement windows.

    .venv/bin/python benchmarks/tuner_efficiency.py            # full: 240 live variants, 500 ms windows
    .venv/bin/python benchmarks/tuner_efficiency.py --quick    # the same with short windows (smoke run)
    .venv/bin/python benchmarks/tuner_efficiency.py --save-table grid.json   # keep the measured grid
    .venv/bin/python benchmarks/tuner_efficiency.py --load-table grid.json   # replays only, no server

Method. Measurement noise on a small shared machine can exceed 3 %, so comparing a live TPE run with
a separate live grid run would mostly measure noise. Instead:

1. The whole grid (240 variants of the zoo mlp: instance count 1-3 x max_batch_size 4-32 x queue
   delay 0-2000 us x client concurrency 1-16, dynamic batching on) is measured live once on the
   embedded server, through the real tuner loop (grid sampler, SQLite storage). Each trial's time
   outside its measurement windows (ask, variant build, load through the repository API, warm-up,
   bookkeeping, tell) is recorded: that is the per-trial overhead. The best variants are then
   measured twice more and keep their median run: on a shared 2-core machine one pass crowns a
   lucky outlier.
2. TPE (the sampler and settings `perfkit tune` uses by default) is then replayed for several seeds
   against that table: the same tuner loop, default config first, dedupe, constraints and the
   neighbour rule included, but each suggested variant "measures" by looking up the grid's stored
   measurement. The count is the number of measured trials (the default included) until one is
   within 3 % of the grid's best feasible score. The acceptance figure is the median over seeds
   0-2; more seeds are printed too. A random sampler is replayed the same way for comparison, and
   the mean draws a uniform random search needs, (N + 1) / (near + 1), says how hard the table is.

The overhead is printed by part: loading the variant (the repository API), client setup + warm-up,
and the rest (ask, the study's storage writes, tell). Take the figures on a quiet machine: other
load on 2 cores makes p99 noisy (feasibility turns random) and the table flat. `--save-table` keeps
a measured grid; `--load-table` replays it again (e.g. after a sampler change) without measuring.
"""

from __future__ import annotations

import argparse
import json
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
from perfkit.sweepfile import (
    ConstraintSpec,
    LoadSettings,
    MeasureSettings,
    SearchSettings,
    SpaceSpec,
)
from perfkit.tune import records as rec
from perfkit.tune import storage as st
from perfkit.tune.evaluate import LiveEvaluator, Outcome, WindowWatch
from perfkit.tune.objective import Objective, metrics_of
from perfkit.tune.space import SearchSpace, build_variant, describe, variant_key
from perfkit.tune.tuner import LoopSettings, Tuner, make_sampler

MODEL = "mlp"
TARGET_FRACTION = 0.97
# 3 x 4 x 4 x 5 = 240 variants. On 2 cores they really differ: instances 1-3 (3 oversubscribes),
# batches 4-32 with queue delays 0-2 ms (the batcher's trade of latency for throughput), and the
# client concurrency 1-16 (throughput grows with it until the p99 budget bites).
SPACE = SpaceSpec(
    instance_count=(1, 2, 3),
    max_batch_size=(4, 8, 16, 32),
    dynamic_batching=(True,),
    max_queue_delay_us=(0, 100, 500, 2000),
)
LOAD = LoadSettings(concurrency=(1, 2, 4, 8, 16), baseline={"concurrency": 8.0})
LATENCY_BUDGET_US = 20_000.0
# The grid's leaders are measured again so that a lucky single run does not set the reference.
CONFIRM_TOP = 10
CONFIRM_REPEATS = 2
CONFIRM_ROUNDS = 3
# The acceptance: the median over these seeds, at most this fraction of the grid.
ACCEPT_SEEDS = 3
ACCEPT_FRACTION = 0.10
OVERHEAD_LIMIT_S = 1.0
# Full mode: 240 x (<= 2 s of windows + overhead) + the leaders' repeats: about 10 min on 2 cores.
FULL = MeasureSettings(
    window_ms=500, max_windows=4, stability_windows=3, stability_pct=15, warmup_requests=32
)
QUICK = MeasureSettings(
    window_ms=150, max_windows=3, stability_windows=2, stability_pct=30, warmup_requests=16
)


class RecordingEvaluator:
    """The live evaluator, keeping every measurement by variant key for the replays, and where
    each evaluation's time outside its windows went."""

    def __init__(self, live: LiveEvaluator) -> None:
        self.live = live
        self.table: dict[str, Measurement] = {}
        self.variants: dict[str, tuple[ModelConfig, dict[str, Any]]] = {}
        # Per evaluation: seconds loading the variant, and the rest outside the windows (client
        # session setup, warm-up requests, the end of the level).
        self.load_s: list[float] = []
        self.warmup_s: list[float] = []

    def evaluate(
        self, config: ModelConfig, params: Mapping[str, Any], watch: WindowWatch
    ) -> Outcome:
        t0 = time.perf_counter()
        outcome = self.live.evaluate(config, params, watch)
        total = time.perf_counter() - t0
        self.load_s.append(outcome.load_s)
        self.warmup_s.append(max(total - outcome.load_s - outcome.window_s, 0.0))
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
    search = SearchSettings()  # `perfkit tune`'s defaults (sampler settings as api.py passes them)
    settings = LoopSettings(
        model=MODEL, study_name=f"replay-{sampler}-{seed}", trials=budget, sampler=sampler,  # type: ignore[arg-type]
        seed=seed, prune=False, startup_trials=search.startup_trials,
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


def space_label(space: SearchSpace) -> str:
    return " x ".join(f"{d.name}{list(d.values)}" for d in space.dims)


def measure_grid(
    work: Path, measure: MeasureSettings, space: SearchSpace, objective: Objective,
    base: ModelConfig,
) -> dict[str, Any]:  # fmt: skip
    """The whole grid, live, through the real tuner loop; then its leaders re-measured. Returns
    the table and the timings, as `--save-table` writes them."""
    repo = work / "repo"
    grid_n = space.size()
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
        confirmed: list[str] = []
        for _ in range(CONFIRM_ROUNDS):
            # Until the top of the table is all re-measured: a leader's median run can fall below
            # a variant measured once, which must then be re-measured too before it is the best.
            now = {
                k: score(m, objective) or 0.0 for k, m in recorder.table.items() if k != default_key
            }
            top = sorted(now, key=lambda k: now[k], reverse=True)[:CONFIRM_TOP]
            todo = [k for k in top if k not in confirmed]
            if not todo:
                break
            recorder.confirm(todo, objective, CONFIRM_REPEATS)
            confirmed += todo
        live.close()
    return {
        "model": MODEL,
        "space": space_label(space),
        "window_ms": measure.window_ms,
        "quick": measure == QUICK,
        "grid_s": grid_s,
        "overheads_s": tuner.overheads_s,
        # One evaluation per live trial (the grid has no variant that fails to build).
        "load_s": recorder.load_s[: len(tuner.overheads_s)],
        "warmup_s": recorder.warmup_s[: len(tuner.overheads_s)],
        "confirmed": confirmed,
        "table": {k: rec.encode_measurement(m) for k, m in recorder.table.items()},
    }


def read_table(path: Path, space: SearchSpace) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    if data.get("model") != MODEL or data.get("space") != space_label(space):
        raise SystemExit(
            f"--load-table {path}: measured on another space ({data.get('space')!r}); this "
            f"benchmark's space is {space_label(space)!r}. Measure it again (--save-table)."
        )
    return data


def decode_table(data: Mapping[str, Any]) -> dict[str, Measurement]:
    table: dict[str, Measurement] = {}
    for key, value in data["table"].items():
        m = rec.decode_measurement(value)
        if m is not None:
            table[key] = m
    return table


def fmt_med_max(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({max(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short windows (a smoke run)")
    parser.add_argument(
        "--seeds", type=int, default=5,
        help=f"seeds to replay per sampler (the acceptance is the median of the first {ACCEPT_SEEDS})",
    )  # fmt: skip
    parser.add_argument("--workdir", type=Path, help="keep the repository and study here")
    parser.add_argument("--save-table", type=Path, help="write the measured grid (JSON) here")
    parser.add_argument(
        "--load-table", type=Path, help="replay against a grid saved by --save-table (no server)"
    )
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    measure = QUICK if args.quick else FULL
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

    if args.load_table is not None:
        data = read_table(args.load_table, space)
        source = f"table {args.load_table}, measured with {data['window_ms']} ms windows"
    else:
        print(
            f"tuner efficiency: zoo {MODEL}, {grid_n}-variant grid ({space_label(space)}, dynamic "
            f"batching on), maximize throughput with p99 <= {LATENCY_BUDGET_US / 1000:g} ms; "
            f"windows {measure.window_ms} ms" + (" (--quick)" if args.quick else ""),
            flush=True,
        )
        data = measure_grid(work, measure, space, objective, base)
        source = f"measured live now with {measure.window_ms} ms windows"
        if args.save_table is not None:
            args.save_table.write_text(json.dumps(data))
            print(f"grid table written to {args.save_table}")
    table = decode_table(data)
    points = {variant_key(build_variant(base, p), p): p for p in space.points()}
    found = sum(1 for k in points if k in table)
    if args.load_table is not None and found < grid_n // 2:
        print(
            f"--load-table {args.load_table}: only {found} of {grid_n} variants of this checkout's "
            f"zoo {MODEL} config are in the table (the base config changed?); measure it again",
            file=sys.stderr,
        )
        return 1

    default_key = variant_key(base, space.baseline_load(LOAD))
    grid_scores = {
        k: s
        for k, m in table.items()
        if k != default_key and (s := score(m, objective)) is not None
    }
    if not grid_scores:
        print("no grid variant met the latency budget; nothing to compare", file=sys.stderr)
        return 1
    best_key = max(grid_scores, key=lambda k: grid_scores[k])
    best = grid_scores[best_key]
    target = best * TARGET_FRACTION
    near = sum(1 for s in grid_scores.values() if s >= target)
    print(
        f"grid ({source}): {len(table)} variants, {data['grid_s']:.0f} s live; "
        f"{len(data['confirmed'])} leaders re-measured {CONFIRM_REPEATS} more times (median run "
        f"kept) until the top {CONFIRM_TOP} were all re-measured; "
        f"{len(grid_scores)} within the budget; grid best {best:,.1f} infer/s "
        f"({describe(points[best_key]) if best_key in points else best_key}); {near} of {grid_n} variants "
        f"are within 3 % of it (a uniform random search needs {(grid_n + 1) / (near + 1):.0f} "
        f"draws on average)",
        flush=True,
    )

    # 2. Replays against the grid's table.
    results: dict[str, list[int | None]] = {}
    for sampler in ("tpe", "random"):
        results[sampler] = [
            replay(sampler, seed, table, base, target, space, objective, grid_n + 1)
            for seed in range(args.seeds)
        ]

    def med(values: list[int | None]) -> float:
        return statistics.median(v if v is not None else grid_n + 1 for v in values)

    accept = med(results["tpe"][:ACCEPT_SEEDS])
    limit = grid_n * ACCEPT_FRACTION
    print(
        f"TPE trials to within 3 % of the grid best (default included): median {accept:g} over "
        f"seeds 0-{ACCEPT_SEEDS - 1} -> target <= {limit:g} ({ACCEPT_FRACTION:.0%} of {grid_n}): "
        f"{'PASS' if accept <= limit else 'FAIL'}; per seed {results['tpe']}, median "
        f"{med(results['tpe']):g} over {args.seeds} seeds"
    )
    print(
        f"random sampler, same replay: median {med(results['random'][:ACCEPT_SEEDS]):g} over seeds "
        f"0-{ACCEPT_SEEDS - 1}; per seed {results['random']}, median {med(results['random']):g}"
    )
    overheads, load_s, warm_s = data["overheads_s"], data["load_s"], data["warmup_s"]
    # The rest of each trial's overhead: ask, the study's storage writes, bookkeeping, tell.
    if not len(overheads) == len(load_s) == len(warm_s):  # a variant failed before loading
        load_s = warm_s = [0.0]
    rest = [o - a - b for o, a, b in zip(overheads, load_s, warm_s, strict=False)]
    over_median, over_max = statistics.median(overheads), max(overheads)
    print(
        f"overhead per trial beyond its measurement windows ({len(overheads)} live trials): "
        f"median {over_median:.2f} s, mean {statistics.fmean(overheads):.2f} s, max "
        f"{over_max:.2f} s -> target <= {OVERHEAD_LIMIT_S:g} s: "
        f"{'PASS' if over_median <= OVERHEAD_LIMIT_S else 'FAIL'} (max "
        f"{'within' if over_max <= OVERHEAD_LIMIT_S else 'over'}); median (max) of its parts: "
        f"loading the variant {fmt_med_max(load_s)}, client setup + warm-up "
        f"{fmt_med_max(warm_s)}, ask + study storage + tell {fmt_med_max(rest)}"
    )
    if data.get("quick", data["window_ms"] == QUICK.window_ms):
        print(
            "--quick: short windows make a noisy table (a smoke run); the targets are for the full run"
        )
    print(
        "method: the grid was measured live once (its leaders three times, median kept); each "
        "sampler seed was replayed against that table (each suggestion looks up the grid's "
        "measurement), so measurement noise cannot decide the count."
    )
    return 0 if accept <= limit and over_median <= OVERHEAD_LIMIT_S else 1


if __name__ == "__main__":
    sys.exit(main())
