"""Zero-config tuning: the `TuneSweep` of `perfkit tune -m MODEL`, built from the model and the machine.

`auto_sweep(model, repository=..., cpus=..., gpus=...)` reads the model's config.pbtxt (or, for a
zoo model not yet in the repository, the config the zoo writes; `perfkit.tune.run` builds it) and
returns a sweep whose space is:

- instance_count: 1..cpus on the CPU (every count up to 8, then powers of two and the core count);
  with GPUs and a backend that runs on them, KIND_GPU with 1..4 instances per GPU.
- max_batch_size: powers of two up to the model's own (or `max_batch_size`), at most four of them;
  "the model's own" is the larger of config.pbtxt's and config.pbtxt.orig's (the config a
  write-back replaced), so a rerun after a write-back searches the same sizes. A model that does
  not batch (0) stays at 0 and gets no batching dimension at all.
- dynamic_batching on/off, max_queue_delay_us in `QUEUE_DELAYS_US`, and preferred batch sizes
  none or [half, all] of the smallest max_batch_size searched, so every point is a config Triton
  accepts (a preferred size above max_batch_size is refused at load).
- the backend's own knobs from `perfkit.tune.knobs.machine_knobs`

The objective is "capacity" (the highest request rate within the latency budget, derived from
the default config's unloaded latency when no budget is given) or "throughput" (with the client
concurrency searched, and then a latency budget is required). `machine()` reads this host's CPUs
and GPUs. Pure but for reading config.pbtxt files and, in `machine()`, NVML.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from perfkit.errors import ConfigError
from perfkit.launch.settings import LaunchSettings
from perfkit.model_repo import ModelRepoError
from perfkit.model_repo.config import ModelConfig, load_config
from perfkit.sweepfile import (
    CapacitySettings,
    ConstraintSpec,
    Direction,
    LoadSettings,
    MeasureSettings,
    SearchSettings,
    SpaceSpec,
    TuneSweep,
)

Objective = Literal["capacity", "throughput"]
OBJECTIVES: dict[str, tuple[str, Direction]] = {
    "capacity": ("capacity_infer_per_s", "maximize"),
    "throughput": ("throughput_infer_per_s", "maximize"),
}
DEFAULT_TRIALS = 20
# Shorter than perf_analyzer's 5 s windows: 20 trials should take minutes, not an hour.
DEFAULT_MEASURE = MeasureSettings(
    window_ms=1000, stability_pct=15.0, max_windows=5, stability_windows=3, warmup_requests=32
)
QUEUE_DELAYS_US = (0, 100, 500, 2000)
# Instances per GPU searched on a GPU (Model Analyzer's automatic search goes to 5).
MAX_GPU_INSTANCES = 4
# Every CPU instance count up to this many, then powers of two (and the core count itself).
DENSE_CPU_COUNTS = 8
# max_batch_size values searched: the bound and up to this many halvings of it.
BATCH_SIZE_STEPS = 4
# The client concurrency searched by the throughput objective: powers of two up to this.
MAX_CONCURRENCY = 64
# Platforms and backends whose instances run on a GPU (KIND_GPU) when the machine has one.
GPU_BACKENDS = frozenset(
    {
        "onnxruntime",
        "onnxruntime_onnx",
        "pytorch",
        "pytorch_libtorch",
        "tensorrt",
        "tensorrt_plan",
        "tensorflow",
        "tensorflow_graphdef",
        "tensorflow_savedmodel",
    }
)
ENSEMBLE = "ensemble"
SOURCE = "perfkit tune -m"


def machine() -> tuple[int, int]:
    """(cpus, gpus) of this host: the CPUs this process may run on, the GPUs CUDA shows it."""
    from perfkit.nvml import visible_gpus

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(cpus, 1), len(visible_gpus())


def check_objective(objective: str) -> None:
    """Refuse an unknown objective before a server is started."""
    if objective not in OBJECTIVES:
        raise ConfigError(
            f"--objective: unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}"
        )


def auto_sweep(
    model: str,
    *,
    repository: Path,
    cpus: int,
    gpus: int = 0,
    zoo: str | None = None,
    url: str | None = None,
    protocol: Literal["grpc", "http"] = "grpc",
    launch: LaunchSettings | None = None,
    objective: Objective = "capacity",
    latency_budget_us: float | None = None,
    latency_percentile: float = 99.0,
    trials: int = DEFAULT_TRIALS,
    measure: MeasureSettings = DEFAULT_MEASURE,
    max_instances: int | None = None,
    max_batch_size: int | None = None,
    concurrency: tuple[int, ...] = (),
    output: Path | None = None,
) -> TuneSweep:
    """The sweep of a zero-config tune of `model` on a machine with `cpus` cores and `gpus` GPUs.

    Args:
        model: the model's name in `repository`, or a zoo model's (then built there by
            `perfkit.tune.run` when missing; `zoo` names another zoo model to build as `model`).
        repository: the model repository holding (or to hold) the model.
        cpus, gpus: the machine the server runs on (`machine()` for this host).
        objective: "capacity" (load not searched: the capacity search finds the rate) or
            "throughput" (the client concurrency is searched too, so a budget is required).
        latency_budget_us: the budget on the `latency_percentile` latency; None: for capacity,
            derived from the default config's unloaded latency; for throughput, refused
            unless `concurrency` pins a single level.
        max_instances: the largest instance count searched (per GPU on GPUs).
        max_batch_size: the largest max_batch_size searched (default: the model's own).
        concurrency: the client concurrency levels of a throughput tune (default: powers of two
            up to `MAX_CONCURRENCY`).

    Raises:
        ConfigError: the model has no config.pbtxt and is not a zoo model, or a flag does not fit.
    """
    if objective not in OBJECTIVES:
        raise ConfigError(
            f"--objective: unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}"
        )
    for name, value in (("--max-instances", max_instances), ("--max-batch-size", max_batch_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{name}: must be at least 1, got {value}")
    config, zoo = _model_config(model, repository, zoo)
    steps = _ensemble_steps(config, repository)
    if max_batch_size is None and config.max_batch_size > 0:
        max_batch_size = max(config.max_batch_size, _original_batch_size(repository / model))
    space = _space(config, steps, cpus, gpus, max_instances, max_batch_size)
    load = LoadSettings()
    if objective == "throughput":
        levels = concurrency or _powers(1, MAX_CONCURRENCY)
        if latency_budget_us is None and len(levels) > 1:
            raise ConfigError(
                "--objective throughput searches the client concurrency "
                f"({', '.join(map(str, levels))}), and without a latency budget the highest "
                "always wins: give --latency-budget-ms, or one level with --concurrency N"
            )
        load = LoadSettings(concurrency=levels)
    elif concurrency:
        raise ConfigError(
            "--concurrency: the capacity objective searches the request rate itself; "
            "use --objective throughput to search the concurrency"
        )
    return TuneSweep(
        source=f"{SOURCE} {model}",
        model=model,
        repository=repository,
        zoo=zoo,
        url=url,
        protocol=protocol,
        launch=launch or LaunchSettings(),
        space=space,
        load=load,
        measure=measure,
        objectives=(OBJECTIVES[objective],),
        constraints=ConstraintSpec(
            latency_percentile=latency_percentile, latency_budget_us=latency_budget_us
        ),
        trials=trials,
        search=SearchSettings(),
        capacity=CapacitySettings(),
        output=output,
    )


def _model_config(model: str, repository: Path, zoo: str | None) -> tuple[ModelConfig, str | None]:
    """The model's config and the zoo model to build (None when it is in the repository)."""
    path = repository / model / "config.pbtxt"
    if path.exists():
        return _read(path), None
    from perfkit import zoo as zoo_models

    name = zoo or model
    if name not in zoo_models.SPECS:
        raise ConfigError(
            f"-m/--model: {path} does not exist and {name!r} is not a zoo model (perfkit models "
            "list). Point --model-repository at the repository holding the model."
        )
    spec = zoo_models.spec(name)
    return zoo_models.model_config(spec, model), name


def composing_models(sweep: TuneSweep) -> tuple[str, ...]:
    """The composing models of the ensemble `sweep` tunes (each gets the [space] dimensions of
    its own, `perfkit.tune.ensemble`); empty for any other model, or one not on disk or in the zoo."""
    try:
        config, _ = _model_config(sweep.model, sweep.repository, sweep.zoo)
    except ConfigError:
        return ()
    if config.platform != ENSEMBLE:
        return ()
    return tuple(dict.fromkeys(step.model_name for step in config.ensemble_scheduling.step))


def _original_batch_size(model_dir: Path) -> int:
    """max_batch_size of the config a write-back replaced (config.pbtxt.orig), or 0: a second
    zero-config tune searches the sizes the first did, not only those up to its winner's."""
    path = model_dir / "config.pbtxt.orig"
    return _read(path).max_batch_size if path.is_file() else 0


def _read(path: Path) -> ModelConfig:
    try:
        return load_config(path)
    except ModelRepoError as exc:  # the pure module's own error: a ConfigError to perfkit's users
        raise ConfigError(str(exc)) from exc


def _ensemble_steps(config: ModelConfig, repository: Path) -> list[ModelConfig]:
    """An ensemble's composing models' configs (empty for any other model)."""
    if config.platform != ENSEMBLE:
        return []
    names = dict.fromkeys(step.model_name for step in config.ensemble_scheduling.step)
    # A zoo ensemble not yet built: its composing models come with it (`perfkit.zoo.build`).
    return [_model_config(name, repository, None)[0] for name in names]


def _space(
    config: ModelConfig,
    steps: list[ModelConfig],
    cpus: int,
    gpus: int,
    max_instances: int | None,
    max_batch_size: int | None,
) -> SpaceSpec:
    models = steps or [config]
    on_gpu = gpus > 0 and all(_runs_on_gpu(c) for c in models)
    dims: dict[str, Any] = {}
    if on_gpu:
        dims["instance_count"] = tuple(range(1, min(max_instances or MAX_GPU_INSTANCES, 64) + 1))
        # The kind is set only for one instance group (space.check_instances); with several,
        # each keeps its own and the count applies to each.
        if not steps and len(config.instance_group) <= 1:
            dims["instance_kind"] = ("KIND_GPU",)
    else:
        dims["instance_count"] = _cpu_counts(min(cpus, max_instances or cpus))
    batching = all(c.max_batch_size > 0 for c in models) and not any(
        c.HasField("sequence_batching") for c in models
    )
    if steps:
        # An ensemble's max_batch_size is its own, and its composing models' stay at least it
        # (`perfkit.tune.ensemble`): only their batchers are searched, without preferred sizes
        # (each composing model has its own max_batch_size).
        if batching:
            dims.update(dynamic_batching=(False, True), max_queue_delay_us=QUEUE_DELAYS_US)
    elif config.max_batch_size > 0:
        sizes = _batch_sizes(max_batch_size or config.max_batch_size)
        dims["max_batch_size"] = sizes
        if batching:
            dims.update(
                dynamic_batching=(False, True),
                preferred_batch_sizes=_preferred(min(sizes)),
                max_queue_delay_us=QUEUE_DELAYS_US,
            )
    dims = {k: v for k, v in dims.items() if v}
    return SpaceSpec(**{**_knobs(config, cpus, gpus), **dims})


def _runs_on_gpu(config: ModelConfig) -> bool:
    return config.backend in GPU_BACKENDS or config.platform in GPU_BACKENDS


def _cpu_counts(cpus: int) -> tuple[int, ...]:
    dense = tuple(range(1, min(cpus, DENSE_CPU_COUNTS) + 1))
    return tuple(sorted({*dense, *_powers(1, cpus), cpus}))


def _powers(low: int, high: int) -> tuple[int, ...]:
    """Powers of two from `low` (a power of two) up to `high`."""
    out: list[int] = []
    value = low
    while value <= high:
        out.append(value)
        value *= 2
    return tuple(out)


def _batch_sizes(bound: int) -> tuple[int, ...]:
    """`bound` and up to BATCH_SIZE_STEPS - 1 halvings of it, smallest first: 32 -> 4, 8, 16, 32."""
    sizes = {bound}
    value = bound
    for _ in range(BATCH_SIZE_STEPS - 1):
        value //= 2
        if value < 1:
            break
        sizes.add(value)
    return tuple(sorted(sizes))


def _preferred(smallest: int) -> tuple[tuple[int, ...], ...]:
    """No preferred size, and [half, all] of the smallest max_batch_size searched: every set
    fits every max_batch_size of the space, so no point is a config Triton refuses."""
    if smallest < 2:
        return ((),)
    return ((), (smallest // 2, smallest))


def _knobs(config: ModelConfig, cpus: int, gpus: int) -> dict[str, Any]:
    """The backend's knobs worth searching on this machine, as SpaceSpec fields (parameters,
    fields, accelerators): `perfkit.tune.knobs.machine_knobs`."""
    from perfkit.tune.knobs import machine_knobs

    return machine_knobs(config, cpus=cpus, gpus=gpus)
