"""`perfkit run --shared-memory` end to end against perfkit_server: inputs and outputs in system
shared memory over HTTP and gRPC (and the embedded server, which perfkit starts with
--allow-client-shm=true), nothing left registered on the server nor in /dev/shm afterwards, also
after a Ctrl-C; `--shared-memory cuda` without CUDA is a bad option (exit 3), not a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from perfkit import zoo
from tests.cli_run.test_cli import _read_to_end, _read_until, flat, no_traceback, perfkit
from tests.fixtures.server import ServerHandle, start_server

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
QUICK = ["-p", "250", "-s", "1000", "-r", "4"]


def _perfkit_shm_objects() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("perfkit_")}


@pytest.fixture(scope="module")
def shm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    repo = tmp_path_factory.mktemp("repo")
    zoo.build("add_sub", repo)
    with start_server(repo, "--allow-client-shm=true") as server:
        yield server


def _registered(server: ServerHandle) -> list[object]:
    with _OPENER.open(f"http://{server.http_url}/v2/systemsharedmemory/status", timeout=10) as r:
        regions: list[object] = json.loads(r.read())
    return regions


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_system_shm_run_leaves_nothing(shm_server: ServerHandle, protocol: str) -> None:
    before = _perfkit_shm_objects()
    url = shm_server.http_url if protocol == "http" else shm_server.grpc_url
    p = perfkit("-m", "add_sub", "-u", url, "-i", protocol, "--shared-memory", "system",
                "-b", "2", "--request-count", "40")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "Avg request latency" in p.stdout
    no_traceback(p)
    assert _registered(shm_server) == []
    assert _perfkit_shm_objects() <= before


def test_system_shm_embedded_server() -> None:
    before = _perfkit_shm_objects()
    p = perfkit("-m", "identity", "--shared-memory", "system", "--output-shared-memory-size",
                "4096", "--request-count", "30")  # fmt: skip
    assert p.returncode == 0, p.stderr
    no_traceback(p)
    assert _perfkit_shm_objects() <= before


def test_server_without_client_shm_is_a_clear_error(run_server: ServerHandle) -> None:
    p = perfkit("-m", "fast", "-u", run_server.http_url, "--shared-memory", "system",
                "--request-count", "5")  # fmt: skip
    assert p.returncode == 99, p.stderr
    assert "--allow-client-shm=true" in flat(p.stderr)
    no_traceback(p)


def test_cuda_without_cuda_is_a_bad_option(shm_server: ServerHandle) -> None:
    if os.path.exists("/dev/nvidiactl"):
        pytest.skip("this machine has an NVIDIA driver")
    p = perfkit("-m", "add_sub", "-u", shm_server.http_url, "--shared-memory", "cuda",
                "--request-count", "5")  # fmt: skip
    assert p.returncode == 3, p.stderr
    assert "--shared-memory cuda: CUDA shared memory is not available here" in flat(p.stderr)
    no_traceback(p)


def test_bad_output_shared_memory_size(shm_server: ServerHandle) -> None:
    p = perfkit("-m", "add_sub", "-u", shm_server.http_url, "--shared-memory", "system",
                "--output-shared-memory-size", "0", "--request-count", "5")  # fmt: skip
    assert p.returncode == 3, p.stderr
    assert "--output-shared-memory-size" in flat(p.stderr)
    no_traceback(p)


def test_ctrl_c_leaves_nothing(shm_server: ServerHandle, tmp_path: Path) -> None:
    """Ctrl-C once the live view shows a measured level: the regions are unregistered and gone."""
    before = _perfkit_shm_objects()
    master, slave = os.openpty()
    env = dict(os.environ, COLUMNS="200")
    with (tmp_path / "stdout.txt").open("w") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-m", "perfkit", "run", "--live", "-m", "add_sub", "-u",
             shm_server.http_url, "--shared-memory", "system", "--concurrency-range", "1:40",
             *QUICK],
            stdout=stdout, stderr=slave, env=env,
        )  # fmt: skip
    os.close(slave)
    try:
        _read_until(master, b"yes")  # the live table's first measured level
        assert _registered(shm_server) != []
        proc.send_signal(signal.SIGINT)
        _read_to_end(master)
        assert proc.wait(timeout=120) == 130
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert _registered(shm_server) == []
    assert _perfkit_shm_objects() <= before


@pytest.mark.gpu
def test_cuda_shm_run(shm_server: ServerHandle) -> None:
    """The real path on a GPU host: regions on GPU 0, opened by the server through CuPy."""
    pytest.importorskip("cupy")
    try:
        import tritonclient.utils.cuda_shared_memory  # noqa: F401
    except Exception as exc:  # RuntimeError without cuda-python
        pytest.skip(f"tritonclient's CUDA shared memory does not load: {exc}")
    for protocol, url in (("http", shm_server.http_url), ("grpc", shm_server.grpc_url)):
        p = perfkit("-m", "add_sub", "-u", url, "-i", protocol, "--shared-memory", "cuda",
                    "--request-count", "40")  # fmt: skip
        assert p.returncode == 0, p.stderr
        no_traceback(p)
    with _OPENER.open(f"http://{shm_server.http_url}/v2/cudasharedmemory/status", timeout=10) as r:
        assert json.loads(r.read()) == []
