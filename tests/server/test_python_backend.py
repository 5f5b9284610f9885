"""The python backend: model.py with TritonPythonModel, one stub process per instance.

One server (explicit model control, everything loaded) serves the module's models over real
tritonclient calls; the decoupled case drives PythonBackend directly and collects its `send`s.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from perfkit_server.backends.base import InstanceSpec
from perfkit_server.backends.python import ipc
from perfkit_server.backends.python.backend import PythonBackend
from tritonclient.utils import InferenceServerException

from perfkit.model_repo.config import parse_config
from tests.fixtures.server import ServerHandle, start_server

# Pre-processing: OUTPUT0 = (INPUT0 - 1) * 2; also which process ran it (PID) and how many
# requests its execute call got (COUNT). A negative input fails that request only; 666 kills the
# stub; with parameter barrier_dir, each execute waits until two processes have entered it.
PRE_PY = """
import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.config = json.loads(args["model_config"])
        self.args = args
        params = self.config.get("parameters", {})
        self.barrier = params.get("barrier_dir", {}).get("string_value", "")
        out = pb_utils.get_output_config_by_name(self.config, "OUTPUT0")
        self.dtype = pb_utils.triton_string_to_numpy(out["data_type"])

    def _wait_for_peer(self):
        open(os.path.join(self.barrier, str(os.getpid())), "w").close()
        deadline = time.monotonic() + 20
        while len(os.listdir(self.barrier)) < 2:
            if time.monotonic() > deadline:
                raise pb_utils.TritonModelException("no other instance ran at the same time")
            time.sleep(0.01)

    def execute(self, requests):
        if self.barrier:
            self._wait_for_peer()
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            if (x == 666).any():
                os._exit(3)
            if (x < 0).any():
                err = pb_utils.TritonError("INPUT0 must not be negative")
                responses.append(pb_utils.InferenceResponse(error=err))
                continue
            rows = x.shape[0]
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("OUTPUT0", ((x - 1) * 2).astype(self.dtype)),
                pb_utils.Tensor("PID", np.full((rows, 1), os.getpid(), dtype=np.int64)),
                pb_utils.Tensor("COUNT", np.full((rows, 1), len(requests), dtype=np.int32)),
                pb_utils.Tensor("NAME", np.array([[self.args["model_instance_name"].encode()]] * rows, dtype=np.object_)),
            ]))
        return responses
