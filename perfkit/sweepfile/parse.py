"""Tune sweep files (sweeps/*.toml) -> frozen `TuneSweep`. Errors name `file:key` and the reason.

A sweep file says what to tune and how:

    [model]        name, repository (relative to the working directory), zoo (build it if missing)
    [[models]]     instead of [model]: several models tuned together on one server, each with
                   name, zoo, weight, repository, and [models.space] / [models.load] /
                   [models.constraints] over the sweep's tables (perfkit.sweepfile.models)
    [server]       url (omit for the embedded server), protocol ("grpc" | "http"), startup_timeout_s,
                   metrics_url (the server's Prometheus metrics; default <url host>:8002/metrics),
                   without url: launch ("embedded" | "local" | "docker") and its settings
                   (tritonserver, image, gpus, shm_size, args, env: perfkit.launch.settings),
                   validate_on (another server, "host:port", in explicit model-control mode:
                   the top configs are re-measured there after the search, perfkit.tune.finish)
    [space]        instance_count, instance_kind, max_batch_size, dynamic_batching,
                   preferred_batch_sizes, max_queue_delay_us: lists of values to search
                   (instance_count is per instance group, and per listed GPU for KIND_GPU);
                   response_cache ([true, false]), accelerators (ONNX Runtime's: "none", "cuda",
                   "tensorrt", "tensorrt:FP16", "openvino", ...), and the tables
                   [space.parameters] (backend parameters: key = values) and [space.fields]
                   ("proto.path" = values, e.g. "optimization.graph.level" = [-1, 0, 1]); values
                   are a list, one value, or a range {min, max, step} / {min, max, scale = "log2"}
                   (perfkit.sweepfile.knobs);
                   formats: "auto" or a list of "onnxruntime", "onnxruntime_tensorrt",
                   "pytorch", "tensorrt" (perfkit.formats: each checked against the model first)
    [load]         mode ("concurrency" | "request_rate"), concurrency / request_rate / batch_size
                   (an int or a list to search), shape = ["NAME:d1,d2"], input_data, baseline
    [objectives]   metric = "maximize" | "minimize"  (throughput, avg/p50/p90/p95/p99_latency,
                   capacity (first, "maximize": perfkit.sweepfile.capacity), and on GPUs
                   gpu_used_memory, gpu_free_memory, gpu_utilization, gpu_power,
                   throughput_per_watt: see GPU_METRICS)
    [constraints]  latency_budget_ms (with capacity: required, or "auto"), latency_percentile
                   (99), min_throughput, max_gpu_memory_mb, max_gpu_power_w
    [capacity]     rate_min, rate_max, tolerance_pct, max_steps, probe_concurrency (the capacity
                   objective's rate search)
    [budget]       trials, timeout_s, patience (stop after N trials without improvement:
                   perfkit.tune.stopping), top_k (re-measure the K best configs over a full
                   load sweep after the search: perfkit.tune.finish)
    [measure]      window_ms, stability_pct, max_windows, stability_windows, warmup_requests
    [search]       sampler ("tpe" | "nsga2" | "grid" | "random"), seed, prune, prune_ratio,
                   startup_trials, min_gain_pct

Imports the stdlib, perfkit.errors and perfkit.load.spec (pure) only; the tuner maps these values onto
the run engine's specs. (`perfkit.load.spec.SweepSpec` is the other sweep: the levels of `perfkit run`.)
"""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

from perfkit.errors import ConfigError
from perfkit.launch.settings import LAUNCH_KEYS, launch_from_table
from perfkit.load.spec import parse_shapes
from perfkit.model_repo import InvalidRepository
from perfkit.model_repo.repository import check_model_name
from perfkit.sweepfile import capacity as capacity_rules
from perfkit.sweepfile.knobs import check_cache, parse_knobs
from perfkit.sweepfile.models import parse_models
from perfkit.sweepfile.spec import (
    FORMATS,
    INSTANCE_KINDS,
    METRICS,
    SAMPLERS,
    ConstraintSpec,
    Direction,
    LoadSettings,
    MeasureSettings,
    ModelEntry,
    SearchSettings,
    SpaceSpec,
    TuneSweep,
)
from perfkit.tomltable import TableReader as _Reader
from perfkit.tomltable import table as _table

