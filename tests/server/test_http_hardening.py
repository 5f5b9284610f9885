"""HTTP/1.1 bounds for every peer (issue #10, findings 5, 6, 9 and 11): header-read and idle
timeouts, head size and field count (431), a connection cap (503), write back-pressure, clean 400s
for small input errors, and HTTP/1.0 / HTTP/1.1 keep-alive and close semantics (with Debian's `ab`).

Timeouts are made small with flags; a test waits (bounded) for the server to answer or close the
socket, never for a clock. Raw sockets throughout: the cases are about bytes on the wire.
"""

from __future__ import annotations

import json
import math
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import tritonclient.http as httpclient

from perfkit import zoo
from tests.fixtures.server import ServerHandle, start_server
from tests.server.models import write_config

_WAIT_S = 15.0  # the most any test waits for the server to answer or close
_OPEN: list[socket.socket] = []  # every test's sockets, closed after it


class _Conn:
    """One raw HTTP/1.x connection: send bytes, read replies (status, headers, body), see EOF."""

    def __init__(self, url: str) -> None:
        host, port = url.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=_WAIT_S)
        _OPEN.append(self.sock)
        self._buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> bytes:
        try:
            data = self.sock.recv(1 << 16)
        except ConnectionResetError:
            data = b""
        self._buf += data
        return data

    def reply(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self._buf:
            if not self._more():
                raise EOFError(f"connection closed before a reply; read {self._buf!r}")
        head, self._buf = self._buf.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self._buf) < length:
            if not self._more():
                raise EOFError("connection closed inside a reply body")
        body, self._buf = self._buf[:length], self._buf[length:]
        headers[":version"] = status_line.split()[0]
        return int(status_line.split()[1]), headers, body

    def closed(self) -> bool:
        """Wait (bounded) for the server's close: True when the next read is EOF."""
        return not self._buf and not self._more()

    def close(self) -> None:
        self.sock.close()


def _get(path: str, version: str = "1.1", extra: str = "") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: x\r\n{extra}\r\n".encode()


def _post(path: str, body: bytes, version: str = "1.1", extra: str = "") -> bytes:
    head = f"POST {path} HTTP/{version}\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def _infer_json(values: list[float], shape: list[Any] | None = None) -> bytes:
    shape = [1, len(values)] if shape is None else shape
    tensor = {"name": "INPUT0", "shape": shape, "datatype": "FP32", "data": values}
    return json.dumps({"inputs": [tensor]}).encode()


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    zoo.build("identity", repo)
    # Any length of FP32 in, the same out: replies as large as a test wants.
    (repo / "echo" / "1").mkdir(parents=True)
    write_config(
        repo,
        "echo",
        'name: "echo"\nbackend: "perfkit_identity"\nmax_batch_size: 0\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n',
    )
    return repo