"""

# BLS: calls TARGET (parameter) with INPUT0, returns its OUTPUT0 + 1; a BLS error is returned as
# this request's error, its message prefixed.
BLS_PY = """
import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.target = config["parameters"]["target"]["string_value"]

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            inner = pb_utils.InferenceRequest(
                model_name=self.target,
                inputs=[pb_utils.Tensor("INPUT0", x.as_numpy())],
                requested_output_names=["OUTPUT0"],
            ).exec()
            if inner.has_error():
                err = pb_utils.TritonError("BLS failed: " + inner.error().message())
                responses.append(pb_utils.InferenceResponse(error=err))
                continue
            y = pb_utils.get_output_tensor_by_name(inner, "OUTPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("OUTPUT0", y + 1)]))
        return responses
"""

# Decoupled: for INPUT0 = [n], sends n responses OUT = [0], [1], ... then FINAL without one, from
# a thread after execute returned (as decoupled models do); n < 0 makes execute raise.
DECOUPLED_PY = """
import threading

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            n = int(pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()[0])
            if n < 0:
                raise ValueError("negative count")
            sender = request.get_response_sender()
            threading.Thread(target=self._stream, args=(sender, n)).start()
        return None

    def _stream(self, sender, n):
        for i in range(n):
            out = pb_utils.Tensor("OUT", np.array([i], dtype=np.int32))
            sender.send(pb_utils.InferenceResponse(output_tensors=[out]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
"""

_PRE_OUTPUTS = """output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "PID" data_type: TYPE_INT64 dims: [ 1 ] },
  { name: "COUNT" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "NAME" data_type: TYPE_STRING dims: [ 1 ] }
]"""


def _config(name: str, *lines: str, outputs: str = _PRE_OUTPUTS) -> str:
    return "\n".join(
        [
            f'name: "{name}"',
            'backend: "python"',
            "max_batch_size: 8",
            'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]',
            outputs,
            *lines,
        ]
    )


def _write(repo: Path, name: str, source: str, config: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.py").write_text(textwrap.dedent(source))
    (repo / name / "config.pbtxt").write_text(config + "\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    repo = tmp_path_factory.mktemp("python-repo")
    barrier = tmp_path_factory.mktemp("barrier")
    barrier_2 = tmp_path_factory.mktemp("barrier")
    # Requests wait up to 10 s for a batch of 4 (the preferred size): four concurrent requests
    # form one batch without the test depending on timing.
    _write(repo, "pre", PRE_PY, _config(
        "pre",
        "instance_group [ { count: 1 kind: KIND_CPU } ]",
        "dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 10000000 }",
    ))  # fmt: skip
    _write(repo, "par", PRE_PY, _config(
        "par",
        "instance_group [ { count: 2 kind: KIND_CPU } ]",
        f'parameters {{ key: "barrier_dir" value {{ string_value: "{barrier}" }} }}',
    ))  # fmt: skip
    _write(repo, "crash", PRE_PY, _config("crash"))
    _write(repo, "unload_me", PRE_PY, _config(
        "unload_me",
        "instance_group [ { count: 2 kind: KIND_CPU } ]",
        f'parameters {{ key: "barrier_dir" value {{ string_value: "{barrier_2}" }} }}',
    ))  # fmt: skip
    for name, target in (("bls", "pre_plain"), ("bls_missing", "no_such_model")):
        _write(repo, name, BLS_PY, _config(
            name,
            f'parameters {{ key: "target" value {{ string_value: "{target}" }} }}',
            outputs='output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]',
        ))  # fmt: skip
    _write(repo, "pre_plain", PRE_PY, _config("pre_plain"))
    handle = start_server(repo, "--model-control-mode=explicit", "--load-model=*")
    try:
        yield handle
    finally:
        handle.stop()


def _row(value: float) -> np.ndarray[Any, Any]:
    return np.full((1, 4), value, dtype=np.float32)


def _infer(server: ServerHandle, model: str, data: np.ndarray[Any, Any], **kw: Any) -> Any:
    client = httpclient.InferenceServerClient(server.http_url)
    inp = httpclient.InferInput("INPUT0", list(data.shape), "FP32")
    inp.set_data_from_numpy(data)
    return client.infer(model, [inp], **kw)


async def _concurrent(server: ServerHandle, model: str, rows: list[float]) -> list[Any]:
    """One batch-1 request per value, all at once over gRPC; results or exceptions, in order."""
    client = grpcaio.InferenceServerClient(server.grpc_url)
    try:

        async def one(value: float) -> Any:
            inp = grpcaio.InferInput("INPUT0", [1, 4], "FP32")
            inp.set_data_from_numpy(_row(value))
            return await client.infer(model, [inp])

        async with asyncio.timeout(60):
            return await asyncio.gather(*(one(v) for v in rows), return_exceptions=True)
    finally:
        await client.close()


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, exited but not reaped, counts as gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


def _gone(pids: set[int], timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_python_model_serves_its_outputs(server):
    result = _infer(server, "pre_plain", np.arange(8, dtype=np.float32).reshape(2, 4))
    np.testing.assert_array_equal(
        result.as_numpy("OUTPUT0"), (np.arange(8, dtype=np.float32).reshape(2, 4) - 1) * 2
    )
    # Triton's instance name: the default group is named after the model.
    assert result.as_numpy("NAME").tolist() == [[b"pre_plain_0"]] * 2
    assert _alive(int(result.as_numpy("PID")[0, 0]))
    assert int(result.as_numpy("PID")[0, 0]) != server.process.pid
    metadata = httpclient.InferenceServerClient(server.http_url).get_model_metadata("pre_plain")
    assert metadata["platform"] == "python"


async def test_dynamic_batching_hands_execute_each_request_with_its_own_result(server):
    results = await _concurrent(server, "pre", [1.0, 2.0, 3.0, 4.0])
    for value, result in zip([1.0, 2.0, 3.0, 4.0], results, strict=True):
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), (_row(value) - 1) * 2)
        assert result.as_numpy("COUNT").tolist() == [[4]]  # one execute got all four


async def test_an_error_response_fails_only_its_request(server):
    results = await _concurrent(server, "pre", [1.0, -1.0, 3.0, 4.0])
    failed = results[1]
    assert isinstance(failed, InferenceServerException)
    assert failed.message() == "INPUT0 must not be negative"
    assert "INTERNAL" in str(failed.status())  # TritonError's default code, as Triton maps it
    for i in (0, 2, 3):
        assert results[i].as_numpy("COUNT").tolist() == [[4]]


async def test_two_instances_execute_at_once_in_two_processes(server):
    # Each execute waits until both processes have entered one: only parallel instances pass.
    results = await _concurrent(server, "par", [1.0, 2.0])
    assert not [r for r in results if isinstance(r, Exception)], results
    pids = {int(r.as_numpy("PID")[0, 0]) for r in results}
    names = {r.as_numpy("NAME")[0, 0] for r in results}
    assert len(pids) == 2
    assert names == {b"par_0_0", b"par_0_1"}


def test_bls_runs_another_model_through_the_server(server):
    result = _infer(server, "bls", _row(5.0))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), (_row(5.0) - 1) * 2 + 1)
    stats = httpclient.InferenceServerClient(server.http_url).get_inference_statistics("pre_plain")
    assert stats["model_stats"][0]["inference_count"] >= 1


def test_a_bls_error_reaches_the_model_as_a_response_error(server):
    with pytest.raises(InferenceServerException) as exc:
        _infer(server, "bls_missing", _row(5.0))
    assert exc.value.message().startswith("BLS failed: ")
    assert "no_such_model" in exc.value.message()


def test_a_stub_that_dies_fails_its_requests_clearly_and_the_server_stays_up(server):
    pid = int(_infer(server, "crash", _row(1.0)).as_numpy("PID")[0, 0])
    with pytest.raises(InferenceServerException) as exc:
        _infer(server, "crash", _row(666.0))
    assert "Stub process 'crash_0' is not healthy." in exc.value.message()
    assert "exit code 3" in exc.value.message()
    assert _gone({pid})
    with pytest.raises(InferenceServerException) as again:  # and every later request
        _infer(server, "crash", _row(1.0))
    assert "not healthy" in again.value.message()
    client = httpclient.InferenceServerClient(server.http_url)
    assert client.is_server_live()
    np.testing.assert_array_equal(
        _infer(server, "pre_plain", _row(2.0)).as_numpy("OUTPUT0"), (_row(2.0) - 1) * 2
    )
    assert "Stub process 'crash_0' is not healthy." in server.log()


async def test_unloading_a_model_ends_its_stub_processes(server):
    results = await _concurrent(server, "unload_me", [1.0, 2.0])  # both instances, at once
    pids = {int(r.as_numpy("PID")[0, 0]) for r in results}
    assert len(pids) == 2
    client = httpclient.InferenceServerClient(server.http_url)
    client.unload_model("unload_me")
    assert _gone(pids)


def test_stubs_end_with_the_server_even_when_it_is_killed(tmp_path):
    _write(tmp_path, "pre_plain", PRE_PY, _config(
        "pre_plain", "instance_group [ { count: 2 kind: KIND_CPU } ]"
    ))  # fmt: skip
    handle = start_server(tmp_path)
    try:
        tasks = Path(f"/proc/{handle.process.pid}/task")  # stubs start from worker threads
        pids = {int(p) for t in tasks.iterdir() for p in (t / "children").read_text().split()}
        assert len(pids) == 2
        assert all(_alive(p) for p in pids)
    finally:
        handle.process.send_signal(signal.SIGKILL)
        handle.process.wait(10)
    assert _gone(pids)


def test_a_decoupled_model_sends_its_responses_through_send(tmp_path):
    source = textwrap.dedent(DECOUPLED_PY)
    (tmp_path / "dec" / "1").mkdir(parents=True)
    (tmp_path / "dec" / "1" / "model.py").write_text(source)
    config = parse_config(
        'name: "dec" backend: "python" max_batch_size: 0 '
        'input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] } ] '
        'output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ] '
        'instance_group [ { name: "dec_0" count: 1 kind: KIND_CPU } ] '
        "model_transaction_policy { decoupled: true }"
    )
    spec = InstanceSpec("dec", 1, tmp_path / "dec" / "1", config, 0, 1, "KIND_CPU", 0)
    backend = PythonBackend(spec)
    sent: list[tuple[int, list[int] | None, Exception | None, bool]] = []
    finals = threading.Semaphore(0)

    def send(index: int, outputs: Any, error: Exception | None, final: bool) -> None:
        sent.append((index, None if outputs is None else outputs["OUT"].tolist(), error, final))
        if final:
            finals.release()

    try:
        requests = [{"INPUT0": np.array([3], dtype=np.int32)}, {"INPUT0": np.array([1], np.int32)}]
        backend.execute_decoupled(requests, send)
        assert finals.acquire(timeout=30)
        assert finals.acquire(timeout=30)
        assert [s for s in sent if s[0] == 0] == [
            (0, [0], None, False), (0, [1], None, False), (0, [2], None, False),
            (0, None, None, True),
        ]  # fmt: skip
        assert [s for s in sent if s[0] == 1] == [(1, [0], None, False), (1, None, None, True)]
        sent.clear()
        backend.execute_decoupled([{"INPUT0": np.array([-1], dtype=np.int32)}], send)
        assert finals.acquire(timeout=30)
        [(index, outputs, error, final)] = sent  # execute raised: one error ends the request
        assert (index, outputs, final) == (0, None, True)
        assert "message: ValueError: negative count" in str(error)
        unary = backend.execute([{"INPUT0": np.array([1], dtype=np.int32)}])
        assert "decoupled" in str(unary[0])  # a unary request is refused, as Triton refuses it
    finally:
        backend.close()
    assert _gone({backend.pid})


def test_a_model_that_fails_to_initialize_fails_its_load(tmp_path):
    (tmp_path / "bad" / "1").mkdir(parents=True)
    (tmp_path / "bad" / "1" / "model.py").write_text(
        "class TritonPythonModel:\n"
        "    def initialize(self, args):\n"
        "        raise ValueError('no weights here')\n"
    )
    config = parse_config(_config("bad", 'instance_group [ { name: "bad_0" count: 1 } ]'))
    spec = InstanceSpec("bad", 1, tmp_path / "bad" / "1", config, 0, 1, "KIND_CPU", 0)
    with pytest.raises(RuntimeError, match="ValueError: no weights here"):
        PythonBackend(spec)
    (tmp_path / "bad" / "1" / "model.py").unlink()
    with pytest.raises(ValueError, match=r"no python model file model\.py in "):
        PythonBackend(spec)


def test_the_stub_exits_when_the_server_closes_its_end(tmp_path):
    _write(tmp_path, "m", PRE_PY, _config("m", 'instance_group [ { name: "m_0" count: 1 } ]'))
    config = parse_config((tmp_path / "m" / "config.pbtxt").read_text())
    spec = InstanceSpec("m", 1, tmp_path / "m" / "1", config, 0, 1, "KIND_CPU", 0)
    backend = PythonBackend(spec)
    try:
        [result] = backend.execute([{"INPUT0": _row(3.0)}])
        assert isinstance(result, dict)
        assert int(result["PID"][0, 0]) == backend.pid
    finally:
        backend._chan.close()  # as the kernel does for a server that died
    assert _gone({backend.pid})
    backend.close()
    assert os.getpid() != backend.pid


def test_an_output_of_another_datatype_than_its_config_fails_its_request(tmp_path):
    (tmp_path / "f64" / "1").mkdir(parents=True)
    (tmp_path / "f64" / "1" / "model.py").write_text(
        "import triton_python_backend_utils as pb\n"
        "class TritonPythonModel:\n"
        "    def execute(self, requests):\n"
        "        return [pb.InferenceResponse([pb.Tensor('OUTPUT0', "
        "pb.get_input_tensor_by_name(r, 'INPUT0').as_numpy().astype('float64'))]) "
        "for r in requests]\n"
    )
    config = parse_config(
        _config("f64", 'instance_group [ { name: "f64_0" count: 1 } ]',
                outputs='output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]')
    )  # fmt: skip
    backend = PythonBackend(
        InstanceSpec("f64", 1, tmp_path / "f64" / "1", config, 0, 1, "KIND_CPU", 0)
    )
    try:
        [result] = backend.execute([{"INPUT0": _row(1.0)}])
    finally:
        backend.close()
    assert isinstance(result, Exception)
    assert "output 'OUTPUT0' is FP64 but its config data_type is TYPE_FP32" in str(result)


def test_the_channel_refuses_frames_over_its_caps_before_allocating():
    a, b = socket.socketpair()
    sender, receiver = ipc.Channel(a), ipc.Channel(b)
    try:
        tensors = [("X", np.arange(6, dtype=np.int16).reshape(2, 3)),
                   ("S", np.array([b"ab", b""], dtype=np.object_))]  # fmt: skip
        buffers: list[Any] = []
        sender.send({"t": ipc.encode_tensors(tensors, buffers)}, buffers)
        header, got = receiver.recv()
        decoded = dict(ipc.decode_tensors(header["t"], got))
        np.testing.assert_array_equal(decoded["X"], tensors[0][1])
        assert decoded["S"].tolist() == [b"ab", b""]
        # A peer announcing a frame over the cap is refused from its 12-byte prefix alone.
        a.sendall(struct.pack("<4sII", b"PKPY", 2, 1) + struct.pack("<Q", ipc.MAX_FRAME_BYTES + 1))
        with pytest.raises(ipc.ProtocolError, match="over the"):
            receiver.recv()
    finally:
        sender.close()
        receiver.close()


def test_a_parameter_this_server_cannot_honor_is_refused_at_load():
    from perfkit_server.backends import check_parameters

    config = parse_config(
        _config("envy", 'parameters { key: "EXECUTION_ENV_PATH" value { string_value: "e.tgz" } }')
    )
    with pytest.raises(ValueError, match=r"parameters\['EXECUTION_ENV_PATH'\]: not supported"):
        check_parameters(config, "python", "model 'envy'")


def test_async_execute_and_finalize_run_in_the_stub(tmp_path):
    (tmp_path / "am" / "1").mkdir(parents=True)
    (tmp_path / "am" / "1" / "model.py").write_text(
        textwrap.dedent(
            """
            import asyncio
            import os

            import triton_python_backend_utils as pb_utils


            class TritonPythonModel:
                def initialize(self, args):
                    self.done = os.path.join(args["model_repository"], "finalized")

                async def execute(self, requests):
                    await asyncio.sleep(0)
                    return [pb_utils.InferenceResponse([pb_utils.Tensor(
                        "OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() + 1
                    )]) for r in requests]

                def finalize(self):
                    open(self.done, "w").close()
            """
        )
    )
    config = parse_config(
        _config("am", 'instance_group [ { name: "am_0" count: 1 } ]',
                outputs='output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]')
    )  # fmt: skip
    backend = PythonBackend(
        InstanceSpec("am", 1, tmp_path / "am" / "1", config, 0, 1, "KIND_CPU", 0)
    )
    try:
        [result] = backend.execute([{"INPUT0": _row(1.0)}])
        assert not isinstance(result, Exception)
        np.testing.assert_array_equal(result["OUTPUT0"], _row(2.0))
    finally:
        backend.close()
    assert (tmp_path / "am" / "finalized").exists()  # close waited for finalize()
