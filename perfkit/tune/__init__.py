"""perfkit tune: Optuna search over config.pbtxt variants measured on a live server.

The API is `perfkit.tune.run(sweep, ...) -> TuneResult` (what `perfkit tune` calls):

    from perfkit.tune import load_sweep, run
    result = run(load_sweep(Path("sweeps/resnet50-cpu.toml")), dry_run=True)
    print(result.best_config_pbtxt, result.gain_pct)

Modules, for callers that assemble a tune themselves (the benchmarks do):

    perfkit.sweepfile.load_sweep(path) -> TuneSweep   # TOML -> frozen spec (errors name file:key)
    space.SearchSpace.from_specs(space, load)         # dimensions <-> Optuna <-> ModelConfig variants
    knobs.machine_knobs(config, cpus=, gpus=)         # backend parameters, proto-path fields, cache
    perfkit.formats.prepare(sweep, model_dir, ...)    # format candidates made, checked, placed
    objective.Objective(targets, constraints)         # scores and constraint violations
    storage.open_storage(url) / open_study(...)       # SQLite or PostgreSQL, resume rules
    identity.target_of(info, ...) / open_target_study # the target, the study's name and targets
    evaluate.LiveEvaluator(url=..., ...)              # load with a config override, measure one level
    capacity.search(measure, settings, ...)           # capacity objective: rate bracket + bisection (pure)
    capacity_live.CapacityEvaluator(...)              # ... measured on a live server, per variant
    gpu.gpu_source(metrics_url)                       # the GPUs whose metrics each trial records
    samplers.make_sampler(settings, space)            # the study's sampler, tagged per worker
    tuner.Tuner(...).run()                            # the ask/tell loop
    stopping.trials_without_improvement(trials, obj)  # the patience rule
    finish.finish(study, sweep, objective, url, note) # top-k load sweep, --validate-on
    records                                           # trial attrs, study queries, TrialRecord
    output.build_result / write_outputs / write_back  # TuneResult, MA layout, write-back
    multi / multi_measure                             # several models tuned together ([[models]])
    server.server(...) / setup                        # the server a tune measures on; its set-up
    api.run                                           # all of the above, with the server's restarts
    auto.auto_sweep(model, repository=, cpus=, gpus=) # zero-config: the sweep from model + machine
    describe.describe_space(sweep)                    # what a tune searches, in words
"""

from __future__ import annotations

from perfkit.results import TrialRecord, TuneResult
from perfkit.sweepfile import TuneSweep, load_sweep, parse_sweep
from perfkit.tune.api import MAX_SERVER_RESTARTS, TuneOutcome, run

__all__ = [
    "MAX_SERVER_RESTARTS",
    "TrialRecord",
    "TuneOutcome",
    "TuneResult",
    "TuneSweep",
    "load_sweep",
    "parse_sweep",
    "run",
]
