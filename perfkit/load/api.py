"""`perfkit.load.run`: a whole `perfkit run` sweep, callable from Python (a notebook, a script).

Owns what `perfkit run` does besides printing and writing files: validating the spec before any
server starts, starting the embedded perfkit_server when asked (on a zoo model built into a
temporary repository, or on a given repository), and sweeping the levels with the engine. Writing
the perf_analyzer CSV, the profile export and results.json stays with the caller
(`perfkit.report`). Must not import `perfkit.cli`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from perfkit.errors import ConfigError
from perfkit.launch.settings import LaunchSettings
from perfkit.load.spec import MetricsSpec, RequestRateLoad, SweepSpec
from perfkit.load.sweep import run_sweep
from perfkit.results import Measurement, RunResult, WindowStat

logger = logging.getLogger(__name__)


def run(
    spec: SweepSpec,
    *,
    embedded: bool = False,
    model_repository: Path | str | None = None,
    launch: LaunchSettings | None = None,
    server_log: Path | None = None,
    on_window: Callable[[WindowStat], None] | None = None,
    on_level: Callable[[Measurement], None] | None = None,
    on_raw: Callable[[Measurement, Any, list[int]], None] | None = None,
    on_message: Callable[[str], None] | None = None,
) -> RunResult:
    """Measure every level of `spec.load` on a server, as `perfkit run` does, and return the result.

    Each level runs windows until perf_analyzer's stability rule holds (or `spec.measure` fixes the
    request count); an unstable level is kept and ends the sweep. The result is returned also when
    the sweep stops early: `RunResult.status` is "ok", "unstable", "interrupted" (Ctrl-C) or "error"
    (the server stopped answering), with the reason in `messages` and the levels measured kept.

    Args:
        spec: the server, model, inputs, measurement and load levels (`perfkit.load.spec`).
        embedded: start the bundled perfkit_server on free loopback ports for `spec.target.model`
            (what `perfkit run` does without -u) and measure it instead of `spec.target.url`; it
            is stopped before `run` returns. With `spec.metrics` at its default URL, the metrics
            are scraped from that server.
        model_repository: with `embedded` or `launch`, the repository to serve (it must hold
            the model); by default the zoo model of that name is built into a temporary directory.
        launch: start this server instead (`perfkit.launch.settings`: embedded, a local
            tritonserver, or docker), in explicit model-control mode with the model loaded, and
            measure it; `embedded=True` is `launch=LaunchSettings()`.
        server_log: with `embedded` or `launch`, where the started server's log is kept; by
            default a temporary file, removed after a clean stop of the embedded server (kept,
            and named in a message, for the others).
        on_window: called after each measurement window.
        on_level: called with each level's `Measurement` once it is measured.
        on_raw: called with each level's `Measurement`, its raw per-request timings and the
            window boundaries (ns), e.g. for `perfkit.report.pa_export`.
        on_message: called with progress notes (the embedded server starting); logged at INFO
            when not given.

    Returns:
        The `RunResult`: one `Measurement` per level, in load order, with the server, the model
        config it reported, the settings and the machine.

    Raises:
        ConfigError: a spec the model cannot take (inputs, shapes, intervals file), a
            `model_repository` without the model, or an unknown zoo model.
        ServerUnavailable: no server answered at the URL within `spec.target.connect_timeout_s`,
            or the embedded server did not start.
        PerfkitError: other errors before the first level (e.g. the model is not ready).
    """
    note = on_message or (lambda text: logger.info("%s", text))
    if isinstance(spec.load, RequestRateLoad) and spec.load.intervals_file:
        from perfkit.load import schedule

        # A bad intervals file fails here, before a server starts.
        schedule.read_intervals(spec.load.intervals_file)
    if spec.inputs.shared_memory == "cuda":
        from perfkit.load.shm_regions import cuda_module

        cuda_module()  # no CUDA here: a ConfigError before a server starts
    if launch is None and not embedded:
        return run_sweep(spec, on_window=on_window, on_level=on_level, on_raw=on_raw)
    settings = launch or LaunchSettings()
    with _embedded(spec, model_repository, note, settings, server_log) as started:
        return run_sweep(
            started, on_window=on_window, on_level=on_level, on_raw=on_raw, embedded=True
        )


@contextlib.contextmanager
def _embedded(
    spec: SweepSpec,
    model_repository: Path | str | None,
    note: Callable[[str], None],
    settings: LaunchSettings,
    server_log: Path | None,
) -> Iterator[SweepSpec]:
    """The server `settings` say (the embedded perfkit_server by default) serving the model;
    yields `spec` pointed at it, and stops it on the way out."""
    from perfkit.launch.start import launcher

    model = spec.target.model
    if settings.mode == "embedded":
        from perfkit.launch.embedded import require_server_stack

        require_server_stack()  # before a zoo model is built: the missing extra is said first
    with contextlib.ExitStack() as stack:
        if model_repository:
            repo = Path(model_repository)
            if not (repo / model).is_dir():
                raise ConfigError(f"--model-repository {repo} has no model directory {model!r}.")
        else:
            from perfkit import zoo

            _check_zoo_model(model, spec)
            repo = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="perfkit-run-")))
            zoo.build(model, repo)
        log = server_log
        if log is None and settings.mode != "embedded":
            fd, name = tempfile.mkstemp(prefix=f"perfkit-{settings.mode}-server-", suffix=".log")
            os.close(fd)
            log = Path(name)
        what = {"embedded": "the embedded perfkit_server", "local": "a local tritonserver"}
        note(
            f"Starting {what.get(settings.mode, 'tritonserver in docker')} for model {model} ..."
            + (f" (its log: {log})" if log is not None else "")
        )
        # Client shared memory is off by default on the server (as on Triton since 2026-04).
        server = launcher(
            settings,
            repo,
            # A BLS model's composing models (--bls-composing-models) are loaded with it, as a
            # Triton user starts the server for it: their statistics are read from the start.
            load_models=[model, *(n for n, _ in spec.target.bls_composing_models if n != model)],
            log_path=log,
            client_shm=spec.inputs.shared_memory != "none",
        )
        stack.enter_context(server)
        target = dataclasses.replace(spec.target, url=server.url(spec.target.protocol))
        metrics = spec.metrics
        if metrics is not None and metrics.url == MetricsSpec().url:
            metrics = dataclasses.replace(metrics, url=server.metrics_url)
        yield dataclasses.replace(spec, target=target, metrics=metrics)


def _check_zoo_model(model: str, spec: SweepSpec) -> None:
    """With no URL and no repository the model must be a zoo model; a perf_analyzer user's first
    command names their own model: say how to measure it (first contact, issue 15)."""
    from perfkit import zoo

    if model in zoo.MODELS:
        return
    grpc = spec.target.protocol == "grpc"
    port = "localhost:8001 -i grpc" if grpc else "localhost:8000"
    raise ConfigError(
        f"{model!r} is not a zoo model, and with no -u perfkit run starts its own server on a zoo "
        f"model (the zoo has: {', '.join(zoo.MODELS)}). To measure a model on a running server: "
        f"perfkit run -m {model} -u {port}; to serve your own model repository with the embedded "
        f"server: perfkit run -m {model} --model-repository DIR."
    )
