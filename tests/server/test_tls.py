"""perfkit_server over TLS (tritonserver's --grpc-use-ssl family, and --http-use-ssl...): real
certificates made by the test (trustme), real tritonclient and grpc clients on both ports, mutual
TLS refusing a client without a certificate, and the flags' refusals.

`tls_certs`, `start_tls_server` and `headers_seen` are shared with tests/cli_run/test_tls_headers.py.
"""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.server import ServerHandle
from tests.load.helpers import identity_config, write_model

trustme = pytest.importorskip("trustme")

HOOK_ENV = "PERFKIT_SERVER_TEST_HOOK_DIR"
_STARTED = re.compile(r"Started (GRPCInferenceService|HTTPService|Metrics Service) at (\S+)")
_KEYS = {"GRPCInferenceService": "grpc", "HTTPService": "http", "Metrics Service": "metrics"}


@dataclass(frozen=True)
class Certs:
    """PEM files: a CA, a server certificate (for localhost, 127.0.0.1) that it signed, a client
    certificate it signed, and another CA that signed nothing here (the wrong CA)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    wrong_ca: Path


def tls_certs(directory: Path, names: tuple[str, ...] = ("localhost", "127.0.0.1")) -> Certs:
    """The PEM files under `directory`; the server certificate names `names`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert(*names)
    client = ca.issue_cert("perfkit-client@example.com")
    certs = Certs(*(directory / f"{n}.pem" for n in (
        "ca", "server", "server-key", "client", "client-key", "wrong-ca")))  # fmt: skip
    ca.cert_pem.write_to_path(str(certs.ca))
    for i, blob in enumerate(server.cert_chain_pems):
        blob.write_to_path(str(certs.server_cert), append=i > 0)
    server.private_key_pem.write_to_path(str(certs.server_key))
    for i, blob in enumerate(client.cert_chain_pems):
        blob.write_to_path(str(certs.client_cert), append=i > 0)
    client.private_key_pem.write_to_path(str(certs.client_key))
    trustme.CA().cert_pem.write_to_path(str(certs.wrong_ca))
    return certs


def tls_args(certs: Certs, *, mutual: bool = False) -> list[str]:
    """Both listeners over TLS (mutual: client certificates signed by the CA required)."""
    args = []
    for service in ("grpc", "http"):
        args += [
            f"--{service}-use-ssl=true",
            f"--{service}-server-cert={certs.server_cert}",
            f"--{service}-server-key={certs.server_key}",
        ]
        if mutual:
            args += [f"--{service}-use-ssl-mutual=true", f"--{service}-root-cert={certs.ca}"]
    return args


def tls_repo(directory: Path) -> Path:
    write_model(directory, "fast", identity_config("fast"))
    # 800 KB tensors: HTTP/2 flow control and frames split across TLS records.
    write_model(directory, "big", identity_config("big", dims="200000", max_batch_size=2))
    return directory


def start_tls_server(
    repo: Path, *args: str, log_path: Path, hook_dir: Path | None = None, timeout: float = 60.0
) -> ServerHandle:
    """perfkit_server on free ports, waited for by its "Started ..." lines (the shared fixture
    probes readiness over plain HTTP, which a TLS port does not answer)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if hook_dir is not None:
        env[HOOK_ENV] = str(hook_dir)
    cmd = [sys.executable, "-m", "perfkit_server", "--model-repository", str(repo),
           "--http-port=0", "--grpc-port=0", "--metrics-port=0", *args]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    handle = ServerHandle(process=process, log_path=log_path, args=cmd)
    deadline = time.monotonic() + timeout
    urls: dict[str, str] = {}
    while len(urls) < 3:
        urls = {_KEYS[m.group(1)]: m.group(2) for m in _STARTED.finditer(handle.log())}
        if process.poll() is not None:
            raise RuntimeError(f"perfkit_server exited {process.returncode}:\n{handle.log()}")
        if time.monotonic() > deadline:
            handle.stop()
            raise TimeoutError(f"perfkit_server not ready after {timeout} s:\n{handle.log()}")
        time.sleep(0.05)  # polling a log file that only grows; nothing is ordered by it
    handle.http_url, handle.grpc_url, handle.metrics_url = (
        urls["http"],
        urls["grpc"],
        urls["metrics"],
    )
    return handle


def headers_seen(hook_dir: Path) -> set[str]:
    """The header lines the server's test hook recorded ("http name: value", "grpc ...")."""
    path = hook_dir / "request_headers.log"
    return set(path.read_text().splitlines()) if path.exists() else set()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return tls_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, certs: Certs):
    repo = tls_repo(tmp_path_factory.mktemp("tls-repo"))
    logs = tmp_path_factory.mktemp("tls-logs")
    with start_tls_server(repo, *tls_args(certs), log_path=logs / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, certs: Certs):
    repo = tls_repo(tmp_path_factory.mktemp("mtls-repo"))
    logs = tmp_path_factory.mktemp("mtls-logs")
    args = tls_args(certs, mutual=True)
    with start_tls_server(repo, *args, log_path=logs / "server.log") as server:
        yield server


