"""`perfkit run` end to end (a subprocess, as users run it) against perfkit_server."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.server import start_server
from tests.load.helpers import build_repo
from tests.load.test_pure import PA_DEFAULT, PA_VERBOSE_METRICS

QUICK = ["-p", "250", "-s", "1000", "-r", "8"]  # loose: about behaviour, not CI noise


def perfkit(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "perfkit", "run", "--no-live", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


def flat(text: str) -> str:
    """Rich wraps long lines at the terminal width: compare with the line breaks removed."""
    return " ".join(text.split())


def no_traceback(p: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in p.stderr + p.stdout, p.stderr


@pytest.mark.parametrize(
    "load", [["--concurrency-range", "1:2"], ["--request-rate-range", "50:100:50"]]
)
@pytest.mark.parametrize("verbose", [False, True])
def test_csv_headers_byte_identical(run_server, tmp_path, load, verbose):
    out = tmp_path / "pa.csv"
    extra = ["--verbose-csv"] if verbose else []
    p = perfkit("-m", "fast", "-u", run_server.http_url, *load, "--request-count", "30",
                "-f", str(out), *extra)  # fmt: skip
    assert p.returncode == 0, p.stderr
    lines = out.read_text().splitlines()
    first = "Concurrency" if load[0] == "--concurrency-range" else "Request Rate"
    want = PA_DEFAULT if not verbose else PA_VERBOSE_METRICS.rsplit(",Avg GPU Utilization", 1)[0]
    assert lines[0] == want.replace("Concurrency", first, 1)
    assert len(lines) == 3
    # perf_analyzer's order: ascending Inferences/Second.
    thr = [float(x.split(",")[1]) for x in lines[1:]]
    assert thr == sorted(thr)


def test_embedded_server_summary_and_rows(tmp_path):
    out = tmp_path / "out.csv"
    p = perfkit("-m", "identity", "--concurrency-range", "1:2", "--request-count", "50", "-f", str(out),
                "--output-dir", str(tmp_path / "run"), "-i", "grpc")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "Request concurrency: 1" in p.stdout
    assert "Request concurrency: 2" in p.stdout
    assert "Inferences/Second vs. Client Average Batch Latency" in p.stdout
    assert "Avg gRPC time" in p.stdout
    assert "Avg request latency" in p.stdout
    assert len(out.read_text().splitlines()) == 3
    files = {f.name for f in (tmp_path / "run").iterdir()}
    assert {"perf_analyzer.csv", "profile_export.json", "results.json", "results.csv"} <= files
    from perfkit.report.schema import load_result

    back = load_result(tmp_path / "run")
    assert [m.level for m in back.measurements] == [1.0, 2.0]  # type: ignore[union-attr]
    doc = json.loads((tmp_path / "run" / "profile_export.json").read_text())
    assert [e["experiment"] for e in doc["experiments"]] == [
        {"mode": "concurrency", "value": 1}, {"mode": "concurrency", "value": 2}]  # fmt: skip
    req = doc["experiments"][0]["requests"][0]
    assert req["response_timestamps"][0] > req["timestamp"] > 1.6e18


def test_time_windows_stable_open_loop_summary(run_server):
    p = perfkit("-m", "stall", "-u", run_server.http_url, "--request-rate-range", "100", *QUICK,
                "--percentile", "95", "-v")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "Request Rate: 100 inference requests per second" in p.stdout
    assert "Stabilizing using p95latency and throughput" in p.stdout
    assert "Corrected latency (from the scheduled send time)" in p.stdout
    assert "Late sends:" in p.stdout
    assert "\n    Avg latency:" not in p.stdout


def test_unstable_exit_2_and_request_count_never_unstable(run_server, tmp_path):
    out = tmp_path / "u.csv"
    p = perfkit(
        "-m",
        "fast",
        "-u",
        run_server.http_url,
        "-p",
        "100",
        "-s",
        "0.0001",
        "-r",
        "3",
        "-f",
        str(out),
    )
    assert p.returncode == 2, p.stderr
    assert "Failed to obtain stable measurement within 3 measurement windows for concurrency 1. " \
           "Please try to increase the --measurement-interval." in flat(p.stderr)  # fmt: skip
    assert len(out.read_text().splitlines()) == 2  # the unstable level is still written
    # An unstable level does not end the sweep: every level is measured and written, exit 2.
    p = perfkit("-m", "fast", "-u", run_server.http_url, "--concurrency-range", "1:2", "-p", "100",
                "-s", "0.0001", "-r", "3", "-f", str(out))  # fmt: skip
    assert p.returncode == 2, p.stderr
    assert len(out.read_text().splitlines()) == 3
    p = perfkit(
        "-m", "fast", "-u", run_server.http_url, "-s", "0.0001", "-r", "3", "--request-count", "40"
    )
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["-m", "nope"], 3, "Model 'nope' is not available"),
        (["-m", "fast", "-x", "7"], 3, "version 7 is not available"),
        (["-m", "varid"], 3, "--shape INPUT0:N"),
        (["-m", "varid", "--shape", "INPUT0:2,2"], 3, "does not fit model 'varid'"),
        (["-m", "fast", "--shape", "INPUT0:abc"], 3, "is not NAME:d1,d2"),
        (["-m", "fast", "--concurrency-range", "4:1"], 3, "--concurrency-range: '4:1'"),
        (["-m", "fast", "--concurrency-range", "a:b"], 3, "is not start[:end[:step]]"),
        (["-m", "fast", "--request-rate-range", "0"], 3, "--request-rate-range"),
        (["-m", "fast", "-b", "9"], 3, "above max_batch_size 8"),
        (["-m", "fast", "--input-data", "missing.json"], 3, "--input-data"),
        (["-m", "fast", "--request-intervals", "missing.txt"], 3, "cannot read missing.txt"),
    ],
)
def test_bad_input_exit_codes(run_server, args, code, message):
    p = perfkit(*args, "-u", run_server.http_url, "--request-count", "5")
    assert p.returncode == code, p.stderr
    assert message in flat(p.stderr)
    no_traceback(p)


def test_input_json_not_matching_the_model(run_server, tmp_path):
    f = tmp_path / "d.json"
    f.write_text(json.dumps({"data": [{"INPUT0": [1.0, 2.0]}]}))
    p = perfkit(
        "-m", "fast", "-u", run_server.http_url, "--input-data", str(f), "--request-count", "5"
    )
    assert p.returncode == 3
    assert "has 2 values but the model needs 16" in flat(p.stderr)
    no_traceback(p)
    f.write_text(json.dumps({"data": [{"INPUT0": list(range(16))}]}))
    p = perfkit(
        "-m", "fast", "-u", run_server.http_url, "--input-data", str(f), "--request-count", "5"
    )
    assert p.returncode == 0, p.stderr


def test_server_not_there_bounded_wait():
    t = time.monotonic()
    p = perfkit("-m", "fast", "-u", "127.0.0.1:9", "--connect-timeout", "1")
    assert p.returncode == 99
    assert "No server answered at 127.0.0.1:9 (http) within 1 s" in flat(p.stderr)
    assert time.monotonic() - t < 30
    no_traceback(p)


def test_unknown_zoo_model_embedded():
    p = perfkit("-m", "no_such_zoo_model", "--request-count", "5")
    assert p.returncode == 3, p.stderr
    no_traceback(p)


def _read_until(fd: int, needle: bytes, timeout: float = 120.0) -> bytes:
    """The child's terminal output up to `needle` (select on the pty: waits for the event, no
    sleep); raises when the terminal closes or `timeout` passes first."""
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(
                f"no {needle!r} from perfkit run within {timeout:g} s: {seen[-2000:]!r}"
            )
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed its terminal
            chunk = b""
        if not chunk:
            raise AssertionError(f"perfkit run ended before {needle!r}: {seen[-2000:]!r}")
        seen += chunk
    return seen


def _read_to_end(fd: int, timeout: float = 120.0) -> bytes:
    """The rest of the child's terminal output, until it closes the terminal (it exited)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], deadline - time.monotonic())
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every writer closed the terminal
            return seen
        if not chunk:
            return seen
        seen += chunk
    raise TimeoutError(f"perfkit run did not end within {timeout:g} s")


