"""`perfkit run` against secured endpoints, as perf_analyzer's flags reach them: HTTPS
(`-u https://`, `--ssl-https-*`) and gRPC over TLS (`--ssl-grpc-*`) on perfkit_server serving a
certificate the test makes, with and without client certificates (mutual TLS); a wrong CA fails
on one line with exit 99; `-H` headers arrive at the server on both protocols (its test hook
records them) and a malformed one is exit 3.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server.test_tls import (
    Certs,
    headers_seen,
    start_tls_server,
    tls_args,
    tls_certs,
    tls_repo,
)

pytest.importorskip("trustme")

QUICK = ["--concurrency-range", "2", "--request-count", "40", "--connect-timeout", "10"]


def perfkit(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "perfkit", "run", "--no-live", "-m", "fast", *QUICK, *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


def error_lines(p: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in p.stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    # Named localhost only: -u https://127.0.0.1:PORT is then a name the certificate lacks.
    return tls_certs(tmp_path_factory.mktemp("certs"), names=("localhost",))


@pytest.fixture(scope="module")
def hook_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hooks")


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, certs: Certs, hook_dir: Path):
    repo = tls_repo(tmp_path_factory.mktemp("repo"))
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with start_tls_server(repo, *tls_args(certs), log_path=log, hook_dir=hook_dir) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, certs: Certs):
    repo = tls_repo(tmp_path_factory.mktemp("mrepo"))
    log = tmp_path_factory.mktemp("mlogs") / "server.log"
    with start_tls_server(repo, *tls_args(certs, mutual=True), log_path=log) as server:
        yield server


def _client_cert(certs: Certs, protocol: str) -> list[str]:
    if protocol == "http":
        return [f"--ssl-https-client-certificate-file={certs.client_cert}",
                f"--ssl-https-private-key-file={certs.client_key}"]  # fmt: skip
    return [f"--ssl-grpc-certificate-chain-file={certs.client_cert}",
            f"--ssl-grpc-private-key-file={certs.client_key}"]  # fmt: skip


def _local(url: str) -> str:
    """127.0.0.1:PORT -> localhost:PORT (the name the certificate has)."""
    return "localhost:" + url.rsplit(":", 1)[1]


def _target(server, certs: Certs, protocol: str, *, ca: Path | None = None) -> list[str]:
    ca = certs.ca if ca is None else ca
    if protocol == "http":
        return [
            "-u",
            f"https://{_local(server.http_url)}",
            f"--ssl-https-ca-certificates-file={ca}",
        ]
    return ["-i", "grpc", "-u", _local(server.grpc_url), "--ssl-grpc-use-ssl",
            f"--ssl-grpc-root-certifications-file={ca}"]  # fmt: skip


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_run_over_tls_with_headers(tls_server, certs, hook_dir, protocol):
    """The lean clients (HTTP/1.1, h2) over asyncio's SSL transport: every request, and the
    control calls, carry the -H headers."""
    p = perfkit(*_target(tls_server, certs, protocol),
                "-H", f"X-Perfkit-Test: cli-{protocol}", "-H", "Authorization:Bearer t0k3n")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "Request concurrency: 2" in p.stdout
    seen = headers_seen(hook_dir)
    assert f"{protocol} x-perfkit-test: cli-{protocol}" in seen, seen
    assert f"{protocol} authorization: Bearer t0k3n" in seen, seen
    if protocol == "grpc":
        assert "grpc :scheme: https" in seen, seen


def test_grpcio_transport_over_tls_with_metadata(tls_server, certs, hook_dir):
    """grpc's own client (TargetSpec.grpc_client "grpcio", the Python API's fallback transport)
    on a secure channel, its calls carrying the headers as metadata."""
    from perfkit.load import run
    from perfkit.load import spec as S
    from perfkit.tls import TlsSettings

    target = S.TargetSpec(
        url=_local(tls_server.grpc_url), protocol="grpc", model="fast", grpc_client="grpcio",
        tls=TlsSettings(ca_file=str(certs.ca)), headers=(("X-Perfkit-Test", "grpcio"),),
    )  # fmt: skip
    spec = S.SweepSpec(
        target=target,
        measure=S.MeasureSpec(fixed_request_count=40),
        load=S.ConcurrencyLoad(levels=(2,)),
    )
    result = run(spec)
    assert result.status == "ok", result.messages
    assert result.measurements[0].request_count >= 40
    assert "grpc x-perfkit-test: grpcio" in headers_seen(hook_dir)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_wrong_ca_fails_on_one_line_exit_99(tls_server, certs, protocol):
    p = perfkit(*_target(tls_server, certs, protocol, ca=certs.wrong_ca))
    assert p.returncode == 99, p.stderr
    lines = error_lines(p)
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("Error: TLS with localhost:")
    assert "CERTIFICATE_VERIFY_FAILED" in lines[0]


def test_https_verify_peer_0_accepts_an_unknown_ca(tls_server, certs):
    p = perfkit("-u", f"https://{tls_server.http_url}",
                f"--ssl-https-ca-certificates-file={certs.wrong_ca}", "--ssl-https-verify-peer", "0")  # fmt: skip
    assert p.returncode == 0, p.stderr


def test_https_verify_host_0_accepts_another_name(tls_server, certs):
    # The certificate names localhost, not 127.0.0.1.
    ca = f"--ssl-https-ca-certificates-file={certs.ca}"
    p = perfkit("-u", f"https://{tls_server.http_url}", ca)
    assert p.returncode == 99
    assert "127.0.0.1" in p.stderr
    p = perfkit("-u", f"https://{tls_server.http_url}", ca, "--ssl-https-verify-host", "0")
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_mutual_tls_with_and_without_a_client_certificate(mtls_server, certs, protocol):
    target = _target(mtls_server, certs, protocol)
    p = perfkit(*target, *_client_cert(certs, protocol))
    assert p.returncode == 0, p.stderr
    p = perfkit(*target)
    assert p.returncode == 99, p.stderr
    lines = error_lines(p)
    assert len(lines) == 1, p.stderr
    assert "closed the TLS connection" in lines[0]
    assert "client certificate" in lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-H", "NoColon"], "-H 'NoColon' is not 'Name: value'"),
        (["-H", "Bad Name: x"], "may hold only letters"),
        (["-H", "Content-Length: 5"], "perfkit writes Content-Length itself"),
        (["-u", "localhost:1", "--ssl-grpc-use-ssl"], "not for -i http"),
        (["--ssl-https-verify-peer", "0"], "when -u is not given serves plain"),
        (["-u", "http://localhost:1", "--ssl-https-verify-host", "0"], "says plain text"),
        (
            ["-u", "https://localhost:1", "--ssl-https-client-certificate-type", "DER"],
            "perfkit reads PEM only",
        ),
        (["-u", "localhost:1", "--ssl-https-verify-host", "3"], "--ssl-https-verify-host"),
        (
            ["-u", "localhost:1", "--ssl-https-ca-certificates-file", "/nonexistent.pem"],
            "/nonexistent.pem",
        ),
    ],
)
def test_bad_tls_and_header_options_exit_3(args, message):
    p = perfkit(*args)
    assert p.returncode == 3, p.stderr
    assert message in " ".join(p.stderr.split()), p.stderr


def test_grpc_tls_files_need_use_ssl(certs):
    p = perfkit("-i", "grpc", "-u", "localhost:1",
                f"--ssl-grpc-root-certifications-file={certs.ca}")  # fmt: skip
    assert p.returncode == 3
    assert "need --ssl-grpc-use-ssl" in p.stderr


def test_target_with_tls_and_headers_pickles_for_workers(certs):
    """--workers sends the TargetSpec to its processes: TLS settings and headers travel along."""
    import pickle

    from perfkit.load import spec as S

    target = S.TargetSpec(
        url="https://localhost:1", model="fast", headers=(("X-A", "b"),),
        tls=S.TlsSettings(ca_file=str(certs.ca), verify_host=0),
    )  # fmt: skip
    back = pickle.loads(pickle.dumps(target))
    assert back == target
    assert back.secure == target.tls
    assert S.TargetSpec(url="https://localhost:1", model="m").secure == S.TlsSettings()
    assert S.TargetSpec(url="localhost:1", model="m").secure is None


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_control_calls_carry_the_headers(tls_server, certs, hook_dir, protocol):
    """The control client's sync calls and its aio calls (statistics during a level) both send
    the headers, over TLS."""
    import asyncio

    from perfkit.control import ControlClient
    from perfkit.load.spec import TlsSettings

    url = _local(tls_server.http_url if protocol == "http" else tls_server.grpc_url)
    tls = TlsSettings(ca_file=str(certs.ca))
    with ControlClient(url, protocol, model="fast", tls=tls,
                       headers=[("X-Control", f"sync-{protocol}")]) as ctl:  # fmt: skip
        assert ctl.server_metadata()["name"] == "perfkit_server"
    with ControlClient(url, protocol, model="fast", tls=tls,
                       headers=[("X-Control", f"aio-{protocol}")]) as ctl:  # fmt: skip
        assert asyncio.run(ctl.statistics_async()) is not None
    seen = headers_seen(hook_dir)
    assert f"{protocol} x-control: sync-{protocol}" in seen, seen
    assert f"{protocol} x-control: aio-{protocol}" in seen, seen
