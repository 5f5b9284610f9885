"""gRPC request compression (issue #12): perfkit_server reads gzip and deflate messages as gRPC
specifies them (grpc-encoding, the compressed flag, grpc-accept-encoding on its answers),
decompresses within the max message size (a zip bomb is RESOURCE_EXHAUSTED, not memory), answers
an unknown encoding with UNIMPLEMENTED and a compressed flag without an encoding with INTERNAL.
Real tritonclient (grpcio's compression) and a raw HTTP/2 peer for the bytes no client sends."""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from perfkit.http2 import DATA, END_HEADERS, END_STREAM, HEADERS, frame
from tests.fixtures.server import ServerHandle, start_server
from tests.server import models
from tests.server.h2_client import RawH2, infer_request, request_headers, rss_bytes

MAX_INPUT = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    repo = tmp_path_factory.mktemp("repo")
    models.add_sub(repo)
    models.slow_identity(repo, "ident", delay_us=0, max_batch_size=8, batching="")
    with start_server(
        repo,
        f"--http-max-input-size={MAX_INPUT}",
        log_path=tmp_path_factory.mktemp("log") / "server.log",
    ) as handle:
        yield handle


def _add_sub(client: grpcclient.InferenceServerClient, algorithm: str | None) -> None:
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.float32)
    ins = [grpcclient.InferInput("INPUT0", [1, 16], "FP32"), grpcclient.InferInput("INPUT1", [1, 16], "FP32")]  # fmt: skip
    ins[0].set_data_from_numpy(a)
    ins[1].set_data_from_numpy(b)
    result = client.infer("add_sub", ins, compression_algorithm=algorithm)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_compressed_requests_are_answered(
    server: ServerHandle, algorithm: str
) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        _add_sub(client, algorithm)
        _add_sub(client, None)  # the same channel, uncompressed, still fine
    finally:
        client.close()


def _compressed_call(h2: RawH2, sid: int, encoding: str | None, body: bytes) -> dict[str, str]:
    headers = request_headers("ModelInfer")
    if encoding is not None:
        headers.append(("grpc-encoding", encoding))
    block = h2.encoder.encode(headers)
    msg = struct.pack(">BI", 1, len(body)) + body
    h2.send(frame(HEADERS, END_HEADERS, sid, block) + frame(DATA, END_STREAM, sid, msg))
    return h2.trailers_of(sid)


def _first_headers(h2: RawH2, sid: int) -> dict[str, str]:
    f = h2.until(lambda f: f.ftype == HEADERS and f.sid == sid)
    return {str(k): str(v) for k, v in h2.decoder.decode(f.payload)}


def test_gzip_and_deflate_raw_messages_and_the_accepted_encodings(server: ServerHandle) -> None:
    req = infer_request("ident")
    with RawH2(server.grpc_url, timeout_s=10).open() as h2:
        h2.send(h2.call(1, "ModelInfer", req))
        head = _first_headers(h2, 1)
        assert head["grpc-accept-encoding"] == "identity,deflate,gzip"
        assert h2.trailers_of(1)["grpc-status"] == "0"
        assert _compressed_call(h2, 3, "gzip", gzip.compress(req))["grpc-status"] == "0"
        assert _compressed_call(h2, 5, "deflate", zlib.compress(req))["grpc-status"] == "0"


def test_a_zip_bomb_is_resource_exhausted_not_memory(server: ServerHandle) -> None:
    # 256 MiB of zeros in about 250 KB: under the 1 MiB limit compressed, far over it inflated.
    c = zlib.compressobj(wbits=31)
    chunk = bytes(1 << 20)
    bomb = b"".join(c.compress(chunk) for _ in range(256)) + c.flush()
    assert len(bomb) < MAX_INPUT
    with RawH2(server.grpc_url, timeout_s=20).open() as h2:
        rss0 = rss_bytes(server.process.pid)
        trailers = _compressed_call(h2, 1, "gzip", bomb)
        assert trailers["grpc-status"] == "8", trailers  # RESOURCE_EXHAUSTED
        assert "after decompression" in trailers["grpc-message"]
        assert rss_bytes(server.process.pid) - rss0 < 64 << 20
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        _add_sub(client, "gzip")
    finally:
        client.close()


def test_unknown_missing_and_corrupt_encodings(server: ServerHandle) -> None:
    req = infer_request("ident")
    with RawH2(server.grpc_url, timeout_s=10).open() as h2:
        unknown = _compressed_call(h2, 1, "snappy", req)
        assert unknown["grpc-status"] == "12", unknown  # UNIMPLEMENTED
        assert "snappy" in unknown["grpc-message"]
        assert "identity,deflate,gzip" in unknown["grpc-message"]
        missing = _compressed_call(h2, 3, None, req)
        assert missing["grpc-status"] == "13", missing  # INTERNAL: compressed, but no encoding
        corrupt = _compressed_call(h2, 5, "gzip", b"not gzip at all")
        assert corrupt["grpc-status"] == "13", corrupt
        assert "decompress" in corrupt["grpc-message"]
        # The connection still serves an ordinary call.
        h2.send(h2.call(7, "ModelInfer", req))
        assert h2.trailers_of(7)["grpc-status"] == "0"