_SECTIONS = {
    "model",
    "models",
    "server",
    "space",
    "load",
    "measure",
    "objectives",
    "constraints",
    "budget",
    "search",
    "output",
    "capacity",
}


def _parse_space(r: _Reader) -> SpaceSpec:
    kinds: tuple[str, ...] = ()
    raw_kinds = r.raw("instance_kind")
    if raw_kinds is not None:
        items = raw_kinds if isinstance(raw_kinds, list) else [raw_kinds]
        for item in items:
            if item not in INSTANCE_KINDS:
                raise r.fail(
                    "instance_kind", f"must be one of {', '.join(INSTANCE_KINDS)}, got {item!r}"
                )
        kinds = tuple(items)
    dyn: tuple[bool, ...] = ()
    raw_dyn = r.raw("dynamic_batching")
    if raw_dyn is not None:
        items = raw_dyn if isinstance(raw_dyn, list) else [raw_dyn]
        if not items or not all(isinstance(i, bool) for i in items):
            raise r.fail(
                "dynamic_batching", f"must be true, false or a list of them, got {raw_dyn!r}"
            )
        dyn = tuple(dict.fromkeys(items))
    pref: tuple[tuple[int, ...], ...] = ()
    raw_pref = r.raw("preferred_batch_sizes")
    if raw_pref is not None:
        if not isinstance(raw_pref, list) or not all(isinstance(s, list) for s in raw_pref):
            raise r.fail(
                "preferred_batch_sizes",
                f"must be a list of lists, e.g. [[], [4, 8]], got {raw_pref!r}",
            )
        for sizes in raw_pref:
            if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes):
                raise r.fail("preferred_batch_sizes", f"sizes must be integers >= 1, got {sizes!r}")
        pref = tuple(dict.fromkeys(tuple(sorted(set(s))) for s in raw_pref))
    space = SpaceSpec(
        instance_count=r.int_list("instance_count", minimum=1),
        instance_kind=kinds,
        max_batch_size=r.int_list("max_batch_size", minimum=0),
        dynamic_batching=dyn,
        preferred_batch_sizes=pref,
        max_queue_delay_us=r.int_list("max_queue_delay_us", minimum=0),
        **parse_knobs(r),
    )
    if (raw_formats := r.raw("formats")) is not None:
        items = raw_formats if isinstance(raw_formats, list) else [raw_formats]
        known = bool(items) and all(i in (*FORMATS, "auto") for i in items)
        if not known or ("auto" in items and len(items) > 1):
            raise r.fail(
                "formats",
                f'must be "auto" alone or a list of {", ".join(FORMATS)}, got {raw_formats!r}',
            )
        space = replace(space, formats=tuple(dict.fromkeys(items)))
    r.check_unknown(set(r.used))
    if space.max_batch_size and space.preferred_batch_sizes:
        largest = max(max(s, default=0) for s in space.preferred_batch_sizes)
        if largest > max(space.max_batch_size):
            raise r.fail(
                "preferred_batch_sizes",
                f"size {largest} is larger than every max_batch_size {list(space.max_batch_size)}",
            )
    return space


def _parse_load(r: _Reader) -> LoadSettings:
    mode = r.str_("mode", "concurrency", ("concurrency", "request_rate"))
    concurrency = r.int_list("concurrency", minimum=1, default=(1,))
    rates: tuple[float, ...] = ()
    raw_rate = r.raw("request_rate")
    if raw_rate is not None:
        items = raw_rate if isinstance(raw_rate, list) else [raw_rate]
        if not items or not all(
            isinstance(i, int | float) and not isinstance(i, bool) and i > 0 for i in items
        ):
            raise r.fail(
                "request_rate", f"must be a positive number or a list of them, got {raw_rate!r}"
            )
        rates = tuple(float(i) for i in items)
    if mode == "request_rate" and not rates:
        raise r.fail("request_rate", 'is required when mode = "request_rate"')
    shapes_raw = r.raw("shape")
    shapes: tuple[str, ...] = ()
    if shapes_raw is not None:
        why = f'must be a list of "NAME:d1,d2" strings, got {shapes_raw!r}'
        if not isinstance(shapes_raw, list) or not all(isinstance(s, str) for s in shapes_raw):
            raise r.fail("shape", why)
        try:
            parse_shapes(shapes_raw)
        except ConfigError:
            raise r.fail("shape", why) from None
        shapes = tuple(shapes_raw)
    baseline_raw = r.raw("baseline") or {}
    if not isinstance(baseline_raw, dict):
        raise r.fail("baseline", f"must be a table, e.g. {{concurrency = 4}}, got {baseline_raw!r}")
    for k, v in baseline_raw.items():
        if k not in ("concurrency", "request_rate", "batch_size") or not isinstance(v, int | float):
            raise r.fail(
                f"baseline.{k}", "must be concurrency, request_rate or batch_size = a number"
            )
    load = LoadSettings(
        mode="request_rate" if mode == "request_rate" else "concurrency",
        concurrency=concurrency,
        request_rate=rates,
        batch_size=r.int_list("batch_size", minimum=1, default=(1,)),
        shapes=shapes,
        input_data=r.str_("input_data", "random") or "random",
        baseline={k: float(v) for k, v in baseline_raw.items()},
    )
    r.check_unknown(set(r.used))
    return load


