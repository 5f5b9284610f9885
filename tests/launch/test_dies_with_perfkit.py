"""Issue #10 finding 10: every server perfkit starts dies with perfkit, SIGKILL included.

A child Python process (standing in for perfkit) starts the server from a thread that then exits
(PR_SET_PDEATHSIG on the server would fire right there: the mechanism must not depend on the
starting thread), prints the server's pid and ports, and blocks. The test SIGKILLs it and waits,
bounded, until the server's pid is gone and its ports refuse connections.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from perfkit.launch._probe import port_open
from tests.fixtures.triton import triton_available, write_identity

ROOT = Path(__file__).resolve().parents[2]

_CALLER = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    from perfkit.launch import EmbeddedServer, LocalTriton

    repo, kind = Path(sys.argv[1]), sys.argv[2]
    started = []

    def start():
        if kind == "embedded":
            server = EmbeddedServer(repo, load_models=["identity"])
        else:
            server = LocalTriton(repo, load_models=["identity"], disable_auto_complete_config=True,
                                 cache_dir=Path(sys.argv[3]))
        started.append(server.start())

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()  # the thread that started the server is gone from here on
    s = started[0]
    print("READY", s.pid, s.http_port, s.grpc_port, flush=True)
    sys.stdin.read()  # until killed
    """
)


def _read_line(proc: subprocess.Popen[bytes], timeout_s: float) -> bytes:
    """The child's first output line: select on its pipe, bounded."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout_s
    while b"\n" not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no READY line within {timeout_s} s: {seen!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            assert chunk, f"the caller exited before its server was ready: {seen!r}"
            seen += chunk
    return seen.split(b"\n", 1)[0]


def assert_gone(pid: int, ports: list[int], timeout_s: float = 30.0) -> None:
    """Bounded wait for `pid` to exit (psutil polls /proc), then every port refuses connections."""
    try:
        psutil.Process(pid).wait(timeout=timeout_s)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        os.kill(pid, signal.SIGKILL)  # clean up after the failure below
        pytest.fail(f"server pid {pid} still running {timeout_s} s after its perfkit was killed")
    for port in ports:
        assert not port_open("127.0.0.1", port), f"port {port} still accepts connections"


def _kill_caller_and_check(args: list[str]) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _CALLER, *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as proc:
        try:
            line = _read_line(proc, 120).decode()
            _, pid, http_port, grpc_port = line.split()
            ports = [int(http_port), int(grpc_port)]
            assert psutil.pid_exists(int(pid))
            assert all(port_open("127.0.0.1", p) for p in ports)
            proc.kill()
            proc.wait(10)
            assert_gone(int(pid), ports)
        finally:
            if proc.poll() is None:
                proc.kill()


def test_embedded_server_dies_with_a_sigkilled_perfkit(zoo_repo: Path) -> None:
    _kill_caller_and_check([str(zoo_repo), "embedded"])


@pytest.mark.triton
def test_local_triton_dies_with_a_sigkilled_perfkit(tmp_path: Path, triton_cache_dir: Path) -> None:
    if not triton_available():
        pytest.skip("no tritonserver: neither on PATH nor the nvidia-pytriton wheel")
    repo = tmp_path / "repo"
    write_identity(repo)
    _kill_caller_and_check([str(repo), "triton", str(triton_cache_dir)])


def test_a_watchdog_killed_alone_takes_its_server_with_it(zoo_repo: Path) -> None:
    """Linux: the server has PR_SET_PDEATHSIG=SIGKILL on its watchdog (one thread: no thread
    subtlety there), so even a SIGKILL of the watchdog alone leaves no server behind."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    from perfkit.launch import EmbeddedServer

    with EmbeddedServer(zoo_repo, load_models=["identity"]) as server:
        pid = server.pid
        assert pid is not None
        watchdog = psutil.Process(pid).parent()
        assert watchdog.pid != os.getpid()
        watchdog.kill()
        assert_gone(pid, [server.http_port, server.grpc_port])