def _sweep_then(tmp_path: Path, action: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Sweep 40 levels with the live view on a terminal (a pty as stderr); once it shows a level
    measured ("yes" in its stable column), kill the server or press Ctrl-C."""
    (tmp_path / "repo").mkdir()
    repo = build_repo(tmp_path / "repo", tmp_path / "cache")
    out = tmp_path / "kept.csv"
    master, slave = os.openpty()
    env = dict(os.environ, COLUMNS="200")
    with start_server(repo) as server, (tmp_path / "stdout.txt").open("w+") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-m", "perfkit", "run", "--live", "-m", "fast", "-u", server.http_url,
             "--concurrency-range", "1:40", *QUICK, "-f", str(out)],
            stdout=stdout, stderr=slave, env=env,
        )  # fmt: skip
        os.close(slave)
        try:
            seen = _read_until(master, b"yes")  # the live table's first measured level
            if action == "kill-server":
                server.process.kill()
            else:
                proc.send_signal(signal.SIGINT)
            seen += _read_to_end(master)
            proc.wait(timeout=120)
        finally:
            os.close(master)
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        stdout.seek(0)
        printed = stdout.read()
    stderr = seen.decode(errors="replace")
    return subprocess.CompletedProcess(proc.args, proc.returncode, printed, stderr), out


def test_server_dying_mid_sweep_keeps_levels(tmp_path):
    p, out = _sweep_then(tmp_path, "kill-server")
    assert p.returncode == 99, p.stderr
    assert "level(s) measured before are kept" in flat(p.stderr)
    assert len(out.read_text().splitlines()) >= 2
    no_traceback(p)


def test_ctrl_c_keeps_levels(tmp_path):
    p, out = _sweep_then(tmp_path, "sigint")
    assert p.returncode == 130, p.stderr
    assert len(out.read_text().splitlines()) >= 2
    assert "Request concurrency: 1" in p.stdout
    no_traceback(p)


def test_collect_metrics_gpu_columns_empty_without_gpu(run_server, tmp_path):
    out = tmp_path / "m.csv"
    metrics = run_server.metrics_url + "/metrics"
    p = perfkit("-m", "fast", "-u", run_server.http_url, "--request-count", "50", "--collect-metrics",
                "--metrics-url", metrics, "--metrics-interval", "100", "--verbose-csv", "-f", str(out))  # fmt: skip
    assert p.returncode == 0, p.stderr
    head, row = out.read_text().splitlines()
    assert head == PA_VERBOSE_METRICS
    assert row.endswith(",,,,")  # no GPU: the four GPU cells stay empty


def test_count_windows_and_request_intervals(run_server, tmp_path):
    p = perfkit("-m", "fast", "-u", run_server.http_url, "--measurement-mode", "count_windows",
                "--measurement-request-count", "20", "-s", "1000")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "Minimum number of samples in each window: 20" in p.stdout
    iv = tmp_path / "iv.txt"
    iv.write_text("2000\n8000\n")  # 2 requests per 10 ms: 200 req/s
    out = tmp_path / "iv.csv"
    p = perfkit("-m", "fast", "-u", run_server.http_url, "--request-intervals", str(iv),
                "--request-count", "100", "-f", str(out))  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert out.read_text().splitlines()[1].startswith("200,")
    assert "Using custom request intervals" in p.stdout


def test_concurrency_until_latency_threshold(run_server):
    p = perfkit("-m", "slow", "-u", run_server.http_url, "--concurrency-range", "1:0:2", "-l", "12",
                "--request-count", "20")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "Request concurrency: 3" in p.stdout
    assert "Measured latency went over the set limit of 12 msec." in flat(p.stderr)


def test_embedded_server_with_model_repository(tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "cache").mkdir()
    repo = build_repo(tmp_path / "repo", tmp_path / "cache")
    p = perfkit("-m", "fast", "--model-repository", str(repo), "--request-count", "20")
    assert p.returncode == 0, p.stderr
    assert "Request concurrency: 1" in p.stdout
    p = perfkit("-m", "absent", "--model-repository", str(repo), "--request-count", "20")
    assert p.returncode == 3
    assert "has no model directory 'absent'" in flat(p.stderr)
    no_traceback(p)


def test_workers_from_the_cli(run_server):
    p = perfkit("-m", "fast", "-u", run_server.grpc_url, "-i", "grpc", "--concurrency-range", "4",
                "--workers", "2", *QUICK)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "Using 2 load-generator processes" in p.stdout
    no_traceback(p)
