"""perfkit_server soak: flat memory and file descriptors under mixed HTTP + gRPC load (issue 10).

Starts the embedded server with the zoo `identity`, then for `--minutes` (default 5) drives it with
perfkit's own load generator: one closed-loop HTTP load and one closed-loop gRPC load at the same
time (one thread each), in segments of up to `--segment-s` seconds, each a new session (so
connections are opened and closed all along, as clients do). Every `--sample-s` seconds it samples
the server process's RSS and open fds (psutil) and prints the sample.

At the end it prints the least-squares slope of RSS over time (MB/min) after a warm-up (the first
fifth of the run, at least one sample: allocator arenas and caches settle there), the fd range, and
the requests served. Target (issue 10, acceptance 3): RSS slope < 1 MB/min (the fd count and its
slope are printed beside it: connections come and go with the sessions); exit status 1 when
missed or when the server died. Every figure comes from this one run.

    .venv/bin/python benchmarks/soak.py [--minutes 5] [--concurrency 8] [--sample-s 5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from perfkit import zoo
from perfkit.errors import MeasurementUnstable, PerfkitError
from perfkit.launch import EmbeddedServer
from perfkit.load import measure_level
from perfkit.load.spec import InputSpec, MeasureSpec, TargetSpec

TARGET_SLOPE_MB_PER_MIN = 1.0


@dataclass
class Counts:
    requests: int = 0
    errors: int = 0
    segments: int = 0
    failures: list[str] = field(default_factory=list)


def drive(
    url: str, protocol: str, concurrency: int, deadline: float, segment_s: float, counts: Counts
) -> None:
    """Closed-loop load on `identity` until `deadline` (monotonic), a session per segment."""
    target = TargetSpec(url=url, protocol=protocol, model="identity")  # type: ignore[arg-type]
    while (left := deadline - time.monotonic()) > 1.0:
        seconds = min(segment_s, left)
        measure = MeasureSpec(
            interval_ms=max(200, int(seconds * 1000 / 3)),
            stability_pct=1000.0,  # take the windows as they come: this is load, not a figure
            max_trials=3,
            warmup_request_count=concurrency,
        )
        try:
            m = measure_level(target, InputSpec(), measure, "concurrency", concurrency)
        except MeasurementUnstable as exc:
            m = exc.measurement  # type: ignore[attr-defined]
        except PerfkitError as exc:  # a soak reports what broke and goes on
            counts.failures.append(f"{protocol}: {type(exc).__name__}: {exc}")
            time.sleep(1.0)
            continue
        counts.requests += m.request_count
        counts.errors += m.error_count
        counts.segments += 1


@dataclass
class Sample:
    t_min: float
    rss_mb: float
    fds: int


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return sxy / sxx if sxx else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=8, help="per protocol")
    ap.add_argument("--sample-s", type=float, default=5.0)
    ap.add_argument("--segment-s", type=float, default=30.0, help="load per session")
    args = ap.parse_args()
    load = os.getloadavg()
    print(
        f"perfkit_server soak: {args.minutes:g} min of closed-loop HTTP + gRPC load "
        f"(concurrency {args.concurrency} each) on {os.cpu_count()} cores; load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start"
    )
    samples: list[Sample] = []
    counts = {"http": Counts(), "grpc": Counts()}
    with tempfile.TemporaryDirectory(prefix="perfkit-soak-") as tmp:
        repo = Path(tmp) / "repo"
        zoo.build("identity", repo)
        with EmbeddedServer(repo, load_models=["identity"]) as server:
            assert server.pid is not None
            proc = psutil.Process(server.pid)
            start = time.monotonic()
            deadline = start + args.minutes * 60
            threads = [
                threading.Thread(
                    target=drive,
                    args=(
                        server.url(protocol),
                        protocol,
                        args.concurrency,
                        deadline,
                        args.segment_s,
                        counts[protocol],
                    ),
                    daemon=True,
                )
                for protocol in ("http", "grpc")
            ]
            for thread in threads:
                thread.start()
            print(f"  {'min':>6} {'RSS MB':>8} {'fds':>5}")
            next_at = start
            while True:
                now = time.monotonic()
                s = Sample((now - start) / 60, proc.memory_info().rss / 2**20, proc.num_fds())
                samples.append(s)
                print(f"  {s.t_min:6.2f} {s.rss_mb:8.1f} {s.fds:5d}", flush=True)
                if now >= deadline:
                    break
                next_at += args.sample_s
                time.sleep(max(0.0, min(next_at, deadline) - time.monotonic()))
            for thread in threads:
                thread.join()
            alive = server.alive()
    warm = max(1, len(samples) // 5)
    steady = samples[warm:]
    rss_slope = slope([(s.t_min, s.rss_mb) for s in steady])
    fd_slope = slope([(s.t_min, float(s.fds)) for s in steady])
    print(
        f"\n  RSS {samples[0].rss_mb:.1f} -> {samples[-1].rss_mb:.1f} MB; after the warm-up "
        f"(first {warm} sample(s)) {steady[0].rss_mb:.1f} -> {steady[-1].rss_mb:.1f} MB, "
        f"min {min(s.rss_mb for s in steady):.1f}, max {max(s.rss_mb for s in steady):.1f}"
        if steady
        else "\n  too few samples for a slope"
    )
    print(
        f"  fds min {min(s.fds for s in samples)} max {max(s.fds for s in samples)}; "
        f"fd slope {fd_slope:+.2f}/min"
    )
    for protocol, c in counts.items():
        print(
            f"  {protocol}: {c.requests} requests, {c.errors} errors, {c.segments} sessions"
            + (f", {len(c.failures)} failed segments: {c.failures[:3]}" if c.failures else "")
        )
    met = rss_slope < TARGET_SLOPE_MB_PER_MIN and alive
    print(
        f"  RSS slope {rss_slope:+.3f} MB/min (target < {TARGET_SLOPE_MB_PER_MIN:g}) "
        f"{'ok' if met else 'MISSED'}" + ("" if alive else "; the server died")
    )
    load = os.getloadavg()
    print(f"\nload average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
