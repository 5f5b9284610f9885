"""`perfkit run`: perf_analyzer's flags -> a `SweepSpec` -> `perfkit.load.run` -> summary and files.

With no -u the embedded perfkit_server is started on free loopback ports for the zoo model named
by -m (or the --model-repository given) and stopped at the end. Exit codes as perf_analyzer:
0 ok, 2 unstable, 3 bad options, 99 anything else (130 on Ctrl-C, with the levels kept).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from perfkit.cli import _console
from perfkit.cli._launch import launch_for_run, launch_options, run_server_log
from perfkit.cli.progress import LiveView, StreamView
from perfkit.cli.run_pa import (
    PA_OPTIONS,
    fixed_schedule,
    fixed_schedule_load,
    refuse_sync,
    request_target,
    sequence_spec,
)
from perfkit.cli.run_tls import TLS_OPTIONS, tls_target
from perfkit.errors import EXIT_OTHER, EXIT_UNSTABLE, ConfigError
from perfkit.load import spec as S
from perfkit.results import Measurement, RunResult

_STATUS_EXIT = {"ok": 0, "unstable": EXIT_UNSTABLE, "error": EXIT_OTHER, "interrupted": 130}


# -- flags -> specs: `o` is the click options dict (perf_analyzer's flag names) ----------------
def spec_from_options(o: Mapping[str, Any]) -> S.SweepSpec:
    """Flags -> a validated SweepSpec; ConfigError names the flag. Without -u, the target is the
    protocol's default URL (the embedded server's replaces it)."""
    refuse_sync(o)
    load, bs_step = _load(o)
    return S.SweepSpec(
        target=_target(o),
        inputs=_inputs(o),
        measure=_measure(o),
        load=load,
        latency_threshold_ms=o["latency_threshold"],
        binary_search=o["binary_search"],
        binary_search_step=bs_step,
        workers=o["workers"],
        repeats=o["repeats"],
        metrics=S.MetricsSpec(
            url=o["metrics_url"] or "localhost:8002/metrics", interval_ms=o["metrics_interval"]
        )
        if o["collect_metrics"]
        else None,
    )


def _target(o: Mapping[str, Any]) -> S.TargetSpec:
    protocol = str(o["protocol"]).lower()
    default_url = S.DEFAULT_GRPC_URL if protocol == "grpc" else S.DEFAULT_HTTP_URL
    return S.TargetSpec(
        url=o["url"] or default_url,
        protocol="grpc" if protocol == "grpc" else "http",
        model=o["model"],
        model_version=o["model_version"],
        connect_timeout_s=o["connect_timeout"],
        **tls_target(o, protocol),  # --ssl-https-*, --ssl-grpc-*, -H
        **request_target(o),  # --request-parameter, tensor formats, gRPC compression
    )


def _inputs(o: Mapping[str, Any]) -> S.InputSpec:
    return S.InputSpec(
        source=o["input_data"],
        batch_size=o["batch_size"],
        shapes=S.parse_shapes(o["shape"]),
        string_length=o["string_length"],
        string_data=o["string_data"],
        shared_memory=o["shared_memory"],
        output_shared_memory_size=o["output_shared_memory_size"],
        sequence=sequence_spec(o),
    )


def _measure(o: Mapping[str, Any]) -> S.MeasureSpec:
    schedule = fixed_schedule(o)
    return S.MeasureSpec(
        mode=o["measurement_mode"],
        interval_ms=o["measurement_interval"],
        request_count_per_window=o["measurement_request_count"],
        stability_pct=o["stability_percentage"],
        max_trials=o["max_trials"],
        percentile=o["percentile"],
        fixed_request_count=len(schedule) or o["request_count"],
        warmup_request_count=o["warmup_request_count"],
    )


def _load(o: Mapping[str, Any]) -> tuple[S.LoadSpec, float]:
    """The load levels, and the binary search's precision (the range's step)."""
    concurrency, rates, intervals = (
        o["concurrency_range"], o["request_rate_range"], o["request_intervals"],
    )  # fmt: skip
    replay = fixed_schedule_load(o)
    if replay is not None:
        return replay, 1.0
    if concurrency and (rates or intervals):
        raise ConfigError(
            "--concurrency-range cannot be combined with --request-rate-range/--request-intervals."
        )
    if rates or intervals:
        levels: tuple[float, ...] = ()
        step = 1.0
        if rates:
            a, b, step = S.parse_range(rates, kind="float", flag="--request-rate-range")
            if b == 0:
                raise ConfigError("--request-rate-range: end 0 is only for --concurrency-range.")
            levels = S.expand_range(a, b, step)
        rate_load = S.RequestRateLoad(
            rates=levels or (1.0,),
            distribution=o["request_distribution"],
            intervals_file=intervals,
            max_in_flight=o["max_in_flight"],
        )
        return rate_load, step
    a, b, step = S.parse_range(concurrency or "1", kind="int", flag="--concurrency-range")
    limit = 0.0
    if b == 0:
        if o["latency_threshold"] <= 0:
            raise ConfigError("--concurrency-range with end 0 needs --latency-threshold (-l).")
        limit = 1024.0
    levels = S.expand_range(a, b, step, limit=limit)
    return S.ConcurrencyLoad(levels=tuple(int(x) for x in levels)), step


def _install_sigterm() -> None:
    # A SIGTERM mid-sweep ends like Ctrl-C: the levels already measured are written.
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, signal.default_int_handler)


def _write_outputs(result: RunResult, o: Mapping[str, Any], experiments: list[Any]) -> list[Path]:
    """The files the flags ask for: -f CSV, --profile-export-file, --output-dir's three."""
    from perfkit.report import pa_csv, pa_export

    written: list[Path] = []
    if not result.measurements:
        return written
    csv_opts: dict[str, Any] = {
        "verbose": o["verbose_csv"], "percentile": o["percentile"], "collect_metrics": o["collect_metrics"],
    }  # fmt: skip
    if o["latency_report_file"]:
        written.append(pa_csv.write(o["latency_report_file"], result.measurements, **csv_opts))
        written += pa_csv.write_composing(o["latency_report_file"], result.measurements)
    if o["profile_export_file"]:
        written.append(
            pa_export.write(o["profile_export_file"], experiments, endpoint=result.server.url)
        )
    if o["output_dir"]:
        out = Path(o["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        written.append(pa_csv.write(out / "perf_analyzer.csv", result.measurements, **csv_opts))
        written += pa_csv.write_composing(out / "perf_analyzer.csv", result.measurements)
        written.append(
            pa_export.write(out / "profile_export.json", experiments, endpoint=result.server.url)
        )
        try:
            from perfkit.report.schema import write_run
        except ImportError:
            _console.err.print("results.json not written: perfkit.report.schema is not available.")
        else:
            written += list(write_run(result, out))
    return written


_OPTS = [
    click.option("-m", "--model-name", "model", required=True, help="Model name."),
    click.option(
        "-x",
        "--model-version",
        "model_version",
        default="",
        help="Model version (default: latest).",
    ),
    click.option(
        "-u",
        "--url",
        "url",
        default=None,
        help="Server host:port (default: start the embedded server).",
    ),
    click.option(
        "-i",
        "--protocol",
        type=click.Choice(["http", "grpc"], case_sensitive=False),
        default="http",
        show_default=True,
    ),
    click.option("-b", "--batch-size", default=1, show_default=True, type=int),
    click.option(
        "--concurrency-range", default=None, help="start:end:step, closed loop (default 1)."
    ),
    click.option(
        "--request-rate-range", default=None, help="start:end:step in requests/s, open loop."
    ),
    click.option(
        "--request-distribution",
        type=click.Choice(["constant", "poisson"]),
        default="constant",
        show_default=True,
    ),
    click.option(
        "--request-intervals", default=None, help="File of send intervals (us), one a line, looped."
    ),
    click.option(
        "--measurement-mode",
        type=click.Choice(["time_windows", "count_windows"]),
        default="time_windows",
        show_default=True,
    ),
    click.option(
        "-p",
        "--measurement-interval",
        default=5000,
        show_default=True,
        type=int,
        help="Window length (ms).",
    ),
    click.option("--measurement-request-count", default=50, show_default=True, type=int),
    click.option("-s", "--stability-percentage", default=10.0, show_default=True, type=float),
    click.option("-r", "--max-trials", default=10, show_default=True, type=int),
    click.option(
        "--percentile",
        default=None,
        type=float,
        help="Stabilize and report on this latency percentile.",
    ),
    click.option(
        "--request-count",
        default=0,
        type=int,
        help="Measure exactly N requests, no stability loop.",
    ),
    click.option("--warmup-request-count", default=0, type=int),
    click.option(
        "-l",
        "--latency-threshold",
        default=0.0,
        type=float,
        help="Stop once latency passes this (ms).",
    ),
    click.option(
        "--binary-search", is_flag=True, help="Binary search for the highest load under -l."
    ),
    click.option(
        "--input-data", default="random", show_default=True, help="random | zero | FILE.json | DIR."
    ),
    click.option("--shape", multiple=True, help="NAME:d1,d2 for variable dims (repeatable)."),
    click.option("--string-length", default=128, show_default=True, type=int),
    click.option("--string-data", default=None),
    click.option(
        "--shared-memory",
        type=click.Choice(["none", "system", "cuda"]),
        default="none",
        show_default=True,
        help="Inputs and outputs in system or CUDA (GPU 0) shared memory.",
    ),
    click.option(
        "--output-shared-memory-size",
        default=S.DEFAULT_OUTPUT_SHM_BYTES,
        show_default=True,
        type=int,
        help="Bytes of an output's region when its size is not fixed (variable dims, BYTES).",
    ),
    click.option(
        "-f",
        "--latency-report-file",
        default=None,
        help="perf_analyzer CSV (rows sorted by throughput, as perf_analyzer).",
    ),
    click.option("--verbose-csv", is_flag=True),
    click.option("--profile-export-file", default=None, help="perf_analyzer profile export JSON."),
    click.option("--collect-metrics", is_flag=True),
    click.option(
        "--metrics-url", default=None, help="Prometheus endpoint (default localhost:8002/metrics)."
    ),
    click.option("--metrics-interval", default=1000, show_default=True, type=int),
    click.option("-v", "--verbose", count=True),
    click.option(
        "--workers", default=1, show_default=True, type=int, help="Load-generator processes."
    ),
    click.option(
        "--repeats",
        default=1,
        show_default=True,
        type=int,
        help="Measure each level N times, interleaved (1, 2, ..., then 1 again), each repeat kept "
        "apart in the results: what `perfkit compare` needs to tell a regression from noise.",
    ),
    click.option("--model-repository", default=None, help="Repository for the embedded server."),
    click.option(
        "--output-dir", default=None, help="Keep everything the run writes in this folder."
    ),
    click.option(
        "--max-in-flight",
        default=2048,
        show_default=True,
        type=int,
        help="Open loop: most requests in flight; beyond it sends wait, are counted late and the "
        "corrected latency shows the wait.",
    ),
    click.option(
        "--connect-timeout",
        default=10.0,
        show_default=True,
        type=float,
        help="Seconds to wait for the server to answer.",
    ),
    *TLS_OPTIONS,  # --ssl-https-*, --ssl-grpc-*, -H (perfkit.cli.run_tls)
    click.option(
        "--live/--no-live", default=None, help="Live view on stderr (default: when a terminal)."
    ),
    click.option(
        "-a",
        "--async",
        "async_",
        is_flag=True,
        hidden=True,
        help="Accepted for perf_analyzer compatibility.",
    ),
    *PA_OPTIONS,  # --request-parameter, tensor formats, compression, --fixed-schedule, --sync
]


def _with_opts(f: Any) -> Any:
    for opt in reversed(_OPTS):
        f = opt(f)
    return f


@click.command("run", context_settings={"show_default": False})
@_with_opts
@launch_options
def run(**o: Any) -> None:
    """Measure a model like perf_analyzer (same flags, CSV and summary), honestly in open loop."""
    _install_sigterm()
    # Every flag is validated (here and in `perfkit.load.run`) before a server starts.
    spec = spec_from_options(o)
    launch = launch_for_run(o)  # --server and its settings; refused with -u
    from perfkit.load import run as run_levels
    from perfkit.report import pa_export, pa_stdout

    experiments: list[pa_export.Experiment] = []
    keep_raw = bool(o["profile_export_file"] or o["output_dir"])

    def on_raw(m: Measurement, raw: Any, bounds: list[int]) -> None:
        if keep_raw:
            experiments.append(
                pa_export.Experiment(
                    measurement=m, sent_ns=raw.sent_ns, done_ns=raw.done_ns, window_boundaries_ns=bounds,
                    sequence_ids=raw.sequence_ids, response_times=raw.response_times,
                )
            )  # fmt: skip

    live_on = o["live"] if o["live"] is not None else _console.err.is_terminal
    # A terminal: the live table; piped (a CI log): each level's block as it ends, a line a window.
    view: LiveView | StreamView = (
        LiveView(spec.load, True)
        if live_on
        else StreamView(spec, percentile=o["percentile"], verbose=o["verbose"] > 0)
    )
    with view:
        result = run_levels(
            spec,
            embedded=not o["url"],
            model_repository=o["model_repository"],
            launch=launch,
            server_log=run_server_log(o),
            on_window=view.on_window,
            on_level=view.on_level,
            on_raw=on_raw,
            on_message=lambda text: _console.err.print(text, highlight=False),
        )
    written = _write_outputs(result, o, experiments)
    _console.out.print(
        view.rest(result, pa_stdout.summary(result, percentile=o["percentile"], verbose=o["verbose"] > 0)),
        markup=False, highlight=False, soft_wrap=True,
    )  # fmt: skip
    for msg in result.messages:
        _console.err.print(msg, markup=False, highlight=False, soft_wrap=True)
    for p in written:
        _console.err.print(f"Wrote {p}", markup=False, highlight=False)
    code = _STATUS_EXIT.get(result.status, EXIT_OTHER)
    if code:
        sys.exit(code)


COMMANDS: list[click.Command] = [run]
