"""perf_analyzer's flags of issue #12 through `perfkit run` (a subprocess, as users run it) against
a real perfkit_server on loopback: --request-parameter (HTTP JSON "parameters", gRPC
InferParameter), --input-tensor-format / --output-tensor-format json over HTTP, -x end to end on a
model whose versions 1 and 2 differ, --grpc-compression-algorithm, --fixed-schedule, and --sync /
--max-threads refused with exit 3.

What arrives at the server is read on the wire: `Recorder` is a loopback TCP relay in front of
the server that keeps every byte both ways (no fake: the server answers as usual).
"""

from __future__ import annotations

import gzip
import json
import select
import socket
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper
from tritonclient.grpc import service_pb2 as pb

from perfkit.http2 import DATA, FRAME, PREFACE
from tests.cli_run.test_cli import flat, no_traceback, perfkit
from tests.fixtures.server import ServerHandle, start_server

# One short level of a fixed request count: about behaviour, not numbers (no stability loop that
# a relay thread on a loaded 2-core machine could fail).
SHORT = ["--request-count", "60"]


class Recorder:
    """A TCP relay on a free loopback port to `target` ("host:port") keeping, per connection,
    the bytes the client sent (`sent`) and those the server answered (`answered`)."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.url = f"127.0.0.1:{self.lsock.getsockname()[1]}"
        self.sent: list[bytearray] = []
        self.answered: list[bytearray] = []
        self.order: list[tuple[int, int]] = []  # (connection, offset in its `sent`) per chunk
        self.lock = threading.Lock()
        self.stop_r, self.stop_w = socket.socketpair()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        peers: dict[socket.socket, tuple[socket.socket, int, bool]] = {}
        while True:
            ready, _, _ = select.select([self.lsock, self.stop_r, *peers], [], [])
            if self.stop_r in ready:
                break
            for s in ready:
                if s is self.lsock:
                    client, _ = self.lsock.accept()
                    server = socket.create_connection(self.target)
                    with self.lock:
                        idx = len(self.sent)
                        self.sent.append(bytearray())
                        self.answered.append(bytearray())
                    peers[client] = (server, idx, True)
                    peers[server] = (client, idx, False)
                    continue
                if s not in peers:
                    continue
                other, idx, from_client = peers[s]
                try:
                    data = s.recv(1 << 16)
                except OSError:
                    data = b""
                if not data:
                    for x in (s, other):
                        peers.pop(x, None)
                        x.close()
                    continue
                with self.lock:
                    if from_client:
                        self.order.append((idx, len(self.sent[idx])))
                        self.sent[idx] += data
                    else:
                        self.answered[idx] += data
                other.sendall(data)
        for s in peers:
            s.close()

    def close(self) -> None:
        self.stop_w.send(b"x")
        self.thread.join(10)
        for s in (self.lsock, self.stop_r, self.stop_w):
            s.close()


@pytest.fixture
def recorder(request: pytest.FixtureRequest, run_server: ServerHandle) -> Iterator[Any]:
    made: list[Recorder] = []

    def make(protocol: str) -> Recorder:
        r = Recorder(run_server.grpc_url if protocol == "grpc" else run_server.http_url)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


# -- reading what was recorded --------------------------------------------------------------------


def http_infer_requests(rec: Recorder, model: str) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """Every infer request on the wire, in send order: (headers, its JSON header)."""
    out: list[tuple[int, dict[str, str], dict[str, Any]]] = []
    for idx, raw in enumerate(rec.sent):
        pos = 0
        data = bytes(raw)
        while (start := data.find(b"POST /v2/models/", pos)) >= 0:
            end = data.index(b"\r\n\r\n", start)
            lines = data[start:end].decode().split("\r\n")
            headers = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
            body = data[end + 4 : end + 4 + int(headers["content-length"])]
            pos = end + 4 + len(body)
            if f"/v2/models/{model}/" not in lines[0] or not lines[0].split()[1].endswith("/infer"):
                continue
            json_len = int(headers.get("inference-header-content-length", len(body)))
            headers["path"] = lines[0].split()[1]
            sent_at = next((n for n, (c, off) in enumerate(rec.order) if c == idx and off > start), len(rec.order))  # fmt: skip
            out.append((sent_at, headers, json.loads(body[:json_len])))
    out.sort(key=lambda x: x[0])
    return [(h, j) for _, h, j in out]


def grpc_messages(rec: Recorder) -> list[tuple[int, bytes]]:
    """Every gRPC message the client sent on the recorded HTTP/2 connections: (compressed flag,
    message bytes as sent)."""
    out = []
    for raw in rec.sent:
        data = bytes(raw)
        if not data.startswith(PREFACE):
            continue
        pos, streams = len(PREFACE), {}
        while pos + 9 <= len(data):
            hi, lo, ftype, _flags, sid = FRAME.unpack_from(data, pos)
            length = (hi << 8) | lo
            if ftype == DATA:
                streams.setdefault(sid, bytearray()).extend(data[pos + 9 : pos + 9 + length])
            pos += 9 + length
        for buf in streams.values():
            while len(buf) >= 5:
                flag, n = struct.unpack_from(">BI", buf)
                out.append((flag, bytes(buf[5 : 5 + n])))
                del buf[: 5 + n]
    return out


def model_infer_requests(rec: Recorder, model: str) -> list[tuple[int, Any]]:
    """(compressed flag, ModelInferRequest) of each ModelInfer call to `model`."""
    out = []
    for flag, msg in grpc_messages(rec):
        body = gzip.decompress(msg) if flag else msg
        req = pb.ModelInferRequest()
        try:
            req.ParseFromString(body)
        except Exception:  # another method's message
            continue
        if req.model_name == model and len(req.inputs):
            out.append((flag, req))
    return out


# -- --request-parameter ---------------------------------------------------------------------------

PARAMS = ["--request-parameter", "max_tokens:256:int", "--request-parameter", "stream:true:bool",
          "--request-parameter", "tag:a:b:string"]  # fmt: skip


def test_request_parameters_arrive_over_http(recorder: Any) -> None:
    rec = recorder("http")
    p = perfkit("-m", "fast", "-u", rec.url, *SHORT, *PARAMS)
    assert p.returncode == 0, p.stderr
    reqs = http_infer_requests(rec, "fast")
    assert reqs
    for _, body in reqs:
        assert body["parameters"] == {"max_tokens": 256, "stream": True, "tag": "a:b"}


def test_request_parameters_arrive_over_grpc(recorder: Any) -> None:
    rec = recorder("grpc")
    p = perfkit("-m", "fast", "-i", "grpc", "-u", rec.url, *SHORT, *PARAMS)
    assert p.returncode == 0, p.stderr
    reqs = model_infer_requests(rec, "fast")
    assert reqs
    for _, req in reqs:
        params = req.parameters
        assert params["max_tokens"].int64_param == 256
        assert params["stream"].bool_param is True
        assert params["tag"].string_param == "a:b"


@pytest.mark.parametrize(
    ("value", "says"),
    [("max_tokens:x:int", "not an int"), ("a:1:float", "type 'float'"), ("nocolon", "NAME:VALUE:TYPE"),
     ("priority:1:int", "reserves"), ("k:maybe:bool", "not a bool")],
)  # fmt: skip
def test_bad_request_parameters_exit_3(run_server: ServerHandle, value: str, says: str) -> None:
    p = perfkit("-m", "fast", "-u", run_server.http_url, "--request-parameter", value)
    assert p.returncode == 3, p.stderr
    assert says in flat(p.stderr)
    no_traceback(p)


# -- tensor formats ------------------------------------------------------------------------------


def test_json_tensor_formats_measure_end_to_end_over_http(recorder: Any, tmp_path: Path) -> None:
    rec = recorder("http")
    out = tmp_path / "pa.csv"
    p = perfkit("-m", "fast", "-u", rec.url, *SHORT, "--input-tensor-format", "json",
                "--output-tensor-format", "json", "-f", str(out))  # fmt: skip
    assert p.returncode == 0, p.stderr
    row = out.read_text().splitlines()[1].split(",")
    assert float(row[1]) > 0  # Inferences/Second
    reqs = http_infer_requests(rec, "fast")
    assert reqs
    for headers, body in reqs:
        assert headers["content-type"] == "application/json"
        assert "inference-header-content-length" not in headers
        (tensor,) = body["inputs"]
        assert len(tensor["data"]) == 16
        assert "parameters" not in tensor
        assert body["outputs"] == [{"name": "OUTPUT0", "parameters": {"binary_data": False}}]
    answers = b"".join(rec.answered)
    assert b'"data":[' in answers.replace(b" ", b"")  # JSON output tensors came back
    assert b"binary_data_size" not in answers


@pytest.mark.parametrize("flag", ["--input-tensor-format", "--output-tensor-format"])
def test_json_tensor_format_over_grpc_is_refused(run_server: ServerHandle, flag: str) -> None:
    p = perfkit("-m", "fast", "-i", "grpc", "-u", run_server.grpc_url, flag, "json")
    assert p.returncode == 3
    assert f"{flag} json is only valid with HTTP" in flat(p.stderr)


# -- --grpc-compression-algorithm --------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_grpc_compression_compresses_every_request(recorder: Any, algorithm: str) -> None:
    rec = recorder("grpc")
    p = perfkit("-m", "fast", "-i", "grpc", "-u", rec.url, *SHORT,
                "--grpc-compression-algorithm", algorithm, "--request-parameter", "k:v:string")  # fmt: skip
    assert p.returncode == 0, p.stderr
    infers = plain = 0
    for flag, msg in grpc_messages(rec):
        if flag:
            body = gzip.decompress(msg) if algorithm == "gzip" else zlib.decompress(msg)
        else:
            body = msg
        req = pb.ModelInferRequest()
        try:
            req.ParseFromString(body)
        except Exception:  # another method's message
            continue
        if req.model_name == "fast" and req.inputs:
            assert req.parameters["k"].string_param == "v"
            infers += bool(flag)
            plain += not flag
    assert infers > 0
    assert plain == 0  # every ModelInfer message was sent compressed


def test_grpc_compression_over_http_is_refused(run_server: ServerHandle) -> None:
    p = perfkit("-m", "fast", "-u", run_server.http_url, "--grpc-compression-algorithm", "gzip")
    assert p.returncode == 3
    assert "only supported with gRPC" in flat(p.stderr)


# -- --fixed-schedule ----------------------------------------------------------------------------

SCHEDULE_MS = [0, 60, 120, 300, 340, 600]


def test_fixed_schedule_replays_the_timestamps_in_order(recorder: Any, tmp_path: Path) -> None:
    rec = recorder("http")
    data = [{"INPUT0": [float(k)] * 16, "timestamp": t} for k, t in enumerate(SCHEDULE_MS)]
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"data": data}))
    export = tmp_path / "export.json"
    p = perfkit("-m", "fast", "-u", rec.url, "--input-data", str(trace), "--fixed-schedule",
                "--input-tensor-format", "json", "--profile-export-file", str(export))  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "Request Rate" in p.stdout or "request rate" in p.stdout.lower()
    # One request per timestamp, each carrying its own entry, in the trace's order.
    sent = [body["inputs"][0]["data"][0] for _, body in http_infer_requests(rec, "fast")]
    assert sent == [float(k) for k in range(len(SCHEDULE_MS))]
    (experiment,) = json.loads(export.read_text())["experiments"]
    stamps = sorted(r["timestamp"] for r in experiment["requests"])
    assert len(stamps) == len(SCHEDULE_MS)
    # Sends are due at absolute times from the schedule's start, which the client does not
    # record: take the start as the one that makes the earliest send on time (the first send
    # itself may be a little late, so it cannot be the origin). The sends' lateness then spreads
    # over at most 40 ms (a generous tolerance on a shared machine): each keeps its offset.
    lateness_ms = [t / 1e6 - want for t, want in zip(stamps, SCHEDULE_MS, strict=True)]
    late = [x - min(lateness_ms) for x in lateness_ms]
    assert all(0 <= x <= 40 for x in late), (late, stamps, SCHEDULE_MS)


def test_fixed_schedule_refusals(run_server: ServerHandle, tmp_path: Path) -> None:
    p = perfkit("-m", "fast", "-u", run_server.http_url, "--fixed-schedule")
    assert p.returncode == 3
    assert "--fixed-schedule needs --input-data FILE.json" in flat(p.stderr)
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps({"data": [{"INPUT0": [0.0] * 16, "timestamp": 5},
                                          {"INPUT0": [0.0] * 16, "timestamp": 1}]}))  # fmt: skip
    p = perfkit(
        "-m", "fast", "-u", run_server.http_url, "--fixed-schedule", "--input-data", str(trace)
    )
    assert p.returncode == 3
    assert "data[1].timestamp 1 is before" in flat(p.stderr)
    p = perfkit("-m", "fast", "-u", run_server.http_url, "--fixed-schedule", "--input-data",
                str(trace), "--concurrency-range", "2")  # fmt: skip
    assert p.returncode == 3
    assert "--concurrency-range cannot be combined" in flat(p.stderr)


# -- --sync / --max-threads ----------------------------------------------------------------------


@pytest.mark.parametrize("flags", [["--sync"], ["--max-threads", "4"]])
def test_sync_and_max_threads_are_refused_with_the_reason(
    run_server: ServerHandle, flags: list[str]
) -> None:
    p = perfkit("-m", "fast", "-u", run_server.http_url, *flags)
    assert p.returncode == 3
    assert f"{flags[0]}: perfkit has no synchronous client threads" in flat(p.stderr)
    no_traceback(p)


# -- -x: a model whose versions 1 and 2 differ -------------------------------------------------------


def _versioned_model(repo: Path) -> None:
    """`twover`: version 1 adds 1, version 2 doubles (ONNX Runtime), both loaded."""
    for version, op in ((1, "Add"), (2, "Mul")):
        const = helper.make_tensor("C", TensorProto.FLOAT, [1], [1.0 if op == "Add" else 2.0])
        node = helper.make_node(op, ["INPUT0", "C"], ["OUTPUT0"])
        graph = helper.make_graph(
            [node], "g",
            [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, [None, 4])],
            [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, [None, 4])],
            initializer=[const],
        )  # fmt: skip
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 8
        (repo / "twover" / str(version)).mkdir(parents=True)
        onnx.save(m, str(repo / "twover" / str(version) / "model.onnx"))
    (repo / "twover" / "config.pbtxt").write_text(
        'name: "twover"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
        "version_policy: { all { } }\n"
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
    )


def _inference_counts(client: grpcclient.InferenceServerClient) -> dict[str, int]:
    stats = client.get_inference_statistics("twover", as_json=True)["model_stats"]
    return {s["version"]: int(s.get("inference_count", 0)) for s in stats}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_model_version_end_to_end(tmp_path: Path, protocol: str) -> None:
    repo = tmp_path / "repo"
    _versioned_model(repo)
    with start_server(repo, log_path=tmp_path / "server.log") as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            x = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
            x.set_data_from_numpy(np.full((1, 4), 3.0, np.float32))
            got = {v: client.infer("twover", [x], model_version=v).as_numpy("OUTPUT0")[0, 0]
                   for v in ("1", "2")}  # fmt: skip
            assert got == {"1": 4.0, "2": 6.0}  # the versions differ
            before = _inference_counts(client)
            url = server.grpc_url if protocol == "grpc" else server.http_url
            out = tmp_path / "run"
            p = perfkit("-m", "twover", "-x", "1", "-i", protocol, "-u", url,
                        "--request-count", "40", "--output-dir", str(out))  # fmt: skip
            assert p.returncode == 0, p.stderr
            after = _inference_counts(client)
            assert after["1"] - before["1"] >= 40  # every request went to version 1
            assert after["2"] == before["2"]
            # The server-side statistics perfkit reports are version 1's.
            doc = json.loads((out / "results.json").read_text())
            text = json.dumps(doc)
            assert '"model_version": "1"' in text
            p = perfkit("-m", "twover", "-x", "3", "-i", protocol, "-u", url, *SHORT)
            assert p.returncode == 3
            assert "version 3" in flat(p.stderr)
            no_traceback(p)
        finally:
            client.close()


def test_grpc_compression_on_the_grpcio_path(recorder: Any) -> None:
    """The grpcio fallback client (`TargetSpec.grpc_client`) compresses through grpc's own
    channel compression, and perfkit_server reads it. (grpc sends a message plain when gzip
    would not make it smaller, so the inputs are zeros, not random floats.)"""
    from perfkit.load import measure_level
    from perfkit.load.spec import InputSpec, MeasureSpec, TargetSpec

    rec = recorder("grpc")
    target = TargetSpec(url=rec.url, protocol="grpc", model="fast", grpc_client="grpcio",
                        grpc_compression="gzip", request_parameters=(("k", 7),))  # fmt: skip
    inputs = InputSpec(source="zero")
    m = measure_level(target, inputs, MeasureSpec(fixed_request_count=20), "concurrency", 1)
    assert m.request_count == 20
    compressed = [req for flag, req in model_infer_requests(rec, "fast") if flag]
    assert len(compressed) >= 20
    assert all(req.parameters["k"].int64_param == 7 for req in compressed)
