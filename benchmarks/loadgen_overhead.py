"""The load generator's own cost: CPU-µs per completed request and requests/s, from one run.

Starts the embedded perfkit_server with the zoo `identity` model (or uses --http-url/--grpc-url),
and measures HTTP and gRPC closed loop at concurrency 1, 8 and 64. CPU is user+sys of this
process (all threads) during the measured windows, divided by the requests completed in them.
Targets at concurrency 64 (what perf_analyzer, a C++ tool, spent on the machine where the issue
was written): gRPC <= 70 CPU-µs/request, HTTP <= 45.

perf_analyzer cannot be installed here (PyPI holds only a placeholder), so the same run also
measures a reference that ties the figures to this machine: one blocking send and one receive per
request over loopback TCP (a bare Python socket ping-pong with an echo process; its CPU is nearly
all kernel time, most of it waking the other side). "x ping-pong" is the generator's CPU per
request over it. The generator can spend less: it writes the requests of one loop iteration
together, and reads the server's replies in bursts, so it pays fewer wake-ups than requests.

    .venv/bin/python benchmarks/loadgen_overhead.py [--window-ms 2000] [--levels 1,8,64]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import resource
import socket
import tempfile
from pathlib import Path

from perfkit import zoo
from perfkit.errors import MeasurementUnstable
from perfkit.load import measure_level
from perfkit.load.spec import InputSpec, MeasureSpec, TargetSpec

TARGET_US = {"grpc": 70.0, "http": 45.0}
ROUND_TRIPS = 20_000


def _echo(sock: socket.socket) -> None:
    conn, _ = sock.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while data := conn.recv(65536):
        conn.sendall(data)


def ping_pong_us(payload: int = 200) -> float:
    """CPU-µs of this process per loopback TCP round trip: one send, one receive, nothing else."""
    listener = socket.create_server(("127.0.0.1", 0))
    echo = multiprocessing.get_context("fork").Process(target=_echo, args=(listener,), daemon=True)
    echo.start()
    with socket.create_connection(listener.getsockname()) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        message = b"x" * payload
        for _ in range(1000):  # warm-up
            sock.sendall(message)
            sock.recv(65536)
        before = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(ROUND_TRIPS):
            sock.sendall(message)
            sock.recv(65536)
        after = resource.getrusage(resource.RUSAGE_SELF)
    echo.join(timeout=5)
    listener.close()
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return cpu / ROUND_TRIPS * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--window-ms", type=int, default=2000, help="measurement window (3 merged)")
    ap.add_argument("--levels", default="1,8,64")
    ap.add_argument("--protocols", default="http,grpc")
    ap.add_argument("--model", default="identity")
    ap.add_argument("--http-url", default=None, help="use this server instead of the embedded one")
    ap.add_argument("--grpc-url", default=None)
    ap.add_argument("--grpc-client", default="h2", choices=["h2", "grpcio"])
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    protocols = args.protocols.split(",")
    measure = MeasureSpec(interval_ms=args.window_ms, stability_pct=1000.0, max_trials=3)
    with contextlib.ExitStack() as stack:
        if args.http_url or args.grpc_url:
            urls = {"http": args.http_url or "", "grpc": args.grpc_url or ""}
            where = "the given server"
        else:
            from perfkit.launch import EmbeddedServer

            repo = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="perfkit-bench-")))
            zoo.build(args.model, repo)
            server = stack.enter_context(EmbeddedServer(repo, load_models=[args.model]))
            urls = {"http": server.http_url, "grpc": server.grpc_url}
            where = "the embedded perfkit_server"
        print(
            f"Load generator overhead, model {args.model!r} on {where}; windows of {args.window_ms} ms"
        )
        ping = ping_pong_us()
        print(
            f"reference on this machine: {ping:.1f} CPU-us per loopback send + receive, one at a "
            "time (bare sockets)"
        )
        print(
            f"{'protocol':<9}{'concurrency':>12}{'req/s':>12}{'CPU-us/req':>12}{'x ping-pong':>12}"
            f"{'CPU %':>8}{'target':>9}"
        )
        worst = 0
        for proto in protocols:
            for c in levels:
                target = TargetSpec(url=urls[proto], protocol=proto, model=args.model,  # type: ignore[arg-type]
                                    grpc_client=args.grpc_client)  # fmt: skip
                try:
                    m = measure_level(target, InputSpec(), measure, "concurrency", c)
                except MeasurementUnstable as exc:  # never with -s 1000, but report it if so
                    m = exc.measurement  # type: ignore[attr-defined]
                goal = TARGET_US[proto] if c == 64 else None
                verdict = ""
                if goal is not None:
                    ok = m.client_cpu_us_per_request <= goal
                    verdict = f"<= {goal:g} {'ok' if ok else 'MISSED'}"
                    worst = worst or (0 if ok else 1)
                print(
                    f"{proto:<9}{c:>12}{m.throughput_infer_per_s:>12.0f}"
                    f"{m.client_cpu_us_per_request:>12.1f}{m.client_cpu_us_per_request / ping:>12.2f}"
                    f"{m.client_cpu_pct:>8.0f}  {verdict}"
                )
    return worst


if __name__ == "__main__":
    raise SystemExit(main())
