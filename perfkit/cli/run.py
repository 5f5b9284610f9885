"""`perfkit run`: perf_analyzer's flags -> specs -> `perfkit.load.sweep.run_sweep` -> summary and files.

With no -u the embedded perfkit_server is started on free loopback ports for the zoo model named
by -m (or the --model-repository given) and stopped at the end. Exit codes as perf_analyzer:
0 ok, 2 unstable, 3 bad options, 99 anything else (130 on Ctrl-C, with the levels kept).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.live import Live
from rich.table import Table

from perfkit.cli import _console
from perfkit.errors import EXIT_OTHER, EXIT_UNSTABLE, ConfigError
from perfkit.load import spec as S
from perfkit.results import Measurement, RunResult, WindowStat

_STATUS_EXIT = {"ok": 0, "unstable": EXIT_UNSTABLE, "error": EXIT_OTHER, "interrupted": 130}


def _parse_shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for v in values:
        name, sep, dims = v.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.split(",")) if dims.strip() else ()
        except ValueError:
            shape = None
        if not sep or not name or shape is None:
            raise ConfigError(
                f"--shape {v!r} is not NAME:d1,d2,... (e.g. --shape INPUT0:3,224,224)."
            )
        out[name] = shape
    return out


def build_spec(
    *,
    url: str,
    protocol: str,
    model: str,
    model_version: str,
    batch_size: int,
    concurrency_range: str | None,
    request_rate_range: str | None,
    request_distribution: str,
    request_intervals: str | None,
    measurement_mode: str,
    measurement_interval: int,
    measurement_request_count: int,
    stability_percentage: float,
    max_trials: int,
    percentile: float | None,
    request_count: int,
    warmup_request_count: int,
    latency_threshold: float,
    binary_search: bool,
    input_data: str,
    shape: tuple[str, ...],
    string_length: int,
    string_data: str | None,
    shared_memory: str,
    collect_metrics: bool,
    metrics_url: str,
    metrics_interval: int,
    workers: int,
    connect_timeout: float = 10.0,
    max_in_flight: int = 2048,
) -> S.SweepSpec:
    """Flags (perf_analyzer names) -> a validated SweepSpec; ConfigError names the flag."""
    if concurrency_range and (request_rate_range or request_intervals):
        raise ConfigError(
            "--concurrency-range cannot be combined with --request-rate-range/--request-intervals."
        )
    load: S.LoadSpec
    if request_rate_range or request_intervals:
        rates: tuple[float, ...] = ()
        if request_rate_range:
            a, b, st = S.parse_range(request_rate_range, kind="float", flag="--request-rate-range")
            if b == 0:
                raise ConfigError("--request-rate-range: end 0 is only for --concurrency-range.")
            rates = S.expand_range(a, b, st)
        load = S.RequestRateLoad(
            rates=rates or (1.0,),
            distribution=request_distribution,  # type: ignore[arg-type]
            intervals_file=request_intervals,
            max_in_flight=max_in_flight,
        )
        bs_step = (
            S.parse_range(request_rate_range, kind="float", flag="--request-rate-range")[2]
            if request_rate_range
            else 1.0
        )
    else:
        a, b, st = S.parse_range(concurrency_range or "1", kind="int", flag="--concurrency-range")
        limit = 0.0
        if b == 0:
            if latency_threshold <= 0:
                raise ConfigError("--concurrency-range with end 0 needs --latency-threshold (-l).")
            limit = 1024.0
        load = S.ConcurrencyLoad(
            levels=tuple(int(x) for x in S.expand_range(a, b, st, limit=limit))
        )
        bs_step = st
    return S.SweepSpec(
        target=S.TargetSpec(
            url=url,
            protocol="grpc" if protocol == "grpc" else "http",
            model=model,
            model_version=model_version,
            connect_timeout_s=connect_timeout,
        ),
        inputs=S.InputSpec(
            source=input_data,
            batch_size=batch_size,
            shapes=_parse_shapes(shape),
            string_length=string_length,
            string_data=string_data,
            shared_memory=shared_memory,  # type: ignore[arg-type]
        ),
        measure=S.MeasureSpec(
            mode=measurement_mode,  # type: ignore[arg-type]
            interval_ms=measurement_interval,
            request_count_per_window=measurement_request_count,
            stability_pct=stability_percentage,
            max_trials=max_trials,
            percentile=percentile,
            fixed_request_count=request_count,
            warmup_request_count=warmup_request_count,
        ),
        load=load,
        latency_threshold_ms=latency_threshold,
        binary_search=binary_search,
        binary_search_step=bs_step,
        workers=workers,
        metrics=S.MetricsSpec(url=metrics_url, interval_ms=metrics_interval)
        if collect_metrics
        else None,
    )


class LiveView:
    """The live rich table (stderr): one row per level, updated after each window."""

    def __init__(self, mode: str, enabled: bool) -> None:
        self.mode = mode
        self.rows: list[list[str]] = []
        self.current: list[str] | None = None
        self.live = (
            Live(self._table(), console=_console.err, refresh_per_second=4, transient=False)
            if enabled
            else None
        )
        self.level = 0.0

    def _table(self) -> Table:
        t = Table(title="perfkit run", title_justify="left", expand=False)
        for c in (
            "Concurrency" if self.mode == "concurrency" else "Request rate",
            "window",
            "infer/s",
            "avg latency (us)",
            "stable",
        ):
            t.add_column(c, justify="right")
        for r in self.rows:
            t.add_row(*r)
        if self.current:
            t.add_row(*self.current, style="yellow")
        return t

    def on_window(self, w: WindowStat) -> None:
        self.current = [
            f"{self.level:g}",
            str(w.index + 1),
            f"{w.throughput_infer_per_s:,.1f}",
            f"{w.latency_avg_us:,.0f}",
            "...",
        ]
        if self.live:
            self.live.update(self._table())

    def on_level(self, m: Measurement) -> None:
        self.rows.append(
            [f"{m.level:g}", str(len(m.windows)), f"{m.throughput_infer_per_s:,.1f}", f"{m.latency.avg_us:,.0f}",
             "yes" if m.stable else "[red]no[/]"]
        )  # fmt: skip
        self.current = None
        if self.live:
            self.live.update(self._table())

    def __enter__(self) -> LiveView:
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.live.__exit__(None, None, None)


@contextlib.contextmanager
def _server(
    url: str | None, protocol: str, model: str, model_repository: str | None
) -> Iterator[tuple[str, str | None, bool]]:
    """Yields (url, metrics_url, embedded): the given -u, or an embedded perfkit_server."""
    if url:
        yield url, None, False
        return
    from perfkit.launch import EmbeddedServer

    with contextlib.ExitStack() as stack:
        if model_repository:
            repo = Path(model_repository)
            if not (repo / model).is_dir():
                raise ConfigError(f"--model-repository {repo} has no model directory {model!r}.")
        else:
            from perfkit import zoo

            repo = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="perfkit-run-")))
            zoo.build(model, repo)
        _console.err.print(
            f"Starting the embedded perfkit_server for model {model} ...", highlight=False
        )
        server = stack.enter_context(EmbeddedServer(repo, load_models=[model]))
        yield server.url(protocol), server.metrics_url, True  # type: ignore[arg-type]


def _install_sigterm() -> None:
    # A SIGTERM mid-sweep ends like Ctrl-C: the levels already measured are written.
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, signal.default_int_handler)


def _write_outputs(
    result: RunResult,
    *,
    latency_report_file: str | None,
    verbose_csv: bool,
    percentile: float | None,
    collect_metrics: bool,
    profile_export_file: str | None,
    experiments: list[Any],
    output_dir: str | None,
) -> list[Path]:
    from perfkit.report import pa_csv, pa_export

    written: list[Path] = []
    if not result.measurements:
        return written
    csv_opts: dict[str, Any] = {
        "verbose": verbose_csv, "percentile": percentile, "collect_metrics": collect_metrics,
    }  # fmt: skip
    if latency_report_file:
        written.append(pa_csv.write(latency_report_file, result.measurements, **csv_opts))
    if profile_export_file:
        written.append(
            pa_export.write(profile_export_file, experiments, endpoint=result.server.url)
        )
    if output_dir:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        written.append(pa_csv.write(out / "perf_analyzer.csv", result.measurements, **csv_opts))
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
        "--shared-memory", type=click.Choice(["none", "system"]), default="none", show_default=True
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
    click.option("--sync", is_flag=True, hidden=True),
    click.option("--max-threads", default=None, type=int, hidden=True),
]


def _with_opts(f: Any) -> Any:
    for opt in reversed(_OPTS):
        f = opt(f)
    return f


@click.command("run", context_settings={"show_default": False})
@_with_opts
def run(**o: Any) -> None:
    """Measure a model like perf_analyzer (same flags, CSV and summary), honestly in open loop."""
    _install_sigterm()
    protocol = str(o["protocol"]).lower()
    # Validate every flag before starting a server.
    spec = build_spec(
        url=o["url"] or ("localhost:8000" if protocol == "http" else "localhost:8001"),
        protocol=protocol, model=o["model"], model_version=o["model_version"], batch_size=o["batch_size"],
        concurrency_range=o["concurrency_range"], request_rate_range=o["request_rate_range"],
        request_distribution=o["request_distribution"], request_intervals=o["request_intervals"],
        measurement_mode=o["measurement_mode"], measurement_interval=o["measurement_interval"],
        measurement_request_count=o["measurement_request_count"],
        stability_percentage=o["stability_percentage"], max_trials=o["max_trials"],
        percentile=o["percentile"], request_count=o["request_count"],
        warmup_request_count=o["warmup_request_count"], latency_threshold=o["latency_threshold"],
        binary_search=o["binary_search"], input_data=o["input_data"], shape=o["shape"],
        string_length=o["string_length"], string_data=o["string_data"], shared_memory=o["shared_memory"],
        collect_metrics=o["collect_metrics"], metrics_url=o["metrics_url"] or "localhost:8002/metrics",
        metrics_interval=o["metrics_interval"], workers=o["workers"],
        connect_timeout=o["connect_timeout"], max_in_flight=o["max_in_flight"],
    )  # fmt: skip
    if isinstance(spec.load, S.RequestRateLoad) and spec.load.intervals_file:
        from perfkit.load import schedule

        schedule.read_intervals(spec.load.intervals_file)
    from dataclasses import replace

    from perfkit.load.sweep import run_sweep
    from perfkit.report import pa_export, pa_stdout

    experiments: list[pa_export.Experiment] = []

    def on_raw(m: Measurement, raw: Any, bounds: list[int]) -> None:
        if o["profile_export_file"] or o["output_dir"]:
            experiments.append(
                pa_export.Experiment(
                    measurement=m,
                    sent_ns=raw.sent_ns,
                    done_ns=raw.done_ns,
                    window_boundaries_ns=bounds,
                )
            )

    live_on = o["live"] if o["live"] is not None else _console.err.is_terminal
    mode = "concurrency" if isinstance(spec.load, S.ConcurrencyLoad) else "request_rate"
    with _server(o["url"], protocol, o["model"], o["model_repository"]) as (
        url,
        metrics_url,
        embedded,
    ):
        spec = replace(spec, target=replace(spec.target, url=url))
        if spec.metrics is not None and metrics_url and not o["metrics_url"]:
            spec = replace(spec, metrics=replace(spec.metrics, url=metrics_url))
        view = LiveView(mode, bool(live_on))
        levels = iter(
            spec.load.levels if isinstance(spec.load, S.ConcurrencyLoad) else spec.load.rates
        )

        def on_level(m: Measurement) -> None:
            view.on_level(m)
            view.level = float(next(levels, m.level))

        view.level = float(next(levels, 0))
        with view:
            result = run_sweep(
                spec, on_window=view.on_window, on_level=on_level, on_raw=on_raw, embedded=embedded
            )
    written = _write_outputs(
        result, latency_report_file=o["latency_report_file"], verbose_csv=o["verbose_csv"],
        percentile=o["percentile"], collect_metrics=o["collect_metrics"],
        profile_export_file=o["profile_export_file"], experiments=experiments, output_dir=o["output_dir"],
    )  # fmt: skip
    _console.out.print(
        pa_stdout.summary(result, percentile=o["percentile"], verbose=o["verbose"] > 0),
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
