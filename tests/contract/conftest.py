"""Contract fixtures: one `server` fixture parametrized over perfkit_server and a real tritonserver.

Like optuna's StorageTestCase, every test in tests/contract/ runs against each implementation.
Each test module declares `SPECS: list[IdentitySpec]`; the module's `server` fixture writes them
into a fresh repository for each server kind (same config.pbtxt, backend "perfkit_identity" or
"python"), starts that server once in explicit model-control mode with every model loaded, and
shares it between the module's tests. The `triton` param is marked `triton` and skips cleanly
when no tritonserver is installed.

A case where perfkit_server is known to differ from Triton keeps Triton's assertion and carries
`@pytest.mark.diverges("what", **params)`: on the perfkit_server param (and only where the other
params match, e.g. protocol="grpc") it becomes `xfail(strict=True)`, so a fix shows up as XPASS.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.contract._models import PERFKIT, TRITON, IdentitySpec, write_repo
from tests.contract._server import Server
from tests.fixtures.server import ServerHandle, start_server
from tests.fixtures.triton import triton_available


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "diverges(reason, **params): perfkit_server differs from Triton here; "
        "xfail(strict=True) on the perfkit_server param where the other params match",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or callspec.params.get("server") != PERFKIT:
            continue
        for mark in item.iter_markers("diverges"):
            if all(callspec.params.get(k) == v for k, v in mark.kwargs.items()):
                reason = f"perfkit_server diverges: {mark.args[0]}"
                item.add_marker(pytest.mark.xfail(strict=True, reason=reason))


@contextlib.contextmanager
def _perfkit(
    repo: Path, logs: Path, extra: tuple[str, ...] = ()
) -> Iterator[tuple[str, str, str, Path]]:
    handle: ServerHandle = start_server(
        repo,
        "--model-control-mode=explicit",
        "--load-model=*",
        *extra,
        log_path=logs / "perfkit.log",
    )
    try:
        yield handle.http_url, handle.grpc_url, handle.metrics_url, handle.log_path
    finally:
        handle.stop()


@contextlib.contextmanager
def _triton(repo: Path, logs: Path, cache: Path) -> Iterator[tuple[str, str, str, Path]]:
    from perfkit.launch import LocalTriton

    server = LocalTriton(
        repo,
        load_models=("*",),
        disable_auto_complete_config=True,
        cache_dir=cache,
        log_path=logs / "triton.log",
        # A failed load of an unknown model leaves entries Triton waits 30 s for at exit.
        extra_args=("--exit-timeout-secs=3",),
    )
    server.start()
    try:
        metrics = server.metrics_url.removesuffix("/metrics")
        yield server.http_url, server.grpc_url, metrics, logs / "triton.log"
    finally:
        server.stop()


@pytest.fixture(scope="module", params=[PERFKIT, pytest.param(TRITON, marks=pytest.mark.triton)])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The module's server of the param's kind, serving the module's SPECS (all loaded)."""
    kind: str = request.param
    if kind == TRITON and not triton_available():
        pytest.skip("no tritonserver: neither on PATH nor the nvidia-pytriton wheel")
    specs: list[IdentitySpec] = request.module.SPECS
    base = tmp_path_factory.mktemp(f"contract-{kind}")
    repo = write_repo(base / "repo", specs, kind)
    if kind == TRITON:
        launcher = _triton(repo, base, request.getfixturevalue("triton_cache_dir"))
    else:
        # A module's PERFKIT_ARGS: flags for perfkit_server that Triton takes, in its version
        # here, without asking (e.g. --allow-client-shm=true).
        launcher = _perfkit(repo, base, getattr(request.module, "PERFKIT_ARGS", ()))
    with launcher as (http_url, grpc_url, metrics_url, log_path):
        srv = Server(kind, repo, http_url, grpc_url, metrics_url, log_path,
                     {s.name: s for s in specs})  # fmt: skip
        try:
            yield srv
        finally:
            srv.close()
            if request.session.testsfailed:
                sys.stderr.write(f"----- {kind} log ({log_path}) -----\n{srv.log()[-20000:]}\n")
