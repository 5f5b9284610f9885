"""What `perfkit run` shows while it measures: the live table on a terminal (`LiveView`), or, piped
(a CI log), perf_analyzer's blocks as each level finishes and one heartbeat line per window
(`StreamView`). Both end with `rest(result)`: the part of the stdout summary not printed yet.
`perfkit tune`'s progress: `TuneView`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from rich.live import Live
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from perfkit.cli import _console
from perfkit.load import spec as S
from perfkit.results import Measurement, RunResult, WindowStat

if TYPE_CHECKING:
    from perfkit.tune.progress import TuneProgress


def _levels(load: S.LoadSpec) -> Iterator[float]:
    """The levels in the order measured: the spec's, over again for each --repeats pass."""
    return itertools.cycle(
        [float(x) for x in (load.levels if isinstance(load, S.ConcurrencyLoad) else load.rates)]
    )


class LiveView:
    """The live rich table (stderr): one row per level, updated after each window. The table
    appears with the first window (after any server start) and stays when the sweep ends."""

    def __init__(self, load: S.LoadSpec, enabled: bool) -> None:
        self.mode = "concurrency" if isinstance(load, S.ConcurrencyLoad) else "request_rate"
        self.rows: list[list[str]] = []
        self.current: list[str] | None = None
        self.enabled = enabled
        self.live: Live | None = None
        # The level being measured: the next of the spec's levels (windows do not carry it).
        self._levels = iter(_levels(load))
        self.level = float(next(self._levels, 0))

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

    def _show(self) -> None:
        if not self.enabled:
            return
        if self.live is None:
            self.live = Live(
                self._table(), console=_console.err, refresh_per_second=4, transient=False
            )
            self.live.__enter__()
        else:
            self.live.update(self._table())

    def on_window(self, w: WindowStat) -> None:
        self.current = [
            f"{self.level:g}",
            str(w.index + 1),
            f"{w.throughput_infer_per_s:,.1f}",
            f"{w.latency_avg_us:,.0f}",
            "...",
        ]
        self._show()

    def on_level(self, m: Measurement) -> None:
        self.rows.append(
            [f"{m.level:g}", str(len(m.windows)), f"{m.throughput_infer_per_s:,.1f}", f"{m.latency.avg_us:,.0f}",
             "yes" if m.stable else "[red]no[/]"]
        )  # fmt: skip
        self.current = None
        self.level = float(next(self._levels, m.level))
        self._show()

    def rest(self, result: RunResult, summary: str) -> str:
        """The stdout summary still to print: all of it (nothing was printed on stdout)."""
        return summary

    def __enter__(self) -> LiveView:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)


def _flush(*consoles: Any) -> None:
    for c in consoles:
        c.file.flush()


