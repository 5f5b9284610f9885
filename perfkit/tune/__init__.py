"""perfkit tune: Optuna search over config.pbtxt variants measured on a live server.

sweepfile.load_sweep(path) -> SweepSpec           # perfkit.sweepfile: TOML -> frozen spec
space.SearchSpace.from_specs(space, load)         # dimensions <-> Optuna <-> ModelConfig variants
objective.Objective(targets, constraints)         # scores and constraint violations
storage.open_storage(url) / open_study(...)       # SQLite or PostgreSQL, resume rules
evaluate.LiveEvaluator(url=..., ...)              # load with a config override, measure one level
tuner.Tuner(...).run()                            # the ask/tell loop
output.build_result / write_outputs / write_back  # TuneResult, MA layout, write-back
perfkit.cli.tune.run_tune(spec)                   # all of the above, as `perfkit tune` runs it
"""