@pytest.fixture(scope="module")
def tight(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """A server with small limits and timeouts (explicit model control, for the load API)."""
    args = (
        "--http-header-timeout-secs=0.5",
        "--http-keepalive-timeout-secs=1",
        "--http-max-header-size=4096",
        "--http-max-header-count=20",
        "--model-control-mode=explicit",
        "--load-model=*",
    )
    log = tmp_path_factory.mktemp("log") / "tight.log"
    with start_server(repo, *args, log_path=log) as handle:
        yield handle


@pytest.fixture(scope="module")
def plain(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """A server with the default limits."""
    with start_server(repo, log_path=tmp_path_factory.mktemp("log") / "plain.log") as handle:
        yield handle


# -- finding 5: timeouts, head limits, connection cap ------------------------------------------


def test_partial_head_is_answered_408_and_closed(tight: ServerHandle) -> None:
    conn = _Conn(tight.http_url)
    conn.send(b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\n")
    status, headers, body = conn.reply()
    assert status == 408
    assert headers["connection"] == "close"
    assert "request head not received" in json.loads(body)["error"]
    assert conn.closed()


def test_slowloris_trickle_does_not_reset_the_header_timeout(tight: ServerHandle) -> None:
    """A byte every 100 ms is activity, but the head must still be complete within 0.5 s."""
    conn = _Conn(tight.http_url)
    conn.send(b"GET /v2/health/ready HTTP/1.1\r\n")
    deadline = time.monotonic() + _WAIT_S
    answered = False
    while time.monotonic() < deadline:
        conn.send(b"X-Slow: y\r\n")
        readable, _, _ = select.select([conn.sock], [], [], 0.1)
        if readable:
            answered = True
            break
    assert answered, "the server never answered a head that kept trickling in"
    status, _, _ = conn.reply()
    assert status in (408, 431)  # 431 if the trickle reached the field-count limit first
    assert conn.closed()


def test_idle_keep_alive_connection_is_closed(tight: ServerHandle) -> None:
    conn = _Conn(tight.http_url)
    conn.send(_get("/v2/health/ready"))
    assert conn.reply()[0] == 200
    assert conn.closed()  # silently: an idle connection has no request to answer


def test_a_busy_connection_outlives_the_timeouts(tight: ServerHandle) -> None:
    """Requests back to back for three keep-alive timeouts, on one connection: none is refused."""
    conn = _Conn(tight.http_url)
    body = _infer_json([1.0] * 16)
    until = time.monotonic() + 3.0
    count = 0
    while time.monotonic() < until or count < 10:
        conn.send(_post("/v2/models/identity/infer", body))
        assert conn.reply()[0] == 200
        count += 1


def test_head_over_the_size_limit_gets_431(tight: ServerHandle) -> None:
    conn = _Conn(tight.http_url)
    conn.send(_get("/v2/health/ready", extra=f"X-Big: {'a' * 3000}\r\n"))  # within 4096
    assert conn.reply()[0] == 200
    conn.send(_get("/v2/health/ready", extra=f"X-Big: {'a' * 8000}\r\n"))
    status, _, body = conn.reply()
    assert status == 431
    assert "--http-max-header-size" in json.loads(body)["error"]
    assert conn.closed()


def test_endless_head_is_refused_before_it_ends(tight: ServerHandle) -> None:
    """A head that never ends is refused once past the limit: the server does not buffer it."""
    conn = _Conn(tight.http_url)
    conn.send(b"GET /v2/health/ready HTTP/1.1\r\nX-Endless: ")
    sent = 0
    while sent < 1 << 20:
        readable, _, _ = select.select([conn.sock], [], [], 0)
        if readable:
            break
        try:
            conn.send(b"a" * 1024)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += 1024
    status, _, _ = conn.reply()
    assert status == 431
    assert sent < 1 << 20


def test_too_many_header_fields_get_431(tight: ServerHandle) -> None:
    conn = _Conn(tight.http_url)
    fields = "".join(f"X-F{i}: v\r\n" for i in range(18))  # Host + 18 = 19 <= 20
    conn.send(_get("/v2/health/ready", extra=fields))
    assert conn.reply()[0] == 200
    fields = "".join(f"X-F{i}: v\r\n" for i in range(30))
    conn.send(_get("/v2/health/ready", extra=fields))
    status, _, body = conn.reply()
    assert status == 431
    assert "--http-max-header-count" in json.loads(body)["error"]
    assert conn.closed()


def test_connections_over_the_cap_are_refused_and_the_others_served(
    repo: Path, perfkit_server: Any
) -> None:
    server = perfkit_server(repo, "--http-max-connections=2")
    first, second = _Conn(server.http_url), _Conn(server.http_url)
    for conn in (first, second):  # both accepted and counted by the server
        conn.send(_get("/v2/health/ready"))
        assert conn.reply()[0] == 200
    third = _Conn(server.http_url)
    try:
        status, headers, _ = third.reply()
    except EOFError:  # a reset before the 503 was read is a clean refusal too
        pass
    else:
        assert (status, headers["connection"]) == (503, "close")
    assert third.closed()
    first.send(_get("/v2/health/ready"))
    assert first.reply()[0] == 200
    second.close()
    # The server frees the slot once it sees the close: retry until a new connection is served.
    for _ in range(200):
        conn = _Conn(server.http_url)
        conn.send(_get("/v2/health/ready"))
        try:
            if conn.reply()[0] == 200:
                break
        except EOFError:
            pass
        finally:
            conn.close()
    else:
        pytest.fail("a connection slot never came free after a client closed")


# -- finding 6: write back-pressure ------------------------------------------------------------


def _send_until_stalled(sock: socket.socket, data: memoryview, stall_s: float) -> int:
    """Send until done or until the socket stays unwritable for `stall_s`; returns bytes sent."""
    sent = 0
    sock.setblocking(False)
    try:
        while sent < len(data):
            _, writable, _ = select.select([], [sock], [], stall_s)
            if not writable:
                break
            try:
                sent += sock.send(data[sent : sent + (1 << 16)])
            except BlockingIOError:
                continue
    finally:
        sock.setblocking(True)
    return sent


def test_a_client_that_does_not_read_stops_being_read(repo: Path, perfkit_server: Any) -> None:
    """Pipelined requests whose replies (5x their size as JSON) go unread: the server's memory
    stays bounded; once the client reads, every reply is there and correct."""
    server = perfkit_server(repo)
    process = psutil.Process(server.process.pid)
    count, size = 400, 16384
    rng = np.random.default_rng(6)
    values = rng.random(size, dtype=np.float32)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "shape": [size],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 4 * size},
                }
            ],
            "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": False}}],
        }
    ).encode()
    one = _post(
        "/v2/models/echo/infer",
        head + values.tobytes(),
        extra=f"Inference-Header-Content-Length: {len(head)}\r\n",
    )
    warm = _Conn(server.http_url)
    for _ in range(3):
        warm.send(one)
        assert warm.reply()[0] == 200
    warm.close()
    base = process.memory_info().rss

    conn = _Conn(server.http_url)
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
    payload = memoryview(one * count)
    sent = _send_until_stalled(conn.sock, payload, stall_s=5.0)
    client = httpclient.InferenceServerClient(server.http_url)

    def executed() -> int:
        return int(client.get_inference_statistics("echo")["model_stats"][0]["inference_count"]) - 3

    if sent == len(payload):
        # The server read everything (no back-pressure): let it make every reply before looking.
        deadline = time.monotonic() + 60
        while executed() < count and time.monotonic() < deadline:
            pass
    grown_mb = (process.memory_info().rss - base) / 2**20
    done = executed()
    assert grown_mb < 40, f"server RSS grew {grown_mb:.0f} MB for unread replies"
    assert done < count // 4, f"{done} of {count} requests served to a client reading nothing"

    rest = threading.Thread(target=conn.sock.sendall, args=(payload[sent:],), daemon=True)
    rest.start()
    expected = values.astype(np.float64).tolist()
    for _ in range(count):
        status, _, body = conn.reply()
        assert status == 200
        assert json.loads(body)["outputs"][0]["data"] == expected
    rest.join(_WAIT_S)
    assert not rest.is_alive()