def _parse_measure(r: _Reader) -> MeasureSettings:
    m = MeasureSettings(
        window_ms=r.int_("window_ms", 1000, minimum=10),
        stability_pct=r.num("stability_pct", 10.0, minimum=0.0) or 10.0,
        max_windows=r.int_("max_windows", 10, minimum=1),
        warmup_requests=r.int_("warmup_requests", 16, minimum=0),
        stability_windows=r.int_("stability_windows", 3, minimum=1),
    )
    if m.max_windows < m.stability_windows:
        raise r.fail("max_windows", f"must be >= stability_windows ({m.stability_windows})")
    r.check_unknown(set(r.used))
    return m


def _parse_objectives(r: _Reader) -> tuple[tuple[str, Direction], ...]:
    out: list[tuple[str, Direction]] = []
    for name, direction in r.table.items():
        if name not in METRICS:
            raise r.fail(name, f"unknown objective; use one of {', '.join(METRICS)}")
        if direction not in ("maximize", "minimize"):
            raise r.fail(name, f'must be "maximize" or "minimize", got {direction!r}')
        out.append((METRICS[name], "maximize" if direction == "maximize" else "minimize"))
    if not out:
        return (("throughput_infer_per_s", "maximize"),)
    return tuple(out)


def _parse_constraints(r: _Reader) -> ConstraintSpec:
    pct = r.num("latency_percentile", 99.0, minimum=1.0)
    if pct is not None and pct not in (50.0, 90.0, 95.0, 99.0):
        raise r.fail("latency_percentile", f"must be 50, 90, 95 or 99, got {pct:g}")
    budget_ms = r.num("latency_budget_ms", None, minimum=0.0)
    spec = ConstraintSpec(
        latency_percentile=pct or 99.0,
        latency_budget_us=None if budget_ms is None else budget_ms * 1000.0,
        min_throughput=r.num("min_throughput", None, minimum=0.0),
        max_gpu_memory_mb=r.num("max_gpu_memory_mb", None, minimum=0.0),
        max_gpu_power_w=r.num("max_gpu_power_w", None, minimum=0.0),
    )
    r.check_unknown(set(r.used))
    return spec