def _infer_http(url: str, **kw):
    import tritonclient.http as th

    with th.InferenceServerClient(url, **kw) as client:
        x = np.arange(16, dtype=np.float32).reshape(1, 16)
        inp = th.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_data_from_numpy(x)
        out = client.infer("fast", [inp]).as_numpy("OUTPUT0")
        np.testing.assert_array_equal(out, x)


def _infer_grpc(url: str, **kw):
    import tritonclient.grpc as tg

    with tg.InferenceServerClient(url, **kw) as client:
        x = np.arange(16, dtype=np.float32).reshape(1, 16)
        inp = tg.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_data_from_numpy(x)
        out = client.infer("fast", [inp]).as_numpy("OUTPUT0")
        np.testing.assert_array_equal(out, x)


def _ctx_factory(ca: Path, cert: Path | None = None, key: Path | None = None):
    import gevent.ssl

    def factory(*_a, **_k):
        ctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(ca))
        if cert is not None:
            ctx.load_cert_chain(str(cert), str(key))
        return ctx

    return factory


def test_https_and_grpc_tls_serve_tritonclient(tls_server, certs):
    _infer_http(tls_server.http_url, ssl=True, ssl_context_factory=_ctx_factory(certs.ca))
    _infer_grpc(tls_server.grpc_url, ssl=True, root_certificates=str(certs.ca))
    log = tls_server.log()
    assert "GRPCInferenceService serves TLS" in log
    assert "HTTPService serves TLS" in log