# -- finding 9: small input errors are 400s ----------------------------------------------------


def _status_and_error(server: ServerHandle, request: bytes) -> tuple[int, str]:
    conn = _Conn(server.http_url)
    try:
        conn.send(request)
        status, _, body = conn.reply()
        return status, json.loads(body).get("error", "") if body else ""
    finally:
        conn.close()


def test_deeply_nested_json_is_400(tight: ServerHandle) -> None:
    deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, error = _status_and_error(tight, _post("/v2/models/identity/infer", deep))
    assert status == 400
    assert "nested too deeply" in error
    for depth in (500, 900, 950, 990):  # around where the decoder's recursion limit falls
        nested = b"[" * depth + b'"x"' + b"]" * depth
        body = b'{"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "BYTES", "data": '
        status, _ = _status_and_error(
            tight, _post("/v2/models/identity/infer", body + nested + b"}]}")
        )
        assert status == 400, depth
    status, error = _status_and_error(tight, _post("/v2/repository/index", b"[" * 100_000))
    assert (status, "nested too deeply" in error) == (400, True)


def test_bytes_data_that_is_not_strings_is_400(tight: ServerHandle) -> None:
    for data in ("[1.0]", "[1000000000]", "[null]"):
        body = b'{"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "BYTES", "data": '
        status, error = _status_and_error(
            tight, _post("/v2/models/identity/infer", body + data.encode() + b"}]}")
        )
        assert status == 400, data
        assert "BYTES data must be JSON strings" in error


