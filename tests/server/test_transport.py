"""The transports themselves: HTTP/1.1 keep-alive, pipelining, 404/405, 100-continue, HEAD; gRPC
direct path and loop path sharing one model's instance and statistics under concurrent load."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from perfkit import zoo
from tests.fixtures.server import ServerHandle, start_server
from tests.server.helpers import fp32_input, stats


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    repo = tmp_path_factory.mktemp("repo")
    zoo.build("identity", repo)
    with start_server(repo, log_path=tmp_path_factory.mktemp("log") / "server.log") as handle:
        yield handle


def _raw(url: str, payload: bytes, expect_responses: int) -> list[tuple[int, bytes]]:
    """Send raw bytes on one connection; read `expect_responses` responses (status, body)."""
    host, port = url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(payload)
        reader = sock.makefile("rb")
        out = []
        for _ in range(expect_responses):
            status = int(reader.readline().split()[1])
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            out.append((status, reader.read(length) if length else b""))
        return out


def _infer_body(value: float) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [value] * 16}]}
    ).encode()


def _post(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
        + body
    )


def test_pipelined_requests_answered_in_order(server: ServerHandle) -> None:
    payload = b"".join(_post("/v2/models/identity/infer", _infer_body(i)) for i in range(5))
    payload += b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n"
    replies = _raw(server.http_url, payload, 6)
    assert [s for s, _ in replies] == [200] * 6
    for i, (_, body) in enumerate(replies[:5]):
        assert json.loads(body)["outputs"][0]["data"] == [float(i)] * 16


def test_unknown_route_and_wrong_method(server: ServerHandle) -> None:
    payload = (
        b"GET /v2/nothing/here HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\n\r\n"
        b"HEAD /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    (s404, _), (s405, _), (head, body) = _raw(server.http_url, payload, 3)
    assert (s404, s405, head, body) == (404, 405, 200, b"")


def test_expect_continue_and_connection_close(server: ServerHandle) -> None:
    body = _infer_body(3.0)
    payload = _post(
        "/v2/models/identity/infer", body, "Expect: 100-continue\r\nConnection: close\r\n"
    )
    (cont, _), (status, reply) = _raw(server.http_url, payload, 2)
    assert (cont, status) == (100, 200)
    assert json.loads(reply)["outputs"][0]["data"] == [3.0] * 16


def test_malformed_request_line_gets_400(server: ServerHandle) -> None:
    ((status, body),) = _raw(server.http_url, b"NOT HTTP AT ALL\r\n\r\n", 1)
    assert status == 400
    assert "malformed HTTP request" in json.loads(body)["error"]


def test_replies_queued_before_a_malformed_request_are_written_before_closing(
    server: ServerHandle,
) -> None:
    """Replies go out at the end of the loop iteration (perfkit_server.writes): the ones made
    before a parse error still reach the client, in order, then the 400, then the close."""
    payload = b"".join(_post("/v2/models/identity/infer", _infer_body(i)) for i in range(3))
    payload += b"NOT HTTP AT ALL\r\n\r\n"
    host, port = server.http_url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(payload)
        received = b""
        while chunk := sock.recv(65536):  # until the server closes the connection
            received += chunk
    assert received.count(b"HTTP/1.1 200 OK") == 3
    assert received.index(b"HTTP/1.1 400") > received.rindex(b"HTTP/1.1 200 OK")
    assert b"Connection: close" in received


def test_grpc_and_http_share_the_instance_and_stats(server: ServerHandle) -> None:
    """Concurrent gRPC and HTTP requests (both on the direct path): right outputs, and statistics
    that count every request once (no batching: one execution per request)."""
    before = stats(server.http_url, "identity")
    per_client, errors = 60, []

    def grpc_worker(seed: int) -> None:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            for i in range(per_client):
                x = np.full((1, 16), seed * 1000 + i, np.float32)
                out = client.infer("identity", [fp32_input(grpcclient, "INPUT0", x)])
                np.testing.assert_array_equal(out.as_numpy("OUTPUT0"), x)
        except Exception as exc:  # collected and asserted in the test thread
            errors.append(exc)
        finally:
            client.close()

    def http_worker(seed: int) -> None:
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            for i in range(per_client):
                x = np.full((1, 16), -seed * 1000 - i, np.float32)
                out = client.infer("identity", [fp32_input(httpclient, "INPUT0", x)])
                np.testing.assert_array_equal(out.as_numpy("OUTPUT0"), x)
        except Exception as exc:
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=grpc_worker, args=(s,)) for s in range(4)]
    threads += [threading.Thread(target=http_worker, args=(s,)) for s in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]
    after = stats(server.http_url, "identity")
    sent = per_client * len(threads)
    success = (
        after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    )
    executions = after["execution_count"] - before["execution_count"]
    inferences = after["inference_count"] - before["inference_count"]
    assert success == executions == inferences == sent


async def test_instance_pool_across_threads() -> None:
    from perfkit_server.instances import InstancePool

    a: Any = object()
    b: Any = object()
    pool = InstancePool([a, b], asyncio.get_running_loop())
    # FIFO, as the scheduler's queue of instances was
    assert [pool.take(), pool.take()] == [a, b]
    assert pool.take() is None
    pool.release(a)
    assert pool.take() is a
    acquiring = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0)  # one pass of the loop: the task runs until it waits for an instance
    assert not acquiring.done()
    threading.Thread(target=pool.release, args=(b,)).start()  # a thread wakes the loop
    assert await asyncio.wait_for(acquiring, 5) == b
    pool.release(a)
    draining = asyncio.ensure_future(pool.drain())
    await asyncio.sleep(0)  # one pass: the task runs until it waits for b
    assert not draining.done()  # b is still out
    pool.release(b)
    await asyncio.wait_for(draining, 5)
    assert pool.take() is None  # closed