class StreamView:
    """Piped output: the settings block before the first level, each level's perf_analyzer block
    on stdout as soon as the level is measured, and a heartbeat on stderr after each window
    ("  window 2/10: 812.0 infer/s, avg 3.1 ms, not yet stable"), each flushed at once so that a
    CI log shows progress as it happens."""

    def __init__(self, spec: S.SweepSpec, *, percentile: float | None, verbose: bool) -> None:
        from perfkit.load import settings_of

        self.spec = spec
        self.percentile = percentile
        self.verbose = verbose
        self.printed: list[str] = []
        self.settings: dict[str, Any] = settings_of(spec)
        self.windows: list[WindowStat] = []
        self._levels = iter(_levels(spec.load))
        self.level = next(self._levels, 0.0)
        self.mode = "concurrency" if isinstance(spec.load, S.ConcurrencyLoad) else "request rate"
        load = spec.load
        self.per_pass = len(load.levels if isinstance(load, S.ConcurrencyLoad) else load.rates)
        self.started = 0  # levels started so far (each --repeats pass starts them all again)

    def _out(self, lines: list[str]) -> None:
        if not self.printed:
            from perfkit.report import pa_stdout

            lines = [
                *pa_stdout.settings_block(
                    self.settings, percentile=self.percentile, verbose=self.verbose
                ),
                *lines,
            ]
        self.printed += lines
        _console.out.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)
        _flush(_console.out)

    def heartbeat(self, w: WindowStat) -> str:
        """One window's line: its throughput and stabilizing latency, and where stability is."""
        measure = self.spec.measure
        if w.index == 0:
            self.windows = []
        self.windows.append(w)
        lat = "avg" if self.percentile is None else f"p{self.percentile:g}"
        text = (
            f"  window {w.index + 1}"
            + ("" if measure.fixed_request_count else f"/{measure.max_trials}")
            + f": {w.throughput_infer_per_s:,.1f} infer/s, {lat} "
            f"{w.latency_stability_us / 1000:.3g} ms"
        )
        if measure.fixed_request_count:
            return text
        from perfkit.load import is_stable

        ok = is_stable(self.windows, pct=measure.stability_pct, windows=measure.stability_windows)
        return text + (", stable" if ok else ", not yet stable")

    def on_window(self, w: WindowStat) -> None:
        if not self.printed:
            self._out([])  # the settings block, before the first level's first heartbeat
        if w.index == 0 and not self.spec.binary_search:  # a binary search picks its levels
            self.started += 1
            repeats = self.spec.repeats
            npass = (self.started - 1) // max(self.per_pass, 1) + 1
            which = f" (repeat {npass}/{repeats})" if repeats > 1 else ""
            _console.err.print(f"{self.mode} {self.level:g}{which}:", markup=False, highlight=False)
        _console.err.print(self.heartbeat(w), markup=False, highlight=False)
        _flush(_console.err)

    def on_level(self, m: Measurement) -> None:
        from perfkit.report import pa_stdout

        block = pa_stdout.level_block(
            m, protocol=self.spec.target.protocol, percentile=self.percentile, verbose=self.verbose
        )
        self._out(["", *block])
        self.level = next(self._levels, m.level)

    def rest(self, result: RunResult, summary: str) -> str:
        """The stdout summary still to print: what follows the blocks already printed (the
        final table), or, should the summary differ from the blocks, the final table alone."""
        full = summary.split("\n")
        n = len(self.printed)
        if not n or full[:n] == self.printed:
            return "\n".join(full[n:])
        from perfkit.report import pa_stdout

        tail = pa_stdout.final_table(result.measurements, percentile=self.percentile)
        return "\n".join(["", *tail])

    def __enter__(self) -> StreamView:
        return self

    def __exit__(self, *exc: object) -> None:
        _flush(_console.out, _console.err)


class TuneView:
    """`perfkit tune`'s progress (stderr): rich's progress bar on a terminal (trial k/N, what the
    trial is doing, elapsed, ETA, best so far), one plain line per event when piped (a CI log),
    flushed as written. Called with each `perfkit.tune.progress.TuneProgress`."""

    def __init__(self, *, live: bool) -> None:
        self.live = live
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def __call__(self, p: TuneProgress) -> None:
        from perfkit.tune.progress import clock, progress_line

        if not self.live:
            _console.err.print(progress_line(p), markup=False, highlight=False)
            _flush(_console.err)
            return
        eta = "?" if p.eta_s is None else clock(p.eta_s)
        best = f"best {p.best}" if p.best else ""
        done = p.trial if p.doing.startswith("done") else p.trial - 1
        what = f"trial {p.trial}/{max(p.trials, p.trial)}: {p.doing}"
        if self.bar is None:
            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                TextColumn("ETA {task.fields[eta]}"), TextColumn("{task.fields[best]}"),
                TextColumn("{task.fields[variant]}"), console=_console.err, transient=True,
            )  # fmt: skip
            self.bar.start()
            self.task = self.bar.add_task(
                what, total=max(p.trials, p.trial), eta=eta, best=best, variant=p.variant
            )
        assert self.task is not None
        self.bar.update(
            self.task, description=what, total=max(p.trials, p.trial), completed=done, eta=eta,
            best=best, variant=p.variant,
        )  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __enter__(self) -> TuneView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