def test_overlong_model_name_on_load_is_400(tight: ServerHandle) -> None:
    status, error = _status_and_error(tight, _post(f"/v2/repository/models/{'m' * 300}/load", b""))
    assert status == 400
    assert "invalid model name" in error


@pytest.mark.parametrize("shape", [[1.5, 16], [1.0, 16.0], ["1", 16], [True, 16], "16"])
def test_a_shape_that_is_not_integers_is_400(tight: ServerHandle, shape: Any) -> None:
    body = _infer_json([1.0] * 16, shape=shape)
    status, error = _status_and_error(tight, _post("/v2/models/identity/infer", body))
    assert status == 400
    assert "shape must be a list of integers" in error


def test_non_finite_outputs_are_written_as_triton_writes_them(tight: ServerHandle) -> None:
    """Triton's JSON writer (rapidjson with kWriteNanAndInfFlag) writes inf and NaN as the tokens
    Infinity, -Infinity and NaN, and its clients parse them back; so do we, and nothing else is
    non-standard in the reply."""
    values = np.array([math.inf, -math.inf, math.nan] + [0.5] * 13, np.float32).reshape(1, 16)
    inp = httpclient.InferInput("INPUT0", [1, 16], "FP32")
    inp.set_data_from_numpy(values, binary_data=True)
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=False)
    client = httpclient.InferenceServerClient(tight.http_url)
    result = client.infer("identity", [inp], outputs=[out])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), values)
    text = json.dumps(result.get_response())
    assert '"data": [Infinity, -Infinity, NaN, 0.5' in text


# -- finding 11: HTTP/1.0 and HTTP/1.1 keep-alive and close ------------------------------------


def test_http10_keep_alive_is_said_and_kept(plain: ServerHandle) -> None:
    conn = _Conn(plain.http_url)
    for _ in range(3):
        conn.send(_get("/v2/health/ready", "1.0", "Connection: keep-alive\r\n"))
        status, headers, _ = conn.reply()
        assert (status, headers["connection"].lower()) == (200, "keep-alive")
        assert headers[":version"] == "HTTP/1.1"  # RFC 9110 6.2: the server's own version
    conn.send(
        _post(
            "/v2/models/identity/infer",
            _infer_json([2.0] * 16),
            "1.0",
            "Connection: Keep-Alive\r\n",
        )
    )
    status, headers, body = conn.reply()
    assert (status, headers["connection"].lower()) == (200, "keep-alive")
    assert json.loads(body)["outputs"][0]["data"] == [2.0] * 16


def test_http10_without_keep_alive_is_closed(plain: ServerHandle) -> None:
    conn = _Conn(plain.http_url)
    conn.send(_get("/v2/health/ready", "1.0"))
    status, headers, _ = conn.reply()
    assert (status, headers["connection"]) == (200, "close")
    assert conn.closed()


def test_http11_connection_close_is_closed_and_default_kept(plain: ServerHandle) -> None:
    conn = _Conn(plain.http_url)
    conn.send(_get("/v2/health/ready"))
    status, headers, _ = conn.reply()
    assert (status, headers["connection"]) == (200, "keep-alive")  # said, as to HTTP/1.0
    conn.send(_get("/v2/health/ready", extra="Connection: close\r\n"))
    status, headers, _ = conn.reply()
    assert (status, headers["connection"]) == (200, "close")
    assert conn.closed()


def test_ab_keep_alive_completes(plain: ServerHandle, tmp_path: Path) -> None:
    """Triton's documented benchmark: `ab -k` (HTTP/1.0 with Connection: Keep-Alive)."""
    ab = shutil.which("ab")
    if ab is None:
        pytest.skip("Debian's ab (apt-get install apache2-utils) is not installed")
    body = tmp_path / "ipt.json"
    body.write_bytes(_infer_json([1.0] * 16))
    url = f"http://{plain.http_url}/v2/models/identity/versions/1/infer"
    args = [ab, "-k", "-c", "5", "-n", "500", "-s", "10", "-p", str(body)]
    result = subprocess.run(
        [*args, "-T", "application/json", url], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "Complete requests:      500" in result.stdout, result.stdout
    assert "Failed requests:        0" in result.stdout, result.stdout
    assert "Keep-Alive requests:    500" in result.stdout, result.stdout