def test_grpc_listener_offers_alpn_h2_and_https_http11(tls_server, certs):
    import socket

    for url, want in ((tls_server.grpc_url, "h2"), (tls_server.http_url, "http/1.1")):
        host, port = url.rsplit(":", 1)
        ctx = ssl.create_default_context(cafile=str(certs.ca))
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        with (
            socket.create_connection((host, int(port)), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            assert tls.selected_alpn_protocol() == want


def test_pipelined_requests_over_tls_pause_and_resume_reading(tls_server, certs):
    """200 requests written at once on one TLS connection: the server stops reading while 16
    wait behind the one it serves (pause_reading on the SSL transport), resumes as it answers
    them, and every one is answered in order."""
    import socket

    host, port = tls_server.http_url.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    n = 200
    request = f"GET /v2/health/live HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    with (
        socket.create_connection((host, int(port)), timeout=30) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(request * n)
        got = b""
        while got.count(b"HTTP/1.1 200") < n:
            chunk = tls.recv(65536)
            assert chunk, f"closed after {got.count(b'HTTP/1.1 200')} answers"
            got += chunk
    assert got.count(b"HTTP/1.1 ") == n


def test_large_tensors_over_grpc_tls_and_https(tls_server, certs):
    """800 KB each way: many DATA frames within the flow-control windows, over TLS records."""
    import tritonclient.grpc as tg
    import tritonclient.http as th

    x = np.random.default_rng(0).random((2, 200000), dtype=np.float32)
    for mod, url, kw in (
        (tg, tls_server.grpc_url, {"ssl": True, "root_certificates": str(certs.ca)}),
        (th, tls_server.http_url, {"ssl": True, "ssl_context_factory": _ctx_factory(certs.ca)}),
    ):
        with mod.InferenceServerClient(url, **kw) as client:
            inp = mod.InferInput("INPUT0", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            np.testing.assert_array_equal(client.infer("big", [inp]).as_numpy("OUTPUT0"), x)


def test_plain_client_against_tls_port_fails(tls_server, certs):
    import tritonclient.http as th

    with (
        th.InferenceServerClient(tls_server.http_url, network_timeout=5) as client,
        pytest.raises(Exception),
    ):
        client.is_server_live()
    # The server keeps serving TLS clients after a plain-text peer.
    _infer_http(tls_server.http_url, ssl=True, ssl_context_factory=_ctx_factory(certs.ca))


def test_wrong_ca_is_refused_by_the_client(tls_server, certs):
    import tritonclient.http as th

    factory = _ctx_factory(certs.wrong_ca)
    with (
        th.InferenceServerClient(tls_server.http_url, ssl=True, ssl_context_factory=factory) as c,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        c.is_server_live()


def _raw_get(url: str, ctx: ssl.SSLContext) -> bytes:
    """One HTTP/1.1 GET over TLS on a raw socket: the reply's first bytes, b"" when closed."""
    import socket

    host, port = url.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            return tls.recv(100)
        except (ssl.SSLError, ConnectionResetError):
            return b""


def test_mutual_tls_requires_a_client_certificate(mtls_server, certs):
    with_cert = _ctx_factory(certs.ca, certs.client_cert, certs.client_key)
    _infer_http(mtls_server.http_url, ssl=True, ssl_context_factory=with_cert)
    _infer_grpc(
        mtls_server.grpc_url, ssl=True, root_certificates=str(certs.ca),
        private_key=str(certs.client_key), certificate_chain=str(certs.client_cert),
    )  # fmt: skip
    assert _raw_get(mtls_server.http_url, with_cert()).startswith(b"HTTP/1.1 200")
    # Without a certificate TLS 1.3's client handshake completes, then the server refuses it and
    # closes (asyncio's SSL transport drops the alert it would send): nothing is answered.
    assert _raw_get(mtls_server.http_url, _ctx_factory(certs.ca)()) == b""
    assert "mutual TLS (client certificates required)" in mtls_server.log()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grpc-use-ssl=true"], "--grpc-use-ssl needs --grpc-server-cert and --grpc-server-key"),
        (["--http-server-cert={cert}"], "--http-server-cert given but --http-use-ssl is not true"),
        (
            ["--http-use-ssl-mutual=true", "--http-server-cert={cert}", "--http-server-key={key}"],
            "--http-use-ssl-mutual needs --http-root-cert",
        ),
        (
            [
                "--grpc-use-ssl=true",
                "--grpc-server-cert={cert}",
                "--grpc-server-key={key}",
                "--grpc-root-cert={ca}",
            ],
            "--grpc-root-cert is only used with --grpc-use-ssl-mutual=true",
        ),
        (
            [
                "--grpc-use-ssl=true",
                "--grpc-server-cert=/nonexistent.pem",
                "--grpc-server-key={key}",
            ],
            "--grpc-server-cert /nonexistent.pem: no such file",
        ),
    ],
)
def test_tls_flags_refused_with_the_reason(tmp_path, certs, args, message):
    files = {"cert": certs.server_cert, "key": certs.server_key, "ca": certs.ca}
    argv = [a.format(**files) for a in args]
    p = subprocess.run(
        [sys.executable, "-m", "perfkit_server", "--model-repository", str(tmp_path), *argv],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 2, p.stderr
    assert message in p.stderr


def test_a_key_that_does_not_load_fails_the_start(tmp_path, certs):
    bad = tmp_path / "bad-key.pem"
    bad.write_text("not a key\n")
    p = subprocess.run(
        [sys.executable, "-m", "perfkit_server", "--model-repository", str(tmp_path),
         "--http-port=0", "--grpc-port=0", "--metrics-port=0", "--allow-http=false",
         "--grpc-use-ssl=true", f"--grpc-server-cert={certs.server_cert}",
         f"--grpc-server-key={bad}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 1
    assert "--grpc-server-cert" in p.stderr
    assert "cannot load them" in p.stderr