def parse_sweep(text: str, source: str = "<sweep>", base_dir: Path | None = None) -> TuneSweep:
    """Parse sweep-file text. Relative paths resolve against `base_dir` (default: the working directory)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    for name in doc:
        if name not in _SECTIONS:
            raise ConfigError(
                f"{source}:{name}: unknown section; known sections: {', '.join(sorted(_SECTIONS))}"
            )
    base = base_dir or Path.cwd()

    m = _table(source, doc, "model")
    model_name = m.str_("name") or ""
    if not model_name and "models" not in doc:
        raise m.fail("name", "is required: the model to tune")
    try:
        # The load API's rule: a model name is one directory inside the repository, never a path.
        if model_name:
            check_model_name(model_name)
    except InvalidRepository as exc:
        raise m.fail("name", str(exc)) from None
    repo = m.str_("repository", "model_repository") or "model_repository"
    zoo = m.str_("zoo")
    m.check_unknown({"name", "repository", "zoo"})

    s = _table(source, doc, "server")
    url = s.str_("url")
    protocol = s.str_("protocol", "grpc", ("grpc", "http")) or "grpc"
    startup = s.num("startup_timeout_s", 60.0, minimum=1.0) or 60.0
    metrics_url = s.str_("metrics_url")
    validate_on = s.str_("validate_on")
    launch = launch_from_table(s)
    if url is not None and (given := [k for k in LAUNCH_KEYS if k in s.table]):
        raise s.fail(given[0], "starts a server, and server.url names a running one: drop one")
    s.check_unknown(
        {"url", "protocol", "startup_timeout_s", "metrics_url", "validate_on", *LAUNCH_KEYS}
    )

    b = _table(source, doc, "budget")
    trials = b.int_("trials", 20, minimum=1)
    timeout_s = b.num("timeout_s", None, minimum=1.0)
    patience_f = b.num("patience", None, minimum=1, integer=True)
    top_k = b.int_("top_k", 0, minimum=0)
    b.check_unknown({"trials", "timeout_s", "patience", "top_k"})

    q = _table(source, doc, "search")
    sampler = q.str_("sampler", "tpe", SAMPLERS) or "tpe"
    seed_f = q.num("seed", None, minimum=0, integer=True)
    ratio = q.num("prune_ratio", 0.5, minimum=0.0) or 0.5
    if ratio >= 1.0:
        raise q.fail("prune_ratio", f"must be below 1 (a fraction of the best), got {ratio:g}")
    search = SearchSettings(
        sampler=sampler,  # type: ignore[arg-type]
        seed=None if seed_f is None else int(seed_f),
        prune=q.bool_("prune", True),
        prune_ratio=ratio,
        startup_trials=q.int_("startup_trials", 2, minimum=0),
        min_gain_pct=q.num("min_gain_pct", 2.0, minimum=0.0) or 0.0,
    )
    q.check_unknown({"sampler", "seed", "prune", "prune_ratio", "startup_trials", "min_gain_pct"})

    o = _table(source, doc, "output")
    out_dir = o.str_("dir")
    storage = o.str_("storage")
    study_name = o.str_("study_name")
    o.check_unknown({"dir", "storage", "study_name"})

    objectives = _parse_objectives(_table(source, doc, "objectives"))
    doc = capacity_rules.check(source, doc, objectives)
    if sampler == "tpe" and len(objectives) > 1:
        search = replace(search, sampler="nsga2")
    space = _parse_space(_table(source, doc, "space"))
    check_cache(space, url, launch, source)
    load = _parse_load(_table(source, doc, "load"))
    if load.mode == "request_rate" and len(load.concurrency) > 1:
        raise ConfigError(
            f'{source}:load.concurrency: cannot be searched when mode = "request_rate"'
        )
    models: tuple[ModelEntry, ...] = ()
    if "models" in doc:  # several models: the first is `model` (perfkit.sweepfile.models)
        models, repo = parse_models(
            source, doc, objectives,
            space=_parse_space, load=_parse_load, constraints=_parse_constraints,
        )  # fmt: skip
        model_name, zoo = models[0].name, models[0].zoo
    return TuneSweep(
        source=source,
        model=model_name,
        repository=(base / repo).resolve(),
        zoo=zoo,
        url=url,
        protocol="http" if protocol == "http" else "grpc",
        startup_timeout_s=startup,
        metrics_url=metrics_url,
        launch=launch,
        space=space,
        load=load,
        measure=_parse_measure(_table(source, doc, "measure")),
        objectives=objectives,
        constraints=_parse_constraints(_table(source, doc, "constraints")),
        trials=trials,
        timeout_s=timeout_s,
        search=search,
        output=None if out_dir is None else (base / out_dir).resolve(),
        storage=storage,
        study_name=study_name,
        models=models,
        patience=None if patience_f is None else int(patience_f),
        top_k=top_k,
        validate_on=validate_on,
        capacity=capacity_rules.parse(source, doc),
    )


def load_sweep(path: Path, base_dir: Path | None = None) -> TuneSweep:
    """Read and validate a sweep file; ConfigError names `path:key` and the reason."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: sweep file not found. Pass the path of a .toml file (see sweeps/)."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read sweep file: {exc}") from exc
    return parse_sweep(text, str(path), base_dir)
