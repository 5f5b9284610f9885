"""Open-loop send schedules: pure generators of intended send offsets in nanoseconds.

Offsets are absolute from the start of the level (t0 on the monotonic clock), so a late send never
shifts the sends after it (wrk2's rule: no coordinated omission).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from perfkit.errors import ConfigError


def constant(rate_rps: float) -> Iterator[int]:
    """Sends every 1/rate seconds: offsets 0, T, 2T, ... (computed, not accumulated)."""
    period = 1e9 / rate_rps
    k = 0
    while True:
        yield int(k * period)
        k += 1


def poisson(rate_rps: float, *, seed: int = 0) -> Iterator[int]:
    """Exponential inter-arrival times with mean 1/rate (a Poisson process), seeded."""
    rng = np.random.default_rng(seed)
    t = 0.0
    while True:
        gaps = rng.exponential(1e9 / rate_rps, 4096)
        for g in gaps.tolist():
            yield int(t)
            t += g


def from_intervals(intervals_us: Sequence[int]) -> Iterator[int]:
    """perf_analyzer's --request-intervals: the given gaps (µs), looped forever."""
    t = 0
    while True:
        for gap in intervals_us:
            yield t
            t += gap * 1000


def read_intervals(path: str) -> list[int]:
    """Read a --request-intervals file: one non-negative interval in microseconds per line."""
    p = Path(path)
    try:
        lines = p.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"--request-intervals: cannot read {path}: {exc.strerror}.") from exc
    out: list[int] = []
    for n, raw in enumerate(lines, 1):
        s = raw.strip()
        if not s:
            continue
        try:
            v = int(float(s))
        except ValueError:
            raise ConfigError(
                f"--request-intervals: {path}:{n}: {s!r} is not an interval in microseconds."
            ) from None
        if v < 0:
            raise ConfigError(f"--request-intervals: {path}:{n}: interval {v} is negative.")
        out.append(v)
    if not out or sum(out) == 0:
        raise ConfigError(f"--request-intervals: {path} holds no positive interval.")
    return out


def mean_rate(intervals_us: Sequence[int]) -> float:
    """The request rate (per second) an intervals file amounts to."""
    return len(intervals_us) * 1e6 / sum(intervals_us)


def make(
    rate_rps: float,
    distribution: str,
    *,
    intervals_us: Sequence[int] | None = None,
    seed: int = 0,
) -> Iterator[int]:
    """The schedule for one level: intervals file if given, else constant or poisson at rate."""
    if intervals_us:
        return from_intervals(intervals_us)
    if distribution == "poisson":
        return poisson(rate_rps, seed=seed)
    return constant(rate_rps)
